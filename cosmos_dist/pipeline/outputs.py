"""A finished sample's record and files: the sidecar's content, and the atomic writes (mp4 and latent under
hidden temporary names created exclusively, never through a planted symlink, and removed when a write fails
(cosmos_dist/io/safefiles.py); renamed; the sidecar last, since its existence marks the sample done)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

log = logging.getLogger("cosmos_dist")


def resolved_config(cfg) -> dict:
    """The whole run configuration as plain data, for the sidecar (reproduces the sample)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def sidecar_record(*, cfg, kind: str, sample, plan, runtime, checkpoint_info: dict, extra: dict) -> dict:
    """The sidecar of one sample (before its files are written: `files` and the write timings come later)."""
    from cosmos_dist.io.records import build_sidecar
    from cosmos_dist.pipeline.denoiser import sampler_settings
    from cosmos_dist.sampling import sample_seed

    item = sample.item
    sidecar = build_sidecar(
        sample_id=item.sample_id,
        prompt=sample.prompt,
        original_prompt=item.prompt if sample.prompt != item.prompt else None,
        negative_prompt=sample.negative,
        seed=sample.seed,
        sample_seed=sample_seed(sample.seed, item.noise_key),
        model={"preset": cfg.model.preset, "kind": kind, "random_weights": bool(cfg.model.random_weights)},
        checkpoint=checkpoint_info,
        sampler={**sampler_settings(cfg).to_dict(), "guidance": cfg.guidance},
        resolution={"num_frames": cfg.num_frames, "height": cfg.height, "width": cfg.width, "fps": cfg.fps},
        parallel=runtime.describe(),
        precision=plan.record(),
        notes=sample.notes,
        source_line=item.line_number,
        extra={"config": resolved_config(cfg), **extra},
    )
    if getattr(item, "identity", None) is not None:
        sidecar["identity"] = item.identity.record()  # what a rerun compares before skipping (io/identity.py)
    return sidecar


def write_sample_files(output_dir: Path, sample_id: str, frames: np.ndarray, sidecar: dict, *, fps: float,
                       crf: int, preset: str, latent: Optional[torch.Tensor] = None,
                       timings: Optional[dict] = None, t_start: Optional[float] = None,
                       layout: str = "flat") -> Path:
    """mp4 (+ latent) under temporary names, renamed; then the sidecar, which marks the sample done. Returns the
    mp4's path. `timings` (the sample's stage seconds) gains write_s and total_s and goes into the sidecar.
    `layout`: the folders of output_dir (io/paths.py); the tree's recorded layout wins when it has one."""
    from cosmos_dist.io.paths import record_layout, sample_paths
    from cosmos_dist.io.records import write_json_atomic
    from cosmos_dist.io.video import write_mp4_atomic

    t0 = time.perf_counter()
    paths = sample_paths(output_dir, sample_id, record_layout(output_dir, layout))
    paths.folder.mkdir(parents=True, exist_ok=True)
    mp4 = paths.video
    write_mp4_atomic(mp4, frames, fps=fps, crf=crf, preset=preset)
    files = {"video": mp4.name}
    if latent is not None:
        from cosmos_dist.io.safefiles import save_atomic

        lat = paths.latent
        save_atomic(lat, lambda f: torch.save(latent.cpu(), f))  # exclusive hidden temporary, removed on failure
        files["latent"] = lat.name
    if timings is not None:
        timings["write_s"] = time.perf_counter() - t0
        if t_start is not None:
            timings["total_s"] = time.perf_counter() - t_start
        sidecar["timings_s"] = {k: round(float(v), 4) for k, v in timings.items()}
    sidecar["files"] = files
    sidecar["video"] = files["video"]
    sidecar["path"] = paths.relative  # the video, relative to output_dir (for pack / merge tools)
    if isinstance(sidecar.get("identity"), dict):
        sidecar["identity"] = {**sidecar["identity"], "path": paths.relative}
    write_json_atomic(paths.sidecar, sidecar)
    return mp4
