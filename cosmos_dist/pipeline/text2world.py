"""Text2World: prompt -> T5 -> guided EDM sampling of the DiT -> tokenizer decode -> mp4 + sidecar.

Stage order per run: resolve files and check the output folder (before any model loads), load the
three models, then for each pending sample: check the prompt, encode it (cached), sample on this
rank's token shard, gather, decode, write the mp4 and latent under temporary names, write the
sidecar last (its existence marks the sample done), append a manifest line.
"""
from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cosmos_dist.errors import CosmosDistError
from cosmos_dist.io.records import Manifest
from cosmos_dist.pipeline import stages
from cosmos_dist.pipeline.assets import resolve_assets
from cosmos_dist.pipeline.preemption import StopFlag, finish_shard
from cosmos_dist.pipeline.work import check_output_dir, collect_work, is_done

log = logging.getLogger("cosmos_dist")


@dataclass
class RunSummary:
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    stopped_by: str | None = None  # the signal that ended the run early, if any

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


class Text2WorldPipeline:
    kind = "text2world"

    def __init__(self, cfg, layout):
        self.cfg = cfg
        self.layout = layout
        self.output_dir = Path(cfg.output_dir)
        self.device = stages.resolve_device(cfg.device, layout)
        self.dit_dtype = stages.resolve_dtype(cfg.precision.dit_dtype, self.device)
        self.tokenizer_dtype = stages.resolve_dtype(cfg.precision.tokenizer_dtype, self.device)
        self.text_dtype = stages.resolve_dtype(cfg.precision.text_encoder_dtype, self.device)

    # ---- setup -----------------------------------------------------------------------------
    def prepare(self):
        """Everything that can fail because of the user's input, before a model is loaded."""
        work = collect_work(self.cfg)
        if self.layout.is_replica_leader:
            check_output_dir(self.output_dir)
        assets = resolve_assets(self.cfg, announce=self.layout.is_global_leader)
        return work, assets

    def load_models(self, assets) -> None:
        t0 = time.perf_counter()
        self.text = stages.load_text_encoder(assets.text_encoder, self.device, self.text_dtype, self.layout)
        self.net, self.checkpoint_info = stages.load_dit(assets.dit, self.cfg, self.device, self.dit_dtype)
        self.tokenizer = stages.load_tokenizer(assets.tokenizer, self.device, self.tokenizer_dtype, self.layout)
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
        for item in pending:
            # Every rank must agree, or one would leave while its peers wait in a collective.
            if self.layout.agree_stop(stop.requested):
                summary.stopped_by = stop.signal_name or "stop requested on another rank"
                break
            try:
                self.generate_one(item, manifest)
                summary.done.append(item.sample_id)
            except Exception as exc:  # one bad sample must not stop a million-prompt run
                reason = str(exc) if isinstance(exc, CosmosDistError) else f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, CosmosDistError):
                    log.error("sample %s failed:\n%s", item.sample_id, traceback.format_exc())
                else:
                    log.error("sample %s failed: %s", item.sample_id, reason)
                if leader:
                    manifest.append(status="failed", sample_id=item.sample_id, line=item.line_number, reason=reason)
                summary.failed.append(item.sample_id)
                self.layout.after_failure(exc)
            bar.update(1)
        bar.close()
        if self.layout.is_global_leader:
            finish_shard(self.cfg, work, summary.stopped_by)
        return summary

    def generate_one(self, item, manifest) -> None:
        cfg, timings = self.cfg, {}
        t_start = time.perf_counter()
        t0 = t_start
        negative = item.negative_prompt if item.negative_prompt is not None else cfg.negative_prompt
        prompt, notes = self.layout.on_leader(lambda: self.text.check_prompt(item.prompt, allow_long=cfg.allow_long_prompts))
        cond, uncond = self.encode(prompt, negative)
        timings["text_encode_s"] = time.perf_counter() - t0

        seed = item.seed if item.seed is not None else cfg.seed
        condition = self.sampling_condition(item, seed, timings, notes)
        t0 = time.perf_counter()
        latent = stages.sample_latent(self, item.sample_id, seed, cond, uncond, condition)
        timings["sampling_s"] = time.perf_counter() - t0

        if not self.layout.is_replica_leader:
            return
        t0 = time.perf_counter()
        frames = self.tokenizer.decode_to_uint8(latent)
        timings["decode_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        stages.write_outputs(
            self, item, latent, frames, timings, t_start,
            prompt=prompt, negative=negative, seed=seed, notes=notes, manifest=manifest,
        )

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
