"""What a pipeline hands back: one `GeneratedVideo` per sample (API), a `RunSummary` per run (CLI), and the
`Sample` record that carries one sample through the stages."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from cosmos_dist.errors import CosmosDistError


class OutputConflict(CosmosDistError, FileExistsError):
    """`GeneratedVideo.save` found another video under the same sample id (pass overwrite=True to replace it)."""


@dataclass
class Sample:
    """One sample on its way through the stages (pipeline/base.py)."""

    item: Any  # the PromptItem: sample_id, prompt, negative_prompt, seed, line_number, extra
    seed: int
    negative: str
    t_start: float = field(default_factory=time.perf_counter)
    timings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    prompt: Optional[str] = None  # what T5 encodes (after the prompt rules and the upsampler)
    records: dict = field(default_factory=dict)  # guardrail / upsampler / input / step-hook records for the sidecar
    cond: Optional[torch.Tensor] = None
    uncond: Optional[torch.Tensor] = None
    condition: Any = None  # Video2World: the encoded input (pipeline/video2world.py)
    latent: Optional[torch.Tensor] = None
    frames: Optional[np.ndarray] = None
    status: str = "pending"  # pending | done | failed | blocked | stopped
    reason: Optional[str] = None
    stage: Optional[str] = None  # where it was blocked: text | video

    @property
    def sample_id(self) -> str:
        return self.item.sample_id


@dataclass
class GeneratedVideo:
    """One sample's result as the Python API returns it.

    frames:   (F, H, W, 3) uint8, None unless status == "done";
    latent:   (1, 16, T, H/8, W/8) float32 on the CPU, None unless done;
    metadata: the sidecar's content (prompt, seed, settings, checkpoint, layout, timings...);
    status:   done | blocked (by the guardrails; `reason` says why) | failed (`reason` says why).
    `save(output_dir)` writes the mp4 and the sidecar with the CLI's atomic writers.
    """

    sample_id: str
    status: str
    metadata: dict
    frames: Optional[np.ndarray] = None
    latent: Optional[torch.Tensor] = None
    reason: Optional[str] = None

    def save(self, output_dir: str | Path, *, save_latent: bool = False, crf: int = 23,
             preset: str = "medium", overwrite: bool = False) -> Path:
        """Write `{sample_id}.mp4` (+ `.latent.pt`) and the sidecar last where output_dir's layout puts them
        (io/paths.py: flat unless the tree records another); returns the mp4's path.

        A sample already there with the same identity (the same video) is replaced whole. One with another
        identity under this id (another prompt, seed, input or setting; or a sidecar that cannot be read) is
        refused with `OutputConflict`, naming what differs, unless `overwrite=True`: a run that finds it later
        would otherwise take a video it did not ask for as done."""
        from cosmos_dist.io.paths import recorded_layout, sample_paths
        from cosmos_dist.pipeline.outputs import write_sample_files
        from cosmos_dist.pipeline.work import sidecar_differences

        if self.status != "done" or self.frames is None:
            raise ValueError(f"sample {self.sample_id} has no video to save (status {self.status}: {self.reason})")
        output_dir = Path(output_dir)
        if not overwrite:
            paths = sample_paths(output_dir, self.sample_id, recorded_layout(output_dir) or "flat")  # writes nothing
            diff = sidecar_differences(paths.sidecar, (self.metadata.get("identity") or {}).get("fingerprint"))
            if diff:
                raise OutputConflict(
                    f"save: sample {self.sample_id} already exists in {output_dir} ({paths.relative}) and was made "
                    f"with another {', '.join(diff)}; pass overwrite=True to replace it, or save into another folder")
        return write_sample_files(output_dir, self.sample_id, self.frames, dict(self.metadata),
                                  fps=self.metadata["fps"], crf=crf, preset=preset,
                                  latent=self.latent if save_latent else None)


@dataclass
class RunSummary:
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # guardrail blocks: no video, not a failure
    reasons: Counter = field(default_factory=Counter)  # failures by reason
    stopped_by: Optional[str] = None  # the signal that ended the run early, if any

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def add(self, s: Sample) -> None:
        if s.status == "done":
            self.done.append(s.sample_id)
        elif s.status == "failed":
            self.failed.append(s.sample_id)
            self.reasons[(s.reason or "").split(":")[0][:80]] += 1
        elif s.status == "blocked":
            self.blocked.append(s.sample_id)
