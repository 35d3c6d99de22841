"""Peak GPU memory and time of one sample at each residency level (offload=none ... dit), random weights.

    python tools/measure_memory.py --model 7b --kinds t2w,v2w --output docs/bench/memory_7b.json
    python tools/measure_memory.py --model 14b --kinds t2w,v2w --output docs/bench/memory_14b.json
    python tools/measure_memory.py --tiny --output /tmp/m.json        # CPU, seconds (its own test)

Every model is built at full size with random weights, once, and kept in pinned CPU memory (the stand-ins and
their adapters: tools/memory_standins.py). For each level, the real residency manager
(cosmos_dist/pipeline/residency.py) takes charge of them as `load_components` does (resident ones moved to the
GPU, offloaded ones moved in for their stage only, the DiT streamed block by block at level dit), they are handed
to the pipeline as its `Components`, and the pipeline itself runs one sample (`Text2WorldPipeline` /
`Video2WorldPipeline`, composed with the command line's configuration: the model preset, offload=<level>,
num_steps, guidance mode, precision). Nothing here re-implements a stage: a subclass only wraps the pipeline's
four stage methods to time them and take their peak GPU memory:

    text_stage       guardrail text check -> prompt rules -> upsampler -> guardrail check of the upsampled prompt
                     -> T5 (prompt + negative, 512 tokens each): one measurement for all of them
    condition_stage  Video2World: the input image read and the 121-frame clip encoded by the tokenizer
    sampling_stage   `--steps` guided DiT steps through denoiser.sample_latent (cfg mode as configured)
    output_stage     tokenizer decode -> video guardrail (SigLIP on every frame + the face stand-in) -> sidecar
                     (-> with --write-video: the mp4 and sidecar written inline by the pipeline's writer)

Each level's JSON also keeps the sample's own `timings_s` from its sidecar (guardrail_text_s, upsample_s,
text_encode_s, condition_encode_s, sampling_s, decode_s, guardrail_video_s, write_s, total_s), which split the
stages' seconds. Without --write-video the sample goes through the Python API (`pipe(prompt)`: nothing written);
with it through `pipe.run()` of a `prompt=` run into DIR/<kind>-<level>/.

Peaks are torch.cuda.max_memory_allocated / max_memory_reserved (the CUDA context, ~0.5 GB, is not included);
"GiB" = 2^30 bytes. A level that does not fit reports the stage where it ran out of memory: the pipeline records
an out-of-memory error as the sample's failure (read from its reason), one raised outside a stage's own error
handling (a model moving in) is caught by the stage's wrapper.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cosmos_dist.config import OFFLOAD_LEVELS  # noqa: E402
from memory_standins import (  # noqa: E402
    GuardStandIn, StandInGuardrail, StandInText, StandInUpsampler, build_dit, build_t5, build_tokenizer,
    build_upsampler,
)

# The model card's "GPU memory requirements" table (Cosmos-Predict1 README / examples), per offloading strategy.
CARD_GB = {
    ("7b", "t2w"): {"upsampler": 74.0, "guardrails": 57.1, "text_encoder": 38.5, "tokenizer": 38.3, "dit": 24.4},
    ("14b", "t2w"): {"upsampler": ">80.0", "guardrails": 70.5, "text_encoder": 51.9, "tokenizer": 51.7, "dit": 39.0},
    ("7b", "v2w"): {"upsampler": 76.5, "guardrails": 59.9, "text_encoder": 41.3, "tokenizer": 41.1, "dit": 27.3},
    ("14b", "v2w"): {"upsampler": ">80.0", "guardrails": 73.3, "text_encoder": 54.8, "tokenizer": 54.5, "dit": 39.0},
}
GIB = 2**30
PROMPT = ("A robotic arm in a bright warehouse picks up a cardboard parcel from a conveyor belt, turns it to read "
          "the label, and places it on a shelf beside other parcels while the camera slowly pans to the right.")
#: the pipeline's stage methods that are measured, in their order (pipeline/base.py: _process_chunk)
STAGES = ("text_stage", "condition_stage", "sampling_stage", "output_stage")


class Meter:
    """Seconds and peak GPU memory of each measured stage (peak counters reset at its start)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stages: dict[str, dict] = {}

    def reset(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def peaks(self):
        if not self.cuda:
            return None, None
        return torch.cuda.max_memory_allocated(self.device) / GIB, torch.cuda.max_memory_reserved(self.device) / GIB

    def stage(self, name, fn):
        self.reset()
        t0 = time.perf_counter()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize(self.device)
        alloc, reserved = self.peaks()
        self.stages[name] = {"seconds": round(time.perf_counter() - t0, 3),
                             "peak_allocated_gib": None if alloc is None else round(alloc, 2),
                             "peak_reserved_gib": None if reserved is None else round(reserved, 2)}
        print(f"    stage {name}: {self.stages[name]}", file=sys.stderr, flush=True)  # a run cut short keeps these
        return out


# ---- the pipeline, with its stage methods measured -------------------------------------------------------------------
def measured_pipeline(kind: str):
    """Text2WorldPipeline / Video2WorldPipeline with each stage method run under `meter`. `samples`: the samples
    it processed; `failed_at`: sample id -> the stage that failed it; `raised_in`: the stage an out-of-memory
    error escaped from, if one did."""
    from cosmos_dist.pipeline.text2world import Text2WorldPipeline
    from cosmos_dist.pipeline.video2world import Video2WorldPipeline

    class Measured(Video2WorldPipeline if kind == "v2w" else Text2WorldPipeline):
        def __init__(self, cfg, components, meter: Meter):
            super().__init__(cfg, components=components)
            self.meter, self.samples, self.failed_at, self.raised_in = meter, [], {}, None

        def _measure(self, name, stage, job, samples) -> None:
            if name == STAGES[0]:
                self.samples.extend(samples)
            failed = {s.sample_id for s in samples if s.status == "failed"}
            try:
                self.meter.stage(name, lambda: stage(job, samples))
            except torch.OutOfMemoryError:
                self.raised_in = name
                raise
            for s in samples:
                if s.status == "failed" and s.sample_id not in failed:
                    self.failed_at.setdefault(s.sample_id, name)

        def _text_stage(self, job, samples):
            self._measure("text_stage", super()._text_stage, job, samples)

        def _condition_stage(self, job, samples):
            self._measure("condition_stage", super()._condition_stage, job, samples)

        def _sampling_stage(self, job, samples):
            self._measure("sampling_stage", super()._sampling_stage, job, samples)

        def _output_stage(self, job, samples):
            self._measure("output_stage", super()._output_stage, job, samples)

    Measured.__name__ = Measured.__qualname__ = f"Measured{Measured.__mro__[1].__name__}"
    return Measured


def oom_stage(stage: str, reason: str) -> str:
    """The stage, and for the text and output stages the model, named in the reason of an out-of-memory failure."""
    parts = {"text_stage": (("text guardrail", "guardrail text check"), ("prompt upsampler", "upsampler"),
                            ("upsampled prompt", "upsampler"), ("", "T5")),
             "output_stage": (("video guardrail", "video guardrail"), ("face blur", "video guardrail"),
                              ("", "decode"))}
    for prefix, what in parts.get(stage, ()):
        if reason.startswith(prefix):
            return f"{stage} ({what})"
    return stage


def base_overrides(args, kind: str, device) -> list[str]:
    """The command line's configuration of the measured run, less offload= and the output."""
    size = "tiny" if args.tiny else args.model
    out = [f"model={size}_{'text2world' if kind == 't2w' else 'video2world'}", f"num_steps={args.steps}",
           "progress=false", f"device={device.type}", "guardrail=on", "video.write_queue=0",  # the write inline
           f"parallel.batch_cfg={str(args.cfg_mode == 'batch').lower()}",
           f"precision.compile={str(device.type == 'cuda' and not args.no_compile).lower()}",  # what build_dit did
           f"offload.dit_stream={str(not args.no_dit_stream).lower()}",
           f"precision.tokenizer_decode_chunk={args.decode_chunk}",
           f"precision.tokenizer_encode_chunk={args.encode_chunk}"]
    if args.precision == "fp8":  # build_dit converted the blocks with the cublas FP8 linear: the plan says the same
        out += ["precision=fp8", "precision.fp8_linear_kernel=cublas"]
    if not args.no_upsampler:
        out += ["upsampler.enabled=true", "upsampler.model_dir=in-memory-stand-in",
                f"upsampler.max_new_tokens={args.upsampler_tokens}"]
    if args.tiny:
        out += ["height=32", "width=48", "num_frames=9"]
    return out


def write_input_image(cfg, folder: Path) -> Path:
    """The Video2World input: one image at the model's frame size."""
    import numpy as np
    from PIL import Image

    path = folder / "input.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (int(cfg.height), int(cfg.width), 3), dtype=np.uint8)).save(path)
    return path


# ---- the levels -----------------------------------------------------------------------------------------------------
def reset_to_host(store):
    for tensors, hosts in store.values():
        for t, h in zip(tensors, hosts):
            t.data = h


def components_for(cfg, m, device):
    """The stand-ins placed by the level's Residency, registered as load_components does, as the pipeline's
    Components."""
    from cosmos_dist.pipeline.components import Components, Tokenizer
    from cosmos_dist.pipeline.residency import Residency

    res = Residency.from_config(cfg, device)
    res.register("guardrails", m.guardrail.modules())
    if m.upsampler is not None:
        res.register("upsampler", m.upsampler.modules())
    res.register("text_encoder", [m.text.model])
    res.register("tokenizer", [m.tokenizer.encoder, m.tokenizer.decoder])
    res.register("dit", [m.net], stream_blocks=m.net.blocks)
    return Components(net=m.net, checkpoint_info={"note": "random weights built in memory by tools/measure_memory.py",
                                                  "preset": str(cfg.model.preset)},
                      tokenizer=Tokenizer(m.tokenizer), residency=res, text=m.text, guardrail=m.guardrail,
                      upsampler=m.upsampler)


def measure_level(level, m, store, args, kind, device, overrides, workdir: Path, name: str | None = None):
    from cosmos_dist.configure import compose_config

    reset_to_host(store)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    write = args.write_video is not None
    out_dir = Path(args.write_video) / f"{kind}-{name or level}" if write else workdir / "not-written"
    where = {"input_path": str(m.input_path)} if kind == "v2w" else {}
    cfg = compose_config([*overrides, f"offload={level}"], output_dir=str(out_dir), prompt=PROMPT, **where)
    meter = Meter(device)
    pipe = None
    t0 = time.perf_counter()
    phase = "load"
    try:
        comps = components_for(cfg, m, device)
        resident = torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else None
        load_s = time.perf_counter() - t0
        phase = "sample"
        pipe = measured_pipeline(kind)(cfg, comps, meter)
        t1 = time.perf_counter()
        if write:  # the command line's path (a `prompt=` run): prepare, the stages, mp4 + sidecar + manifest
            pipe.run()
        else:  # the Python API's path: the same stages, the video kept in memory
            pipe(PROMPT)
        total_s = time.perf_counter() - t1
    except torch.OutOfMemoryError as exc:
        stage = "load (resident models)" if phase == "load" else (pipe.raised_in or "?")
        return oom_result(stage, str(exc), meter, store, device)
    if not pipe.samples:  # run() skipped it: a sidecar of this very sample is there
        raise RuntimeError(f"{out_dir} already holds this sample; give --write-video an empty folder")
    [s] = pipe.samples
    if s.status != "done":
        reason = s.reason or s.status
        if "OutOfMemoryError" in reason:
            return oom_result(oom_stage(pipe.failed_at.get(s.sample_id, "?"), reason), reason, meter, store, device)
        raise RuntimeError(f"{kind} offload={level}: the sample is {s.status} at "
                           f"{pipe.failed_at.get(s.sample_id, '?')}: {reason}")
    sidecar = s.records["sidecar"]
    s.frames = s.latent = None  # the API path's results: not needed beyond the sidecar
    res = comps.residency
    peaks = list(meter.stages.values())
    out = {
        "oom": False,
        "resident_after_load_gib": None if resident is None else round(resident, 2),
        "peak_allocated_gib": None if device.type != "cuda" else round(max(v["peak_allocated_gib"] for v in peaks), 2),
        "peak_reserved_gib": None if device.type != "cuda" else round(max(v["peak_reserved_gib"] for v in peaks), 2),
        "sample_seconds": round(total_s, 2),
        "move_seconds": round(res.move_seconds, 2),
        "streamed_gib": round(res.streamed_bytes / GIB, 2),
        "streamed_bytes": res.streamed_bytes,
        "load_seconds": round(load_s, 2),
        "offloaded": res.describe()["offloaded"],
        "stages": meter.stages,
        "timings_s": sidecar.get("timings_s", {}),  # the pipeline's own per-sample clock (its sidecar)
    }
    if write:
        out["video"] = str(out_dir / sidecar["path"])
    if out["peak_reserved_gib"] is not None:
        out["peak_reserved_gb"] = round(out["peak_reserved_gib"] * GIB / 1e9, 2)
    return out


def oom_result(stage: str, error: str, meter: Meter, store, device) -> dict:
    result = {"oom": True, "oom_at": stage, "error": error.splitlines()[0][:300], "stages": meter.stages}
    reset_to_host(store)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def to_store(name, modules, store, pin):
    """Move a component's weights into (pinned) host memory once; every level starts from there."""
    from cosmos_dist.pipeline.residency import _host_copy, _unique_tensors

    tensors = _unique_tensors(modules)
    hosts = []
    for t in tensors:
        h = _host_copy(t, pin)
        t.data = h
        hosts.append(h)
    store[name] = (tensors, hosts)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["7b", "14b"], default="7b")
    ap.add_argument("--kinds", default="t2w", help="comma list of t2w, v2w")
    ap.add_argument("--levels", default=",".join(OFFLOAD_LEVELS), help="comma list, default all six")
    ap.add_argument("--steps", type=int, default=2, help="guided DiT steps (2 reach the peak)")
    ap.add_argument("--cfg-mode", choices=["batch", "sequential"], default="batch",
                    help="batch = the pipeline's single-GPU default (parallel.batch_cfg=true); sequential = the reference")
    ap.add_argument("--no-compile", action="store_true", help="eager DiT blocks (default: compiled, as on CUDA)")
    ap.add_argument("--precision", choices=["bf16", "fp8"], default="bf16",
                    help="the DiT's precision: bf16, or fp8 (FP8 linears + FP8 attention, as precision=fp8)")
    ap.add_argument("--no-dit-stream", action="store_true", help="level dit moves the DiT whole instead of streaming")
    ap.add_argument("--guardrail", choices=["aegis", "qwen3guard"], default="aegis")
    ap.add_argument("--no-upsampler", action="store_true")
    ap.add_argument("--upsampler-tokens", type=int, default=32)
    ap.add_argument("--guard-prompt-tokens", type=int, default=768,
                    help="tokens of the text guard's moderation template (one more per word of the prompt)")
    ap.add_argument("--guard-tokens", type=int, default=8)
    ap.add_argument("--decode-chunk", type=int, default=2,
                    help="latent frames per tokenizer decode chunk (precision.tokenizer_decode_chunk); 0 = whole clip")
    ap.add_argument("--encode-chunk", type=int, default=2,
                    help="latent frames' worth of pixel frames per tokenizer encode chunk (v2w; "
                         "precision.tokenizer_encode_chunk); 0 = whole clip")
    ap.add_argument("--tiny", action="store_true", help="tiny models at 9x32x48 (CPU test of this script)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--write-video", default=None, metavar="DIR",
                    help="run each sample as a `prompt=` run into DIR/<kind>-<level>/ (mp4, sidecar, manifest, "
                         "written inline in the output stage) instead of through the Python API")
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    pin = device.type == "cuda"
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    levels = [lv.strip() for lv in args.levels.split(",") if lv.strip()]
    for lv in levels:
        if lv not in OFFLOAD_LEVELS:
            ap.error(f"unknown level {lv}")
    for k in kinds:
        if k not in ("t2w", "v2w"):
            ap.error(f"unknown kind {k}; choose t2w or v2w")
    t_start = time.perf_counter()
    report = {
        "model": args.model if not args.tiny else "tiny", "device": torch.cuda.get_device_name(device) if pin else "cpu",
        "torch": torch.__version__, "python": platform.python_version(), "steps": args.steps, "cfg_mode": args.cfg_mode,
        "compile": not args.no_compile and pin, "dit_stream": not args.no_dit_stream, "guardrail_standin": args.guardrail,
        "upsampler": not args.no_upsampler, "units": "GiB (2^30 bytes) unless a key says gb",
        "method": "one sample through the pipeline's own stages (Text2WorldPipeline / Video2WorldPipeline given "
                  "the stand-ins as Components); stages = its stage methods",
        "kinds": {},
    }
    from cosmos_dist.attention.fp8 import resolve_kernel
    from cosmos_dist.attention.local import resolve_attention_kernel

    report["precision"] = args.precision
    report["attention_kernel"] = (f"fp8 {resolve_kernel('auto', device)}" if args.precision == "fp8"
                                  else resolve_attention_kernel("auto", device))  # the config defaults (auto)
    m = argparse.Namespace(net=None, upsampler=None, input_path=None)
    store: dict = {}
    workdir = Path(tempfile.mkdtemp(prefix="measure-memory-"))
    log = lambda *a: print(f"[{time.perf_counter() - t_start:7.1f}s]", *a, file=sys.stderr, flush=True)  # noqa: E731
    log("building guardrail stand-ins")
    guard = GuardStandIn(args.guardrail, args.tiny, device)
    to_store("guardrails", guard.modules(), store, pin)
    m.guardrail = StandInGuardrail(guard, device, template_tokens=args.guard_prompt_tokens,
                                   verdict_tokens=args.guard_tokens)
    if not args.no_upsampler:
        log("building the upsampler stand-in")
        up = build_upsampler(args.tiny, device)
        to_store("upsampler", [up], store, pin)
        m.upsampler = StandInUpsampler(up, device, new_tokens=args.upsampler_tokens)
    log("building T5")
    t5 = build_t5(args.tiny, device)
    to_store("text_encoder", [t5], store, pin)
    m.text = StandInText(t5, device)
    tok_dtype = torch.bfloat16 if pin else torch.float32  # the plan's tokenizer dtype (precision auto)
    m.tokenizer, tok_note = build_tokenizer(args.tiny, device, tok_dtype, args.decode_chunk, args.encode_chunk)
    to_store("tokenizer", [m.tokenizer.encoder, m.tokenizer.decoder], store, pin)
    report["tokenizer"] = tok_note
    report["tokenizer_decode_chunk"] = args.decode_chunk
    report["tokenizer_encode_chunk"] = args.encode_chunk
    log("tokenizer:", tok_note)

    from cosmos_dist.configure import compose_config

    for kind in kinds:
        overrides = base_overrides(args, kind, device)
        cfg = compose_config(overrides)
        preset = str(cfg.model.preset)
        if kind == "v2w":
            m.input_path = write_input_image(cfg, workdir)
        log(f"building the DiT {preset}")
        m.net = build_dit(preset, device, compile_blocks=pin and not args.no_compile, fp8=args.precision == "fp8")
        to_store("dit", [m.net], store, pin)
        results = {}
        if pin and not args.no_compile:  # compile once outside the measured levels
            log("compiling the DiT blocks (one warm-up step)")
            warm = [o for o in overrides if not o.startswith("num_steps=")] + ["num_steps=1"]
            res_warm = measure_level("tokenizer", m, store, args, kind, device, warm, workdir, name="warmup")
            results["_compile_warmup"] = {"sample_seconds": res_warm.get("sample_seconds"), "oom": res_warm["oom"]}
        for level in levels:
            log(f"{preset}: offload={level}")
            r = measure_level(level, m, store, args, kind, device, overrides, workdir)
            card = CARD_GB.get((args.model, kind), {}).get(level) if not args.tiny else None
            r["card_gb"] = card
            results[level] = r
            log(f"  -> {'OOM at ' + r['oom_at'] if r['oom'] else 'peak reserved %s GiB, sample %.1f s, moves %.1f s' % (r['peak_reserved_gib'], r['sample_seconds'], r['move_seconds'])}")
        base = next((results[lv] for lv in levels if lv in results and not results[lv]["oom"]), None)
        for level in levels:
            r = results[level]
            if not r["oom"] and base is not None:
                r["seconds_added_vs_" + next(lv for lv in levels if results[lv] is base)] = round(
                    r["sample_seconds"] - base["sample_seconds"], 2)
        report["kinds"][kind] = {"preset": preset, "levels": results}
        reset_to_host(store)
        del store["dit"]
        m.net = None
        gc.collect()
        if pin:
            torch.cuda.empty_cache()
    report["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    print(text)
    print(markdown_table(report), file=sys.stderr)
    return 0


def markdown_table(report) -> str:
    lines = ["| kind | level | peak reserved (GiB) | peak allocated (GiB) | card | sample s | moves s |",
             "|---|---|---|---|---|---|---|"]
    for kind, d in report["kinds"].items():
        for level, r in d["levels"].items():
            if level.startswith("_"):
                continue
            if r["oom"]:
                lines.append(f"| {kind} | {level} | OOM ({r['oom_at']}) | | {r.get('card_gb')} | | |")
            else:
                lines.append(f"| {kind} | {level} | {r['peak_reserved_gib']} | {r['peak_allocated_gib']} | "
                             f"{r.get('card_gb')} | {r['sample_seconds']} | {r['move_seconds']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
