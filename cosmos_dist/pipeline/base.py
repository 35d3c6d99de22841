"""The pipeline: a prompt's whole path to a video, top to bottom, in one file.

    pipe = Text2WorldPipeline.from_pretrained("checkpoints", model="7b_text2world")
    [video] = pipe("A robot arm sorts parcels.", seed=3)      # GeneratedVideo: frames, latent, metadata
    video.save("outputs/")

The run order of a sample (each step a method below, in this order):

1. check inputs (before any model loads: `prepare`; Video2World adds its input files);
2. text stage, on the replica leader (results shared with its replica): guardrail text check -> prompt rules
   (word and token limits) -> prompt upsampler -> guardrail check of the upsampled prompt -> T5;
3. condition stage (Video2World: read the input and encode it with the tokenizer);
4. sampling stage: the guided DiT on this rank's token shard (pipeline/denoiser.py), through the StepHook seam;
5. output stage, on the replica leader: decode -> guardrail video check + face blur -> the sidecar record ->
   (CLI / save) mp4 and sidecar written atomically, a manifest line.

Samples go through the stages in chunks of `offload.chunk` (1 when nothing is offloaded), so an offloaded model
moves to the GPU once per chunk (pipeline/residency.py). One sample's failure never stops the others: it is
recorded `failed`; a guardrail block is recorded `blocked` (no video, not a failure).

The same code serves the Python API (`__call__` / `iter`: videos returned in memory, files only on `save`) and
the command line (`run`: a prompts file or one prompt, files + manifest, skipping finished samples, Slurm
markers). Which processes run it is the Runtime's business (pipeline/runtime.py).
"""
from __future__ import annotations

import logging
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from cosmos_dist.errors import CosmosDistError, error_reason
from cosmos_dist.pipeline.plan import PrecisionPlan
from cosmos_dist.pipeline.residency import uses
from cosmos_dist.pipeline.results import GeneratedVideo, RunSummary, Sample
from cosmos_dist.pipeline.step_cache import make_step_hook
from cosmos_dist.pipeline.step_hooks import StepHook

log = logging.getLogger("cosmos_dist")

#: generation settings a call may change (the others are fixed when the pipeline is built)
CALL_SETTINGS = ("num_steps", "guidance", "seed", "negative_prompt", "num_frames", "height", "width", "fps",
                 "sampler", "num_input_frames", "resize_mode", "allow_long_prompts")


@dataclass
class Job:
    """One call or run: its settings and where its results go."""

    cfg: Any  # the configuration with this call's settings
    manifest: Any = None  # io.records.Manifest (CLI) or None
    output_dir: Optional[Path] = None  # write files here (CLI), or keep results in memory (None)
    output_layout: str = "flat"  # output_dir's folder layout (io/paths.py)
    summary: RunSummary = field(default_factory=RunSummary)
    on_step: Optional[Callable[[str, int, int, Any], None]] = None  # (sample_id, step, total, latent)
    stop: Any = None  # pipeline.preemption.StopFlag (CLI)
    stopped: bool = False
    writer: Any = None  # pipeline.writer.SampleWriter (CLI): files written in the background


class WorldPipeline:
    """Text2World and Video2World share everything but the condition; see Text2WorldPipeline / Video2WorldPipeline."""

    kind = "text2world"

    def __init__(self, cfg, runtime=None, components=None):
        from cosmos_dist.pipeline.runtime import make_runtime

        self.cfg = cfg
        self.runtime = runtime if runtime is not None else make_runtime(cfg.parallel)
        self.output_dir = Path(cfg.output_dir)
        # Devices, dtypes and kernels, resolved once; a missing package fails here, not mid-run.
        self.plan = PrecisionPlan.resolve(cfg, self.runtime)
        self.components = components  # None until load()
        # The seam for step-level work (pipeline/step_hooks.py): step caching (cache=teacache|fbcache) or none.
        self.step_hook: StepHook = make_step_hook(cfg.get("cache"))
        self.lease = None  # the run's shard lease while `run` holds it (pipeline/lease.py)

    # ---- building ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, checkpoint_dir: str = "checkpoints", model: Optional[str] = None,
                        overrides: Sequence[str] = (), **options) -> "WorldPipeline":
        """Build and load a pipeline with the command line's configuration: `model` is a preset name
        (`7b_text2world`, `tiny_video2world`, ...); `options` are config keys, nested ones with `__` or as
        dicts (`precision="fp8"`, `offload="dit"`, `guardrail="off"`, `parallel={"cp_size": 2}`), and
        `overrides` Hydra override strings. Under torchrun every rank calls it."""
        from cosmos_dist.configure import compose_config

        if model is None:
            model = "7b_video2world" if cls.kind == "video2world" else "7b_text2world"
        cfg = compose_config([f"model={model}", f"checkpoint_dir={checkpoint_dir}", *overrides], **options)
        pipe = cls(cfg)
        if pipe.kind != ("video2world" if cfg.model.preset.endswith("video2world") else "text2world"):
            raise CosmosDistError(f"model={model} is not a {pipe.kind} model; use the matching pipeline class")
        pipe.load()
        return pipe

    def load(self, assets=None) -> None:
        """Load the models (once: later calls reuse them)."""
        if self.components is not None:
            return
        from cosmos_dist.pipeline.components import load_components

        assets = assets if assets is not None else self._assets()
        self.components = load_components(self.cfg, self.plan, assets, self.runtime,
                                          video2world=self.kind == "video2world")
        log.info("models loaded in %.1f s (DiT %s, %s on %s)", self.components.load_seconds, self.cfg.model.preset,
                 self.plan.dit_dtype, self.plan.device)

    def _assets(self):
        """The model files, checked before anything loads (tiny stand-ins are created by the global leader)."""
        from cosmos_dist.guardrails import check_available
        from cosmos_dist.pipeline.assets import check_dit_file, resolve_assets
        from cosmos_dist.pipeline.components import check_upsampler

        creates = bool(self.cfg.model.random_weights)
        if creates and not self.runtime.is_global_leader:
            self.runtime.barrier()
        assets = resolve_assets(self.cfg, announce=self.runtime.is_global_leader)
        if creates and self.runtime.is_global_leader:
            self.runtime.barrier()
        check_dit_file(assets.dit, self.cfg)
        check_available(self.cfg)
        check_upsampler(self.cfg)
        return assets

    # ---- the Python API ------------------------------------------------------------------------------
    def __call__(self, prompts, **settings) -> list[GeneratedVideo]:
        """Generate one prompt or many; returns one GeneratedVideo per sample this process leads (all of them in
        a single process; under torchrun the replica leaders return their replica's share). See `iter`."""
        return list(self.iter(prompts, **settings))

    def iter(self, prompts, *, negative_prompt: Optional[str] = None, seeds: Optional[Sequence[int]] = None,
             inputs: Optional[Sequence[str]] = None, callback: Optional[Callable] = None,
             **settings) -> Iterator[GeneratedVideo]:
        """Yield each finished sample as soon as it is done, so thousands of prompts stream through.

        prompts: a string, or an iterable of strings or dicts (keys as a prompts-file line: prompt,
                 negative_prompt, seed, id, input_path);
        seeds / inputs: per-prompt seeds and (Video2World) input image or video paths;
        callback(sample_id, step, total, latent): after every sampling step (latent: the state, or this rank's
                 token shard under context parallelism);
        settings: num_steps, guidance, seed, negative_prompt, num_frames, height, width, fps, sampler (a name or
                 a dict), num_input_frames, resize_mode, allow_long_prompts.
        """
        from cosmos_dist.configure import with_settings

        unknown = sorted(set(settings) - set(CALL_SETTINGS))
        if unknown:
            raise TypeError(f"unknown generation setting(s) {', '.join(unknown)}; choose from {', '.join(CALL_SETTINGS)}")
        if negative_prompt is not None:
            settings["negative_prompt"] = negative_prompt
        job = Job(cfg=with_settings(self.cfg, settings), on_step=callback)
        self.load()
        items = self.runtime.my_items(list(self._api_items(job.cfg, prompts, seeds, inputs)))
        chunk = self.components.residency.chunk_size()
        for start in range(0, len(items), chunk):
            samples = self._process_chunk(job, items[start : start + chunk])
            if self.runtime.is_replica_leader:
                yield from (self._result(job, s) for s in samples)

    def _api_items(self, cfg, prompts, seeds, inputs):
        """The call's samples, under the command line's ids (io/identity.py), so `save` names them as a run would."""
        from cosmos_dist.io.prompts import single_prompt_item
        from cosmos_dist.pipeline.work import api_samples

        rows = [prompts] if isinstance(prompts, (str, dict)) else list(prompts)
        for i, row in enumerate(rows):
            row = {"prompt": row} if isinstance(row, str) else dict(row)
            if seeds is not None:
                row["seed"] = int(seeds[i])
            if inputs is not None:
                row["input_path"] = str(inputs[i])
            prompt = row.pop("prompt", None)
            if not isinstance(prompt, str) or not prompt.strip():
                raise CosmosDistError(f"prompt {i}: give a non-empty string")
            name = row.pop("id", None)
            negative, seed = row.pop("negative_prompt", None), row.pop("seed", None)
            item = single_prompt_item(prompt, negative, seed, name=name, extra=row)
            yield from api_samples(item, cfg, self._input_hash(cfg, item))

    def _input_hash(self, cfg, item) -> Optional[str]:
        """The content hash of a prompt's conditioning file (part of its identity); None: Text2World."""
        return None

    def _result(self, job: Job, s: Sample) -> GeneratedVideo:
        return GeneratedVideo(sample_id=s.sample_id, status=s.status, metadata=s.records.get("sidecar", {}),
                              frames=s.frames, latent=s.latent, reason=s.reason)

    # ---- the command line: a prompts file or one prompt, into output_dir ---------------------------------
    def collect_work(self):
        """This run's samples (pipeline/work.py: prompts expanded by seed, under ids that include the settings and,
        for Video2World, the input)."""
        from cosmos_dist.pipeline.work import collect_work

        return collect_work(self.cfg)

    def prepare(self):
        """Everything that can fail because of the user's input, before a model is loaded. The global leader
        takes the lease of the run's shard (or `prompt=` sample) before any model file is made or read: a second
        copy of a running shard is refused with ShardBusy (exit 4) instead of making the same samples."""
        from cosmos_dist.pipeline.lease import claim_run
        from cosmos_dist.pipeline.preemption import check_run_files
        from cosmos_dist.pipeline.work import check_output_dir
        from cosmos_dist.pipeline.work_checks import screen_work

        work = self.collect_work()
        if self.runtime.is_replica_leader:
            check_output_dir(self.output_dir)
            check_run_files(self.output_dir)  # a symlinked manifest or marker would lead outside the output tree
        if self.runtime.is_global_leader and self.lease is None:
            self.lease = claim_run(self.cfg, [it.sample_id for it in work.items])
        # A pipeline built on models already in memory (`components=`) has no model files to check.
        assets = self._assets() if self.components is None else None
        # Fail fast: prompt lengths (the T5 tokenizer files only), Video2World inputs (their content hash joins
        # the sample's identity), finished samples whose sidecar records another identity.
        input_of = (lambda item: self.input_spec(self.cfg, item)) if self.kind == "video2world" else None
        screen_work(work, self.cfg, assets.text_encoder if assets is not None else None, output_dir=self.output_dir,
                    input_of=input_of)
        return work, assets

    def run(self) -> RunSummary:
        """A prompts file's shard (or one `prompt=`) into output_dir: files, manifest, markers. The lease taken
        in `prepare` is released when the run ends, however it ends (the Python API's calls take none: they
        keep results in memory, and `GeneratedVideo.save` writes one sample's files atomically)."""
        try:
            return self._run()
        finally:
            if self.lease is not None:
                self.lease.release()
                self.lease = None

    def _run(self) -> RunSummary:
        from cosmos_dist.io.records import Manifest
        from cosmos_dist.pipeline.preemption import StopFlag, finish_shard
        from cosmos_dist.pipeline.work import is_done

        work, assets = self.prepare()
        rt = self.runtime
        job = Job(cfg=self.cfg, output_dir=self.output_dir, output_layout=work.layout,
                  manifest=Manifest(self.output_dir / "manifest.jsonl") if rt.is_replica_leader else None)
        summary = job.summary
        for bad in work.bad_lines:
            summary.failed.append(bad.sample_id or f"line {bad.line_number}")
            if rt.is_global_leader:  # every rank reads the file: one rank counts its bad lines
                job.manifest.append(status="failed", sample_id=bad.sample_id, line=bad.line_number, reason=bad.reason)
                summary.reasons[bad.reason.split(":")[0][:80]] += 1
        pending = []
        for item in rt.my_items(work.items):
            if is_done(self.output_dir, item, work.layout):  # its sidecar records this run's identity
                if job.manifest is not None:
                    job.manifest.append(status="skipped", sample_id=item.sample_id, line=item.line_number,
                                        reason="already done (sidecar exists)")
                summary.skipped.append(item.sample_id)
            else:
                pending.append(item)
        if not pending:
            log.info("nothing to do: %d done already, %d failed lines", len(summary.skipped), len(work.bad_lines))
            if rt.is_global_leader:
                finish_shard(self.cfg, work)
            return summary

        job.stop = StopFlag.install()  # before loading: a warning signal then still stops cleanly
        self.load(assets)
        from cosmos_dist.pipeline.progress import progress_bar
        from cosmos_dist.pipeline.writer import SampleWriter

        bar = progress_bar(len(pending), "samples", self.cfg.progress and rt.is_global_leader)
        chunk = self.components.residency.chunk_size()
        job.writer = SampleWriter(int(self.cfg.video.write_queue) if rt.is_replica_leader else 0)
        try:
            for start in range(0, len(pending), chunk):
                samples = self._process_chunk(job, pending[start : start + chunk])
                bar.update(sum(s.status in ("done", "writing", "failed", "blocked") for s in samples))
                if job.stopped:
                    break
        except BaseException:
            # The job is ending (a lost rank, a signal): the samples already sampled are still written, and a
            # write cut short by the ending leaves its sample pending. (The encoder has its own process group, so
            # Ctrl-C does not cut it short; a Slurm cancel, which signals every process of the job, does.)
            self._record_writes(job, job.writer.close(), job_ending=True)
            raise
        self._record_writes(job, job.writer.close())
        bar.close()
        if rt.is_global_leader:
            finish_shard(self.cfg, work, summary.stopped_by)
        return summary

    # ---- one chunk through every stage ------------------------------------------------------------------
    def _process_chunk(self, job: Job, items) -> list[Sample]:
        if job.stop is not None and self.runtime.agree_stop(job.stop.requested):
            job.summary.stopped_by = job.stop.signal_name or "stop requested on another rank"
            job.stopped = True
            return []
        cfg = job.cfg
        samples = [Sample(item=item, seed=item.seed if item.seed is not None else cfg.seed,
                          negative=item.negative_prompt if item.negative_prompt is not None else cfg.negative_prompt)
                   for item in items]
        self._text_stage(job, samples)  # 2
        self._condition_stage(job, samples)  # 3
        self._sampling_stage(job, samples)  # 4
        self._output_stage(job, samples)  # 5
        for s in samples:
            if s.status == "done":
                job.summary.done.append(s.sample_id)
        if job.writer is not None:
            self._record_writes(job, job.writer.finished())
        return samples

    def _record_writes(self, job: Job, results, job_ending: bool = False) -> None:
        """Written samples are `done` (summary; the writer added the manifest line); a failed write is the
        sample's failure, except while the job is ending: then it is recorded `interrupted` and stays pending for
        the resubmission."""
        for r in results:
            s = r.sample
            if r.error is not None and job_ending:
                log.warning("sample %s was not written before the job ended: %s", s.sample_id, error_reason(r.error))
                job.manifest.append(status="interrupted", sample_id=s.sample_id, line=s.item.line_number,
                                    reason=f"the job ended while its files were written: {error_reason(r.error)}")
                continue
            if r.error is not None:
                self._fail(job, s, r.error, collective=False)
                continue
            s.status = "done"  # its manifest line was written with its files
            job.summary.done.append(s.sample_id)
            log.info("wrote %s (+ %s.json) in %.1f s", r.path, s.sample_id, s.timings["total_s"])

    # ---- bookkeeping ------------------------------------------------------------------------------------
    def _fail(self, job: Job, s: Sample, exc: BaseException | str, *, collective: bool = True) -> None:
        """Record `s` as failed. `collective`: the stage involves the replica's other ranks, so an error that
        may have hit this rank only is re-raised by the runtime (the job ends, naming the rank)."""
        if collective and isinstance(exc, BaseException) and self.runtime.ends_job(exc):
            self.runtime.interrupt(exc, job.manifest, s.item)  # a lost rank: recorded interrupted (pending); raises
        reason = exc if isinstance(exc, str) else error_reason(exc)
        if isinstance(exc, BaseException) and not isinstance(exc, CosmosDistError):
            log.error("sample %s failed:\n%s", s.sample_id, "".join(traceback.format_exception(exc)))
        else:
            log.error("sample %s failed: %s", s.sample_id, reason)
        s.status, s.reason = "failed", reason
        if self.runtime.is_replica_leader and job.manifest is not None:
            job.manifest.append(status="failed", sample_id=s.sample_id, line=s.item.line_number, reason=reason)
        job.summary.failed.append(s.sample_id)
        job.summary.reasons[reason.split(":")[0][:80]] += 1
        if collective and isinstance(exc, BaseException):
            self.runtime.after_failure(exc)

    def _block(self, job: Job, s: Sample, reason: str, stage: str) -> None:
        log.warning("sample %s blocked: %s", s.sample_id, reason)
        s.status, s.reason, s.stage = "blocked", reason, stage
        if self.runtime.is_replica_leader and job.manifest is not None:
            job.manifest.append(status="blocked", sample_id=s.sample_id, line=s.item.line_number, reason=reason,
                                stage=stage)
        job.summary.blocked.append(s.sample_id)

    # ---- 2. text ----------------------------------------------------------------------------------------
    def _text_stage(self, job: Job, samples: list[Sample]) -> None:
        comps, cfg = self.components, job.cfg
        outcomes = self.runtime.on_leader(lambda: self._prompts_on_leader(cfg, samples))
        for s, o in zip(samples, outcomes):
            s.timings.update(o["timings"])
            s.notes.extend(o["notes"])
            s.records.update(o["records"])
            if o["status"] == "blocked":
                self._block(job, s, o["reason"], "text")
            elif o["status"] == "failed":
                self._fail(job, s, o["reason"])
            else:
                s.prompt = o["prompt"]
        todo = [s for s in samples if s.status == "pending"]
        if not todo:
            return
        with uses(comps.residency, "text_encoder"):
            for s in todo:
                t0 = time.perf_counter()
                try:
                    s.cond, s.uncond = self.encode(s.prompt, s.negative)
                except Exception as exc:
                    self._fail(job, s, exc)
                    continue
                s.timings["text_encode_s"] = time.perf_counter() - t0

    def _prompts_on_leader(self, cfg, samples: list[Sample]) -> list[dict]:
        """Guardrail -> prompt rules -> upsampler -> guardrail again, for the chunk (replica leader)."""
        from cosmos_dist.guardrails import run_text_check

        comps = self.components
        out = [{"status": "pending", "prompt": s.item.prompt, "notes": [], "records": {}, "timings": {}} for s in samples]
        live = lambda: [i for i, o in enumerate(out) if o["status"] == "pending"]  # noqa: E731

        def guard(what: str, indices) -> None:
            with uses(comps.residency, "guardrails"):
                for i in indices:
                    t0 = time.perf_counter()
                    try:
                        verdict = run_text_check(comps.guardrail, out[i]["prompt"], what)
                    except Exception as exc:  # never a pass
                        out[i].update(status="failed", reason=error_reason(exc))
                        continue
                    finally:
                        t = out[i]["timings"]
                        t["guardrail_text_s"] = t.get("guardrail_text_s", 0.0) + time.perf_counter() - t0
                    if not verdict.ok:
                        out[i].update(status="blocked", reason=verdict.reason)
                    else:
                        out[i]["records"].setdefault("guardrail_text", []).append(f"{what}: passed")

        if comps.guardrail is not None:
            guard("prompt", live())
        for i in live():
            try:
                out[i]["prompt"], notes = comps.text.check_prompt(out[i]["prompt"], allow_long=cfg.allow_long_prompts)
                out[i]["notes"].extend(notes)
            except Exception as exc:
                out[i].update(status="failed", reason=error_reason(exc))
        if comps.upsampler is not None:
            changed = self._upsample(out, live(), samples)
            if comps.guardrail is not None and changed:
                guard("upsampled prompt", [i for i in changed if out[i]["status"] == "pending"])
        return out

    def _upsample(self, out: list[dict], indices, samples) -> list[int]:
        comps = self.components
        changed = []
        with uses(comps.residency, "upsampler"):
            for i in indices:
                t0 = time.perf_counter()
                try:
                    r = comps.upsampler.upsample(out[i]["prompt"], seed=samples[i].seed)
                except Exception as exc:
                    out[i].update(status="failed", reason=f"prompt upsampler: {error_reason(exc)}")
                    continue
                out[i]["timings"]["upsample_s"] = time.perf_counter() - t0
                out[i]["records"]["upsampler"] = {"model_dir": comps.upsampler.model_dir, **r.record()}
                if r.skipped_reason:
                    out[i]["notes"].append(f"prompt upsampler skipped: {r.skipped_reason}")
                if r.upsampled:
                    try:  # the rules apply to what T5 sees; an upsampled prompt may be cut, never refused
                        out[i]["prompt"], notes = comps.text.check_prompt(r.prompt, allow_long=True)
                        out[i]["notes"].extend(n.replace("prompt", "upsampled prompt", 1) for n in notes)
                    except Exception as exc:
                        out[i].update(status="failed", reason=f"upsampled prompt: {error_reason(exc)}")
                        continue
                    changed.append(i)
        return changed

    def encode(self, prompt: str, negative: str):
        """(cond, uncond) embeddings (1, 512, C) in the DiT dtype, encoded on the replica leader and shared. An
        empty negative prompt means a zeroed text embedding for the unconditional branch (the reference's T2W)."""
        import torch

        both = None
        if self.runtime.is_replica_leader:
            cond = self.components.text.encode_one(prompt)
            uncond = self.components.text.encode_one(negative) if negative else torch.zeros_like(cond)
            both = torch.cat([cond, uncond]).to(self.plan.device, self.plan.dit_dtype)
        both = self.runtime.share_tensor(both)
        return both[:1], both[1:]

    # ---- 3. condition (Video2World) -----------------------------------------------------------------------
    def _condition_stage(self, job: Job, samples: list[Sample]) -> None:
        todo = [s for s in samples if s.status == "pending"]
        if not todo or self.kind != "video2world":
            return
        with uses(self.components.residency, "tokenizer"):
            for s in todo:
                try:
                    s.condition = self.condition(job.cfg, s)
                except Exception as exc:
                    self._fail(job, s, exc)

    def condition(self, cfg, s: Sample):
        """What conditions the sampler besides the text; Text2World has none (see Video2WorldPipeline)."""
        return None

    # ---- 4. the DiT ---------------------------------------------------------------------------------------
    def _sampling_stage(self, job: Job, samples: list[Sample]) -> None:
        from cosmos_dist.checkpoint.finite import check_finite_latent
        from cosmos_dist.pipeline.denoiser import sample_latent
        from cosmos_dist.pipeline.progress import StepReporter

        todo = [s for s in samples if s.status == "pending"]
        comps, rt = self.components, self.runtime
        with uses(comps.residency, "dit") if todo else nullcontext():
            for s in todo:
                if len(samples) > 1 and job.stop is not None and rt.agree_stop(job.stop.requested):
                    job.summary.stopped_by = job.stop.signal_name or "stop requested on another rank"
                    job.stopped = True
                    break
                t0 = time.perf_counter()
                reporter = StepReporter(s.sample_id, job.cfg, rt.is_global_leader, job.on_step)
                try:
                    s.latent = sample_latent(net=comps.net, plan=self.plan, runtime=rt, cfg=job.cfg,
                                             sample_id=s.sample_id, seed=s.seed, cond=s.cond, uncond=s.uncond,
                                             condition=s.condition, step_hook=self.step_hook, on_step=reporter,
                                             noise_key=s.item.noise_key)
                    check_finite_latent(s.latent, comps.net)  # NaN/inf: the sample fails, naming the checkpoint
                except Exception as exc:
                    self._fail(job, s, exc)
                    continue
                finally:
                    reporter.close()
                s.timings["sampling_s"] = time.perf_counter() - t0
                step_record = self.step_hook.record()
                if step_record is not None:
                    s.records["step_hook"] = step_record
                s.cond = s.uncond = s.condition = None  # not needed any more
                if not rt.is_replica_leader:
                    s.status = "done"  # the leader decodes and writes
        for s in todo:
            if s.status == "pending" and s.latent is None and rt.is_replica_leader:
                s.status = "stopped"  # never sampled: tried again on the next run

    # ---- 5. decode, video guardrail, record, write -----------------------------------------------------------
    def _output_stage(self, job: Job, samples: list[Sample]) -> None:
        from cosmos_dist.guardrails import run_video_stage

        if not self.runtime.is_replica_leader:
            return
        comps = self.components
        todo = [s for s in samples if s.status == "pending" and s.latent is not None]
        with uses(comps.residency, "tokenizer") if todo else nullcontext():
            for s in todo:
                t0 = time.perf_counter()
                try:
                    s.frames = comps.tokenizer.decode_to_uint8(s.latent)
                except Exception as exc:
                    self._fail(job, s, exc, collective=False)
                    continue
                s.timings["decode_s"] = time.perf_counter() - t0
        todo = [s for s in todo if s.status == "pending"]
        if comps.guardrail is not None and todo:
            with uses(comps.residency, "guardrails"):
                for s in todo:
                    t0 = time.perf_counter()
                    try:
                        verdict, frames = run_video_stage(comps.guardrail, s.frames)
                    except Exception as exc:  # never a pass
                        s.frames = None
                        self._fail(job, s, exc, collective=False)
                        continue
                    s.timings["guardrail_video_s"] = time.perf_counter() - t0
                    if not verdict.ok:
                        s.frames = None
                        self._block(job, s, verdict.reason, "video")
                    else:
                        s.frames = frames
                        s.records["guardrail_video"] = "passed"
        for s in todo:
            if s.status != "pending":
                continue
            try:
                self._finish(job, s)
                s.status = "writing" if job.writer is not None else "done"
            except Exception as exc:
                self._fail(job, s, exc, collective=False)
                s.frames = s.latent = None

    def _finish(self, job: Job, s: Sample) -> None:
        """The sidecar record; with an output folder (CLI) the files go to the writer (pipeline/writer.py), which
        writes them in the background; `_record_writes` adds the manifest line once they are written."""
        from cosmos_dist.pipeline.outputs import sidecar_record, write_sample_files

        cfg = job.cfg
        sidecar = sidecar_record(cfg=cfg, kind=self.kind, sample=s, plan=self.plan, runtime=self.runtime,
                                 checkpoint_info=self.components.checkpoint_info, extra=self.sidecar_extra(s))
        s.records["sidecar"] = sidecar
        if job.output_dir is None:
            s.timings["total_s"] = time.perf_counter() - s.t_start
            sidecar["timings_s"] = {k: round(float(v), 4) for k, v in s.timings.items()}
            return
        frames, latent = s.frames, s.latent if cfg.save_latents else None
        s.frames = s.latent = None  # the writer holds them until they are written, the sample no longer

        def write():
            mp4 = write_sample_files(job.output_dir, s.sample_id, frames, sidecar, fps=cfg.fps, crf=cfg.video.crf,
                                     preset=cfg.video.preset, latent=latent, timings=s.timings, t_start=s.t_start,
                                     layout=job.output_layout)
            # The done line right after the sidecar, from the writer's thread (one locked append of a whole line):
            # waiting for the pipeline's thread would leave a written sample without it if the job is killed.
            job.manifest.append(status="done", sample_id=s.sample_id, line=s.item.line_number, reason=None,
                                path=sidecar["path"], prompt_id=s.item.prompt_id)
            return mp4

        job.writer.submit(s, write)

    def sidecar_extra(self, s: Sample) -> dict:
        """The sidecar's `extra` beside the config: guardrails (settings + this sample's checks), upsampler,
        residency, the step hook's record."""
        from cosmos_dist.guardrails import guardrail_record

        comps = self.components
        guard = guardrail_record(self.cfg, comps.guardrail)
        if guard.get("enabled"):
            guard["checks"] = {"text": s.records.get("guardrail_text", []), "video": s.records.get("guardrail_video")}
        upsampler = {"enabled": comps.upsampler is not None}
        if comps.upsampler is not None:
            upsampler.update(s.records.get("upsampler") or {"model_dir": comps.upsampler.model_dir, "upsampled": False})
        out = {"guardrail": guard, "upsampler": upsampler,
               "offload": {**comps.residency.describe(), "move_seconds_so_far": round(comps.residency.move_seconds, 3)}}
        if s.records.get("step_hook") is not None:
            out["step_hook"] = s.records["step_hook"]
        return out

