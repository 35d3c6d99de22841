"""Text2World: prompt -> T5 -> guided EDM sampling of the DiT -> tokenizer decode -> mp4 + sidecar.

Stage order per run: resolve files and check the output folder (before any model loads), load the
models (offloaded ones into pinned CPU memory, see pipeline/residency.py), then the pending samples in
chunks (pipeline/chunks.py): guardrail text check, prompt rules, upsampler, T5 for the chunk; the DiT
for the chunk (on this rank's token shard, gathered once); decode, guardrail video check + face blur,
mp4 and latent under temporary names, the sidecar last (its existence marks the sample done), a
manifest line per sample (done / failed / blocked).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cosmos_dist.io.records import Manifest
from cosmos_dist.pipeline import stages
from cosmos_dist.pipeline.assets import resolve_assets
from cosmos_dist.pipeline.chunks import ChunkedRun
from cosmos_dist.pipeline.preemption import StopFlag, finish_shard
from cosmos_dist.pipeline.work import check_output_dir, collect_work, is_done

log = logging.getLogger("cosmos_dist")


@dataclass
class RunSummary:
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # guardrail blocks: no video, not a failure
    stopped_by: str | None = None  # the signal that ended the run early, if any

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


class Text2WorldPipeline(ChunkedRun):
    kind = "text2world"

    def __init__(self, cfg, layout):
        self.cfg = cfg
        self.layout = layout
        self.output_dir = Path(cfg.output_dir)
        self.device = stages.resolve_device(cfg.device, layout)
        self.dit_dtype = stages.resolve_dtype(cfg.precision.dit_dtype, self.device)
        self.tokenizer_dtype = stages.resolve_dtype(cfg.precision.tokenizer_dtype, self.device)
        self.text_dtype = stages.resolve_dtype(cfg.precision.text_encoder_dtype, self.device)
        # Which attention kernels run (fa3 / sdpa ...; FP8: cudnn / fa3 / triton / emulated); a missing package
        # fails here, not mid-run.
        self.attention_kernel = stages.attention_kernel(cfg.precision, self.device)
        self.fp8_attention_kernel = stages.fp8_attention_kernel(cfg.precision, self.device)
        self.fp8_linear_kernel = stages.fp8_linear_kernel(cfg.precision, self.device)
        stages.check_fp8_attention_parallel(self.fp8_attention_kernel,
                                            layout.cp_impl_for(stages.dit_preset(cfg).num_heads))

    # ---- setup -----------------------------------------------------------------------------
    def prepare(self):
        """Everything that can fail because of the user's input, before a model is loaded."""
        work = collect_work(self.cfg)
        if self.layout.is_replica_leader:
            check_output_dir(self.output_dir)
        if self.layout.is_global_leader:  # a second copy of a running shard refuses here (exit 4), before loading
            from cosmos_dist.pipeline.lease import claim_run

            self.lease = claim_run(self.cfg, [it.sample_id for it in work.items])
        # Tiny random stand-ins are created by the global leader alone; the others wait for them.
        creates = bool(self.cfg.model.random_weights)
        if creates and not self.layout.is_global_leader:
            self.layout.barrier()
        assets = resolve_assets(self.cfg, announce=self.layout.is_global_leader)
        if creates and self.layout.is_global_leader:
            self.layout.barrier()
        # A checkpoint of the wrong variant is refused from its index, before T5 (11B) loads.
        stages.check_dit_file(assets.dit, self.cfg)
        # guardrails / upsampler: a missing package or model folder is an error before any model loads
        from cosmos_dist.guardrails import check_available
        from cosmos_dist.pipeline.optional_models import check_upsampler

        check_available(self.cfg)
        check_upsampler(self.cfg)
        return work, assets

    def load_models(self, assets) -> None:
        from cosmos_dist.pipeline.optional_models import load_with_residency

        t0 = time.perf_counter()
        load_with_residency(self, assets)  # text encoder, DiT, tokenizer, guardrails, upsampler by offload level
        self.load_seconds = time.perf_counter() - t0
        log.info("models loaded in %.1f s (DiT %s, %s on %s)", self.load_seconds, self.cfg.model.preset, self.dit_dtype, self.device)

    # ---- the run ---------------------------------------------------------------------------
    def run(self) -> RunSummary:
        work, assets = self.prepare()
        summary = RunSummary()
        leader = self.layout.is_replica_leader
        manifest = Manifest(self.output_dir / "manifest.jsonl") if leader else None

        for bad in work.bad_lines:
            summary.failed.append(f"line {bad.line_number}")
            if self.layout.is_global_leader:
                manifest.append(status="failed", sample_id=None, line=bad.line_number, reason=bad.reason)

        pending = []
        for item in self.layout.my_items(work.items):
            if is_done(self.output_dir, item.sample_id):
                if leader:
                    manifest.append(status="skipped", sample_id=item.sample_id, line=item.line_number, reason="already done (sidecar exists)")
                summary.skipped.append(item.sample_id)
            else:
                pending.append(item)
        if not pending:
            log.info("nothing to do: %d done already, %d failed lines", len(summary.skipped), len(work.bad_lines))
            if self.layout.is_global_leader:
                finish_shard(self.cfg, work)
            return summary

        stop = StopFlag.install()  # before loading: a warning signal then still stops cleanly
        self.load_models(assets)
        bar = stages.progress_bar(len(pending), "samples", self.cfg.progress and self.layout.is_global_leader)
        # Chunks (pipeline/chunks.py): the stages run chunk-wide so an offloaded model moves once per chunk;
        # one sample per chunk when nothing is offloaded. Every rank agrees on stopping (no rank leaves
        # while its peers wait in a collective); one bad sample never stops the run.
        chunk = self.residency.chunk_size()
        for start in range(0, len(pending), chunk):
            if self.process_chunk(pending[start : start + chunk], manifest, summary, stop, bar):
                break
        bar.close()
        if self.layout.is_global_leader:
            finish_shard(self.cfg, work, summary.stopped_by)
        return summary

    def sampling_condition(self, item, seed: int, timings: dict, notes: list):
        """What conditions the sampler besides the text (see stages.sample_latent's `condition`); may add
        to `timings` and the sidecar `notes`. Text2World has none; Video2World returns its encoded input."""
        return None

    def encode(self, prompt: str, negative: str):
        """(cond, uncond) embeddings (1, 512, C) in the DiT dtype. An empty negative prompt means
        a zeroed text embedding for the unconditional branch, as the reference's Text2World."""
        both = None
        if self.layout.is_replica_leader:
            cond = self.text.encode_one(prompt)
            uncond = self.text.encode_one(negative) if negative else torch.zeros_like(cond)
            both = torch.cat([cond, uncond]).to(self.device, self.dit_dtype)
        both = self.layout.share_tensor(both)  # the replica's other ranks receive them
        return both[:1], both[1:]
