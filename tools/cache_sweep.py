"""Pick a step-caching threshold: one prompt at several thresholds, against the uncached video.

    python tools/cache_sweep.py --policy teacache --thresholds 0.1,0.2,0.3,0.4 --output-dir sweep \\
        model=7b_text2world prompt="a robot walks through a warehouse"
    python tools/cache_sweep.py --launcher "torchrun --nproc_per_node=8" --thresholds 0.2,0.3 --output-dir sweep \\
        model=7b_text2world prompt="..." parallel.cp_size=4 parallel.cfg_parallel=true
    python tools/cache_sweep.py --thresholds 0,0.3 --output-dir /tmp/sweep model=tiny_text2world prompt="a red ball"

Runs `generate.py` once with `cache=none` (the reference) and once per threshold with `cache=POLICY
cache.threshold=T`, every run with the same prompt, seed and overrides (so the same initial noise), each into
its own folder under --output-dir (none/, teacache-0.3/, ...). Then reports, per threshold: the guided
evaluations reused (from the sidecar's extra.step_hook), the sampling time and its speed-up over cache=none,
and PSNR (dB, over all frames and RGB channels) and SSIM (mean over frames, on luma, 11x11 Gaussian window,
sigma 1.5) of the decoded video against the uncached one. The videos are written with video.crf=0 (x264's
lossless mode on the 4:2:0 frames) unless --crf says otherwise, so the codec adds as little as it can to the
difference.

How to read it: the threshold is a speed/fidelity trade-off that depends on the model, the prompt and the
number of steps; pick the largest threshold whose PSNR/SSIM (and, above all, the videos themselves: look at
them) you accept, on a few prompts that resemble your data. The tiny random-weight presets exercise the tool
only: their numbers say nothing about real videos.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 videos (F, H, W, 3); inf when identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM over frames of two uint8 videos (F, H, W, 3), on BT.601 luma, Gaussian window 11 / sigma 1.5
    (the constants of Wang et al. 2004: K1 0.01, K2 0.03, L 255), valid region only."""
    import torch
    import torch.nn.functional as F

    weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    x = torch.from_numpy(a).double() @ weights  # (F, H, W)
    y = torch.from_numpy(b).double() @ weights
    size = min(11, x.shape[1], x.shape[2])
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :])[None, None]
    x, y = x[:, None], y[:, None]

    def blur(t):
        return F.conv2d(t, window)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean(dim=(1, 2, 3)).mean())


def run_generate(launcher: list[str], overrides: list[str], output_dir: Path, log_path: Path) -> None:
    argv = [*launcher, str(REPO / "generate.py"), *overrides, f"output_dir={output_dir}"]
    with open(log_path, "w") as log:
        proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"error: generate.py failed (exit {proc.returncode}) for {output_dir.name}; see {log_path}")


def read_run(folder: Path) -> dict:
    """The one sample of a run folder: its sidecar and decoded frames."""
    from cosmos_dist.io.video import read_video_frames

    sidecars = sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))
    if len(sidecars) != 1:
        raise SystemExit(f"error: expected one sample in {folder}, found {len(sidecars)} sidecars; give one prompt=")
    side = json.loads(sidecars[0].read_text())
    frames, _ = read_video_frames(folder / side.get("files", {}).get("video", sidecars[0].with_suffix(".mp4").name))
    return {"sidecar": side, "frames": frames}


def sampling_seconds(side: dict) -> float | None:
    t = side.get("timings_s") or side.get("timings") or {}
    return t.get("sampling_s")


def reused_evaluations(side: dict) -> tuple[int, int]:
    """(reused, total) guided evaluations of the conditional branch (under cfg-parallel the sidecar's writer
    holds only that one)."""
    rec = side.get("extra", {}).get("step_hook") or {}
    branch = (rec.get("branches") or {}).get("conditional", {})
    reused = len(branch.get("reused_steps", []))
    return reused, int(rec.get("evaluations", 0) or side.get("sampler", {}).get("num_steps", 0))


def _json_number(x: float):
    """inf as the string "inf" (strict JSON has no infinity)."""
    return "inf" if math.isinf(x) else x


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default="teacache", choices=("teacache", "fbcache"))
    p.add_argument("--thresholds", default="0.1,0.2,0.3,0.4", help="comma-separated cache.threshold values")
    p.add_argument("--output-dir", required=True, type=Path, help="one sub-folder per run, and sweep.json")
    p.add_argument("--launcher", default=sys.executable, help='how to start generate.py, e.g. "torchrun --nproc_per_node=8"')
    p.add_argument("--crf", type=int, default=0, help="video.crf of every run (0: x264 lossless)")
    p.add_argument("overrides", nargs="*", help="generate.py overrides: model=..., prompt=..., num_steps=...")
    args = p.parse_args(argv)
    try:
        args.thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
    except ValueError:
        p.error(f"--thresholds: {args.thresholds!r} is not a comma-separated list of numbers, e.g. 0.1,0.2,0.3")
    if not args.thresholds or any(not math.isfinite(t) or t < 0 for t in args.thresholds):
        p.error("--thresholds: give one or more finite numbers >= 0, e.g. 0.1,0.2,0.3")
    banned = [o for o in args.overrides if o.split("=")[0].lstrip("+~") in ("output_dir", "cache", "prompts_file")
              or o.startswith("cache.")]
    if banned:
        p.error(f"{' '.join(banned)}: the sweep sets output_dir and cache itself and takes one prompt=, not a prompts_file")
    if not any(o.startswith("prompt=") for o in args.overrides):
        p.error('give the prompt as an override: prompt="a robot walks through a warehouse"')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    launcher = shlex.split(args.launcher) if args.launcher != sys.executable else [sys.executable]
    common = [*args.overrides, f"video.crf={args.crf}", "progress=false"]

    runs = [("none", ["cache=none"], None)]
    runs += [(f"{args.policy}-{t:g}", [f"cache={args.policy}", f"cache.threshold={t}"], t) for t in args.thresholds]
    results = {}
    for name, cache, threshold in runs:
        t0 = time.perf_counter()
        run_generate(launcher, [*common, *cache], out / name, out / f"{name}.log")
        print(f"{name}: generated in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        results[name] = (threshold, read_run(out / name))

    base = results["none"][1]
    base_s = sampling_seconds(base["sidecar"])
    rows = []
    for name, (threshold, run) in results.items():
        if name == "none":
            continue
        reused, total = reused_evaluations(run["sidecar"])
        s = sampling_seconds(run["sidecar"])
        if run["frames"].shape != base["frames"].shape:
            raise SystemExit(f"error: {name}'s video has shape {run['frames'].shape}, the uncached one "
                             f"{base['frames'].shape}")
        rows.append({"policy": args.policy, "threshold": threshold, "reused": reused, "evaluations": total,
                     "sampling_s": s, "speedup": (base_s / s) if base_s and s else None,
                     "psnr_db": _json_number(psnr(run["frames"], base["frames"])), "ssim": ssim(run["frames"], base["frames"]),
                     "reused_steps": run["sidecar"]["extra"]["step_hook"]["branches"]["conditional"]["reused_steps"]})
    report = {"overrides": args.overrides, "crf": args.crf, "uncached_sampling_s": base_s, "runs": rows}
    (out / "sweep.json").write_text(json.dumps(report, indent=2, default=str) + "\n")

    print(f"{'threshold':>9}  {'reused':>9}  {'sampling s':>10}  {'speed-up':>8}  {'PSNR dB':>8}  {'SSIM':>6}")
    print(f"{'none':>9}  {'0':>9}  {base_s or float('nan'):>10.2f}  {'1.00x':>8}  {'inf':>8}  {1.0:>6.4f}")
    for r in rows:
        speed = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        print(f"{r['threshold']:>9g}  {r['reused']:>4}/{r['evaluations']:<4}  {r['sampling_s'] or float('nan'):>10.2f}  "
              f"{speed:>8}  {float(r['psnr_db']):>8.2f}  {r['ssim']:>6.4f}")
    print(f"(written to {out / 'sweep.json'}; look at the videos in {out}/*/ before choosing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
