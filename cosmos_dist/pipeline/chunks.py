"""The stage order of a run: pending samples go through the stages in chunks.

For each chunk of `offload.chunk` samples (1 when nothing is offloaded, so samples then finish one by one):

1. text stage, on the replica leader (the results are shared with its replica):
   guardrail text check of every prompt (before anything else) -> prompt rules -> upsampler (when enabled)
   -> guardrail text check of the upsampled prompts -> T5 for every prompt that is left;
2. Video2World: read and encode every input with the tokenizer;
3. the DiT samples every prompt that is left (on every rank of the replica; the ranks agree on stopping first);
4. on the replica leader: decode every latent -> guardrail video check + face blur -> write mp4, sidecar, manifest.

Each stage enters `Residency.stage(...)` once per chunk, so an offloaded model moves to the GPU once per chunk,
not once per sample (all prompts of a chunk are encoded before the DiT comes in). One sample's failure never stops
the others: it is recorded as `failed` and the chunk goes on. A blocked sample writes no video and is recorded as
`blocked` with the reason; it is not a failure (exit code 0).
"""
from __future__ import annotations

import logging
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from cosmos_dist.checkpoint.finite import check_finite_latent
from cosmos_dist.errors import CosmosDistError
from cosmos_dist.pipeline.residency import uses

log = logging.getLogger("cosmos_dist")


@dataclass
class Sample:
    item: Any
    seed: int
    negative: str
    t_start: float
    timings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    prompt: Optional[str] = None
    records: dict = field(default_factory=dict)  # guardrail / upsampler records for the sidecar
    cond: Optional[torch.Tensor] = None
    uncond: Optional[torch.Tensor] = None
    condition: Any = None
    latent: Optional[torch.Tensor] = None
    frames: Any = None
    status: str = "pending"  # pending | blocked | failed | done
    reason: Optional[str] = None
    stage: Optional[str] = None  # where it was blocked: text | video


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, CosmosDistError) else f"{type(exc).__name__}: {exc}"


class ChunkedRun:
    """Mixed into Text2WorldPipeline: the per-chunk stages. Needs `cfg`, `layout`, `text`, `net`, `tokenizer`,
    `residency`, `guardrail` (provider or None), `upsampler` (or None), `encode`, `sampling_condition`."""

    # ---- bookkeeping ------------------------------------------------------------------------------
    def _fail(self, s: Sample, exc: BaseException | str, manifest, summary, *, raise_for_layout: bool = True) -> None:
        if raise_for_layout and isinstance(exc, BaseException) and getattr(self.layout, "ends_job", lambda e: False)(exc):
            self.layout.interrupt(exc, manifest, s.item)  # a lost rank / collective: recorded interrupted; raises
        reason = exc if isinstance(exc, str) else _reason(exc)
        if isinstance(exc, BaseException) and not isinstance(exc, CosmosDistError):
            log.error("sample %s failed:\n%s", s.item.sample_id, "".join(traceback.format_exception(exc)))
        else:
            log.error("sample %s failed: %s", s.item.sample_id, reason)
        s.status, s.reason = "failed", reason
        if self.layout.is_replica_leader and manifest is not None:
            manifest.append(status="failed", sample_id=s.item.sample_id, line=s.item.line_number, reason=reason)
        summary.failed.append(s.item.sample_id)
        if raise_for_layout and isinstance(exc, BaseException):
            self.layout.after_failure(exc)

    def _block(self, s: Sample, reason: str, stage: str, manifest, summary) -> None:
        log.warning("sample %s blocked: %s", s.item.sample_id, reason)
        s.status, s.reason, s.stage = "blocked", reason, stage
        if self.layout.is_replica_leader and manifest is not None:
            manifest.append(status="blocked", sample_id=s.item.sample_id, line=s.item.line_number, reason=reason,
                            stage=stage)
        if hasattr(summary, "blocked"):
            summary.blocked.append(s.item.sample_id)

    # ---- the chunk ----------------------------------------------------------------------------------
    def process_chunk(self, items, manifest, summary, stop, bar) -> bool:
        """Run one chunk through every stage; returns True when the run must stop (a stop request)."""
        if self.layout.agree_stop(stop.requested):
            summary.stopped_by = stop.signal_name or "stop requested on another rank"
            return True
        cfg = self.cfg
        samples = []
        for item in items:
            negative = item.negative_prompt if item.negative_prompt is not None else cfg.negative_prompt
            seed = item.seed if item.seed is not None else cfg.seed
            samples.append(Sample(item=item, seed=seed, negative=negative, t_start=time.perf_counter()))

        self._text_stage(samples, manifest, summary)
        self._condition_stage(samples, manifest, summary)
        stopped = self._sampling_stage(samples, manifest, summary, stop, per_sample_stop=len(items) > 1)
        self._output_stage(samples, manifest, summary)
        for s in samples:
            if s.status == "done":
                summary.done.append(s.item.sample_id)
            if s.status in ("done", "failed", "blocked"):
                bar.update(1)
        return stopped

    # ---- 1. text ------------------------------------------------------------------------------------
    def _text_stage(self, samples: list[Sample], manifest, summary) -> None:
        cfg = self.cfg
        res = getattr(self, "residency", None)

        def on_leader() -> list[dict]:
            out = [{"status": "pending", "prompt": s.item.prompt, "notes": [], "records": {}, "timings": {}} for s in samples]
            live = lambda: [i for i, o in enumerate(out) if o["status"] == "pending"]  # noqa: E731
            provider = getattr(self, "guardrail", None)

            def guard(what: str, indices) -> None:
                from cosmos_dist.guardrails import run_text_check

                with uses(res, "guardrails"):
                    for i in indices:
                        t0 = time.perf_counter()
                        try:
                            verdict = run_text_check(provider, out[i]["prompt"], what)
                        except Exception as exc:  # never a pass
                            out[i].update(status="failed", reason=_reason(exc))
                            continue
                        finally:
                            out[i]["timings"]["guardrail_text_s"] = out[i]["timings"].get("guardrail_text_s", 0.0) + time.perf_counter() - t0
                        if not verdict.ok:
                            out[i].update(status="blocked", reason=verdict.reason)
                        else:
                            out[i]["records"].setdefault("guardrail_text", []).append(f"{what}: passed")

            if provider is not None:
                guard("prompt", live())
            for i in live():
                try:
                    out[i]["prompt"], notes = self.text.check_prompt(out[i]["prompt"], allow_long=cfg.allow_long_prompts)
                    out[i]["notes"].extend(notes)
                except Exception as exc:
                    out[i].update(status="failed", reason=_reason(exc))
            upsampler = getattr(self, "upsampler", None)
            if upsampler is not None:
                changed = []
                with uses(res, "upsampler"):
                    for i in live():
                        t0 = time.perf_counter()
                        try:
                            r = upsampler.upsample(out[i]["prompt"], seed=samples[i].seed)
                        except Exception as exc:
                            out[i].update(status="failed", reason=f"prompt upsampler: {_reason(exc)}")
                            continue
                        out[i]["timings"]["upsample_s"] = time.perf_counter() - t0
                        out[i]["records"]["upsampler"] = {"model_dir": upsampler.model_dir, **r.record()}
                        if r.skipped_reason:
                            out[i]["notes"].append(f"prompt upsampler skipped: {r.skipped_reason}")
                        if r.upsampled:
                            try:  # the rules apply to what T5 sees; an upsampled prompt may be cut, never refused
                                out[i]["prompt"], notes = self.text.check_prompt(r.prompt, allow_long=True)
                                out[i]["notes"].extend(n.replace("prompt", "upsampled prompt", 1) for n in notes)
                            except Exception as exc:
                                out[i].update(status="failed", reason=f"upsampled prompt: {_reason(exc)}")
                                continue
                            changed.append(i)
                if provider is not None and changed:
                    guard("upsampled prompt", [i for i in changed if out[i]["status"] == "pending"])
            return out

        outcomes = self.layout.on_leader(on_leader)
        for s, o in zip(samples, outcomes):
            s.timings.update(o["timings"])
            s.notes.extend(o["notes"])
            s.records.update(o["records"])
            if o["status"] == "blocked":
                self._block(s, o["reason"], "text", manifest, summary)
            elif o["status"] == "failed":
                self._fail(s, o["reason"], manifest, summary)
            else:
                s.prompt = o["prompt"]
        todo = [s for s in samples if s.status == "pending"]
        if not todo:
            return
        with uses(res, "text_encoder"):
            for s in todo:
                t0 = time.perf_counter()
                try:
                    s.cond, s.uncond = self.encode(s.prompt, s.negative)
                except Exception as exc:
                    self._fail(s, exc, manifest, summary)
                    continue
                s.timings["text_encode_s"] = time.perf_counter() - t0

    # ---- 2. conditioning input (Video2World) --------------------------------------------------------
    def _condition_stage(self, samples: list[Sample], manifest, summary) -> None:
        todo = [s for s in samples if s.status == "pending"]
        if not todo:
            return
        needs_tokenizer = getattr(self, "kind", "") == "video2world"
        with uses(getattr(self, "residency", None), "tokenizer") if needs_tokenizer else nullcontext():
            for s in todo:
                try:
                    s.condition = self.sampling_condition(s.item, s.seed, s.timings, s.notes)
                except Exception as exc:
                    self._fail(s, exc, manifest, summary)

    # ---- 3. the DiT ---------------------------------------------------------------------------------
    def _sampling_stage(self, samples: list[Sample], manifest, summary, stop, per_sample_stop: bool) -> bool:
        from cosmos_dist.pipeline import stages

        todo = [s for s in samples if s.status == "pending"]
        if not todo:
            return False
        stopped = False
        with uses(getattr(self, "residency", None), "dit"):
            for s in todo:
                if per_sample_stop and self.layout.agree_stop(stop.requested):
                    summary.stopped_by = stop.signal_name or "stop requested on another rank"
                    stopped = True
                    break
                t0 = time.perf_counter()
                try:
                    s.latent = stages.sample_latent(self, s.item.sample_id, s.seed, s.cond, s.uncond, s.condition)
                    check_finite_latent(s.latent, getattr(self, "net", None))  # NaN/inf: the sample fails
                except Exception as exc:
                    self._fail(s, exc, manifest, summary)
                    continue
                s.timings["sampling_s"] = time.perf_counter() - t0
                s.cond = s.uncond = s.condition = None  # not needed any more
                if not self.layout.is_replica_leader:
                    s.status = "done"  # the leader decodes and writes
        for s in todo:
            if s.status == "pending" and s.latent is None and self.layout.is_replica_leader:
                s.status = "stopped"  # never sampled: tried again on the next run
        return stopped

    # ---- 4. decode, video guardrail, write ----------------------------------------------------------
    def _output_stage(self, samples: list[Sample], manifest, summary) -> None:
        from cosmos_dist.guardrails import run_video_stage
        from cosmos_dist.pipeline import stages

        if not self.layout.is_replica_leader:
            return
        res = getattr(self, "residency", None)
        todo = [s for s in samples if s.status == "pending" and s.latent is not None]
        if not todo:
            return
        with uses(res, "tokenizer"):
            for s in todo:
                t0 = time.perf_counter()
                try:
                    s.frames = self.tokenizer.decode_to_uint8(s.latent)
                except Exception as exc:
                    self._fail(s, exc, manifest, summary, raise_for_layout=False)
                    continue
                s.timings["decode_s"] = time.perf_counter() - t0
        provider = getattr(self, "guardrail", None)
        todo = [s for s in todo if s.status == "pending"]
        if provider is not None and todo:
            with uses(res, "guardrails"):
                for s in todo:
                    t0 = time.perf_counter()
                    try:
                        verdict, frames = run_video_stage(provider, s.frames)
                    except Exception as exc:  # never a pass
                        self._fail(s, exc, manifest, summary, raise_for_layout=False)
                        s.frames = None
                        continue
                    s.timings["guardrail_video_s"] = time.perf_counter() - t0
                    if not verdict.ok:
                        s.frames = None
                        self._block(s, verdict.reason, "video", manifest, summary)
                    else:
                        s.frames = frames
                        s.records["guardrail_video"] = "passed"
        for s in todo:
            if s.status != "pending":
                continue
            try:
                self._records_for_sidecar[s.item.sample_id] = s.records
                stages.write_outputs(
                    self, s.item, s.latent, s.frames, s.timings, s.t_start,
                    prompt=s.prompt, negative=s.negative, seed=s.seed, notes=s.notes, manifest=manifest,
                )
                s.status = "done"
            except Exception as exc:
                self._fail(s, exc, manifest, summary, raise_for_layout=False)
            finally:
                self._records_for_sidecar.pop(s.item.sample_id, None)
                s.frames = None
                s.latent = None

    # ---- sidecar ------------------------------------------------------------------------------------
    @property
    def _records_for_sidecar(self) -> dict:
        d = self.__dict__.get("_sidecar_records")
        if d is None:
            d = self.__dict__["_sidecar_records"] = {}
        return d

    def sidecar_extra(self, item) -> dict:
        """Read by stages.write_outputs: guardrails (run settings + this sample's checks), upsampler, residency."""
        from cosmos_dist.guardrails import guardrail_record

        rec = self._records_for_sidecar.get(item.sample_id, {})
        res = getattr(self, "residency", None)
        up = getattr(self, "upsampler", None)
        guard = guardrail_record(self.cfg, getattr(self, "guardrail", None))
        if guard.get("enabled"):
            guard["checks"] = {"text": rec.get("guardrail_text", []), "video": rec.get("guardrail_video")}
        upsampler = {"enabled": up is not None}
        if up is not None:
            upsampler.update(rec.get("upsampler") or {"model_dir": up.model_dir, "upsampled": False})
        out = {"guardrail": guard, "upsampler": upsampler}
        if res is not None:
            out["offload"] = {**res.describe(), "move_seconds_so_far": round(res.move_seconds, 3)}
        return out
