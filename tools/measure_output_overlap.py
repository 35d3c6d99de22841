"""Time from the first to the last of N samples, with each sample's files written inline (`video.write_queue=0`)
and by the background writer (`video.write_queue=2`, the default): what the writer saves per run.

    python tools/measure_output_overlap.py --model 7b --steps 2 --samples 3 --output docs/bench/x.json   # GPU
    python tools/measure_output_overlap.py --tiny                                                       # CPU check

The pipeline's own run (`WorldPipeline.run` over a prompts file of N lines: prepare, text, sampling, decode, mp4,
sidecar, manifest) on models built in memory at full size with random weights and handed to the pipeline as its
`Components` (no checkpoint files): the DiT of the preset in bfloat16, the CV8x8x8 decoder. The text encoder is
a stand-in that returns random embeddings of T5's shape (T5-11B's 0.27 s a sample is not what this measures);
guardrails and the upsampler are off. Both modes run in one process on the same models, after a one-sample
warm-up; the figure is the wall time of `run()`, which returns once every file is written. A few steps are
enough: the writer hides the mp4 encode of every sample but the last behind the next sample's sampling, which
does not depend on how long the sampling is, as long as it is longer than the encode.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


class RandomText:
    """The pipeline's TextEncoder interface with random embeddings of T5's shape (1, 512, channels)."""

    def __init__(self, channels: int, device):
        self.channels, self.device = channels, device

    def check_prompt(self, prompt: str, allow_long: bool):
        return prompt, []

    def encode_one(self, prompt: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(len(prompt))
        return torch.randn(1, 512, self.channels, generator=g).to(self.device)


def build_components(cfg, args, device):
    from memory_standins import build_dit, build_tokenizer  # the stand-ins of tools/measure_memory.py

    from cosmos_dist.models import get_preset
    from cosmos_dist.pipeline.components import Components, Tokenizer
    from cosmos_dist.pipeline.residency import Residency

    preset = cfg.model.preset
    net = build_dit(preset, device, compile_blocks=args.compile)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tok, tok_what = build_tokenizer(args.tiny, device, dtype, decode_chunk=int(cfg.precision.tokenizer_decode_chunk))
    res = Residency.from_config(cfg, device)
    tokenizer = Tokenizer(tok)
    res.register("tokenizer", [tok.encoder, tok.decoder])
    res.register("dit", [net], stream_blocks=net.blocks)
    text = RandomText(get_preset(preset).crossattn_emb_channels, device)
    return Components(net=net, checkpoint_info={"note": "random weights built in memory"}, tokenizer=tokenizer,
                      residency=res, text=text), tok_what


def run_mode(args, comps, overrides, prompts: Path, out: Path, queue: int, device) -> dict:
    from cosmos_dist.configure import compose_config
    from cosmos_dist.pipeline.text2world import Text2WorldPipeline

    cfg = compose_config([*overrides, f"prompts_file={prompts}", f"output_dir={out}", f"video.write_queue={queue}"])
    pipe = Text2WorldPipeline(cfg, components=comps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    summary = pipe.run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    samples = []
    for side in sorted(out.rglob("*.json")):
        if side.name.startswith("."):
            continue
        record = json.loads(side.read_text())
        if "timings_s" in record:
            samples.append({"sample_id": record["sample_id"], **record["timings_s"]})
    return {"write_queue": queue, "wall_s": round(wall, 3), "done": len(summary.done), "failed": len(summary.failed),
            "samples": samples}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["7b", "14b"], default="7b")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="compiled DiT blocks (default: eager)")
    ap.add_argument("--tiny", action="store_true", help="tiny models on the CPU (a check of this script)")
    ap.add_argument("--workdir", default=None, help="where the videos go (default: a temporary folder)")
    ap.add_argument("--output", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    preset = "tiny_text2world" if args.tiny else f"{args.model}_text2world"
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    overrides = [f"model={preset}", "guardrail=off", f"num_steps={args.steps}", "progress=false",
                 f"device={device.type}", f"precision.compile={str(args.compile).lower()}"]
    if args.tiny:
        overrides += ["height=32", "width=48", "num_frames=9"]
    from cosmos_dist.configure import compose_config

    work = Path(args.workdir or tempfile.mkdtemp(prefix="overlap-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = compose_config([*overrides, f"output_dir={work / 'warmup'}", "prompt=warm-up"])
    comps, tok_what = build_components(cfg, args, device)
    lines = [{"id": f"clip{i}", "prompt": f"A camera pans across scene number {i}."} for i in range(args.samples)]
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    warm = work / "warm.jsonl"
    warm.write_text(json.dumps({"id": "warm", "prompt": "A warm-up."}) + "\n")

    run_mode(args, comps, overrides, warm, work / "warmup", 0, device)  # first-call costs (kernels, ffmpeg)
    results = [run_mode(args, comps, overrides, prompts, work / f"queue{q}", q, device) for q in (0, 2)]
    inline, background = results
    report = {
        "date": time.strftime("%Y-%m-%d"), "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "model": preset, "steps": args.steps, "samples": args.samples,
        "compiled_blocks": args.compile, "tokenizer": tok_what,
        "text_encoder": "stand-in: random embeddings of T5's shape", "guardrail": "off",
        "runs": results, "saved_s": round(inline["wall_s"] - background["wall_s"], 3),
    }
    for r in results:
        per = r["samples"]
        mean = {k: round(sum(s.get(k, 0.0) for s in per) / max(len(per), 1), 3)
                for k in ("sampling_s", "decode_s", "write_s")}
        print(f"video.write_queue={r['write_queue']}: {r['done']} done, {r['failed']} failed, first to last "
              f"{r['wall_s']:.2f} s (per sample: sampling {mean['sampling_s']} s, decode {mean['decode_s']} s, "
              f"write {mean['write_s']} s)")
    print(f"saved {report['saved_s']:.2f} s over {args.samples} samples")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}))
    return 0 if all(r["failed"] == 0 and r["done"] == args.samples for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
