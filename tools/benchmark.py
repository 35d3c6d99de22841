"""Speed of one guided DiT step at the full latent, ours beside diffusers' implementation, one GPU.

    python tools/benchmark.py --model 7b --diffusers --profile --output bench-7b.json
    python tools/benchmark.py --model tiny --device cpu --reps 2      # the CPU smoke run (tests)

A guided step is the conditional and the unconditional network pass at one sigma. It is timed as
two passes of batch 1 ("sequential", what the reference does) and as one pass of batch 2
("batched"). Times are medians over `--reps` repetitions after `--warmup` runs, taken with CUDA
events (host clock on the CPU). Weights are random; only shapes matter for speed.

FLOPs counted (multiply-add = 2 FLOPs), per sample and forward, L video tokens, M text tokens, D
model width, C text width, n blocks: self-attention projections 8 L D^2, attention 4 L^2 D;
cross-attention q/out 4 L D^2, k/v 4 M C D, attention 4 L M D; MLP 16 L D^2 (mlp_ratio 4);
patch embed / final layer / adaLN are added exactly. Softmax and elementwise work are not counted.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmos_dist.attention.fp8 import KERNELS as FP8_ATTENTION_KERNELS  # noqa: E402
from cosmos_dist.models import build_dit, get_preset  # noqa: E402
from cosmos_dist.models.fp8 import LINEAR_KERNELS as FP8_LINEAR_KERNELS  # noqa: E402

SHAPES = {  # latent (T, H, W) per model size: 121 x 704 x 1280 video for the real ones
    "tiny": (3, 16, 24),
    "7b": (16, 88, 160),
    "14b": (16, 88, 160),
}


def model_flops(cfg, grid_tokens: int, text_tokens: int = 512) -> dict:
    d, c, n, l, m = cfg.model_channels, cfg.crossattn_emb_channels, cfg.num_blocks, grid_tokens, text_tokens
    hidden = cfg.mlp_hidden
    per_block_matmul = 8 * l * d * d + 4 * l * d * d + 4 * m * c * d + 4 * l * d * hidden
    per_block_attn = 4 * l * l * d + 4 * l * m * d
    adaln = 3 * 2 * (d * cfg.adaln_lora_dim + cfg.adaln_lora_dim * 3 * d)
    extra = 2 * l * cfg.patch_in_features * d + 2 * l * d * cfg.patch_out_features
    matmul = n * (per_block_matmul + adaln) + extra
    attn = n * per_block_attn
    return {"matmul": matmul, "attention": attn, "total": matmul + attn}


class Timer:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, reps: int, warmup: int) -> list[float]:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return times


def inputs(cfg, grid, device, dtype, batch: int):
    t, h, w = grid
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, cfg.latent_channels, t, h, w, generator=g).to(device, dtype)
    emb = torch.randn(batch, 512, cfg.crossattn_emb_channels, generator=g).to(device, dtype)
    c_noise = torch.full((batch,), 0.25 * math.log(10.0), device=device, dtype=dtype)
    return x, emb, c_noise


def our_step_fns(net, grid, device, dtype, attention=None):
    cfg = net.config
    x1, e1, t1 = inputs(cfg, grid, device, dtype, 1)
    x2, e2, t2 = inputs(cfg, grid, device, dtype, 2)
    fps = torch.tensor([24.0], device=device)
    tok1, g = net.patchify(net.input_channels(x1))
    tok2, _ = net.patchify(net.input_channels(x2))
    positions = net.position_tables(g, fps.to(dtype))

    # As in the pipeline, the chosen kernel serves self-attention; cross-attention (512 text tokens) stays SDPA.
    attn = {} if attention is None else {"self_attention": attention}

    def one(tokens, t, e):
        return net.forward_tokens(tokens, t, e, g, fps, positions=positions, **attn)

    def sequential():
        one(tok1, t1, e1)
        one(tok1, t1, e1)

    def batched():
        one(tok2, t2, e2)

    return {"sequential": sequential, "batched": batched}, (tok1, t1, e1, one)


def _ensure_torchvision_resize():
    """diffusers' Cosmos transformer resizes the padding mask with torchvision; where torchvision is
    missing (the CPU test machine) give that module the one nearest-neighbour resize it uses."""
    import types

    import diffusers.models.transformers.transformer_cosmos as mod

    if hasattr(mod, "transforms"):
        return
    nearest = "nearest"

    def resize(t, size, interpolation=None):
        return torch.nn.functional.interpolate(t, size=size, mode="nearest")

    mod.transforms = types.SimpleNamespace(
        functional=types.SimpleNamespace(resize=resize), InterpolationMode=types.SimpleNamespace(NEAREST=nearest)
    )


def diffusers_step_fns(cfg, grid, device, dtype):
    from diffusers import CosmosTransformer3DModel

    _ensure_torchvision_resize()

    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = CosmosTransformer3DModel(
                in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
                num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim, num_layers=cfg.num_blocks,
                mlp_ratio=cfg.mlp_ratio, text_embed_dim=cfg.crossattn_emb_channels, adaln_lora_dim=cfg.adaln_lora_dim,
                max_size=(cfg.max_frames, cfg.max_img_h, cfg.max_img_w), patch_size=(1, 2, 2),
                rope_scale=tuple(cfg.rope_extrapolation), concat_padding_mask=True, extra_pos_embed_type="learnable",
            )
    finally:
        torch.set_default_dtype(prev)
    model = model.eval().requires_grad_(False)
    t, h, w = grid
    fns = {}
    for batch, name in ((1, "sequential"), (2, "batched")):
        x, emb, _ = inputs(cfg, grid, device, dtype, batch)
        ts = torch.full((batch,), 0.5, device=device, dtype=dtype)
        pm = torch.zeros(1, 1, h * 8, w * 8, device=device, dtype=dtype)  # diffusers repeats it per batch

        def call(x=x, emb=emb, ts=ts, pm=pm):
            return model(hidden_states=x, timestep=ts, encoder_hidden_states=emb, fps=24, padding_mask=pm, return_dict=False)

        fns[name] = (lambda call=call: (call(), call())) if batch == 1 else call
    return model, fns


def reference_check(net, cfg, device, dtype) -> dict:
    """One forward in the run dtype against the same weights in float32 (TF32 off), at a quarter of
    the full latent's tokens so the float32 copy and pass fit beside the model."""
    import copy

    grid = (SHAPES_CHECK.get(cfg.name.split("_")[0], (3, 16, 24)))
    x, emb, t = inputs(cfg, grid, device, torch.float32, 1)
    fps = torch.tensor([24.0], device=device)
    out = net(x.to(dtype), t.to(dtype), emb.to(dtype), fps=fps.to(dtype)).float()
    ref_net = copy.deepcopy(net).float()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ref = ref_net(x, t, emb, fps=fps).float()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    del ref_net
    err = (torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref)).item()
    return {"latent": [cfg.latent_channels, *grid], "rel_err": round(err, 6), "finite": bool(torch.isfinite(out).all())}


SHAPES_CHECK = {"7b": (16, 44, 80), "14b": (16, 44, 80)}


def fp8_modes(net, variant: str, kernel: str = "auto", bf16_attention=None):
    """Switch the converted network between bf16 ("bf16"), FP8 linears ("linear") and FP8 linears +
    FP8 self-attention ("linear+attention", through the FP8 attention `kernel`); returns the
    self-attention callable to use (`bf16_attention`, default SDPA, unless FP8 attention)."""
    from functools import partial

    from cosmos_dist.attention import sdpa_attention
    from cosmos_dist.attention.fp8 import fp8_attention
    from cosmos_dist.models.fp8 import set_fp8_enabled

    set_fp8_enabled(net, variant != "bf16")
    if variant == "linear+attention":
        return partial(fp8_attention, kernel=kernel)
    return bf16_attention or sdpa_attention


def fp8_quality(net, cfg, device, steps: int, grid, variant: str, kernel: str = "auto", bf16_attention=None) -> dict:
    """Quality gate of FP8: a full `steps`-step Euler run (guidance 7, random text embeddings) with the
    FP8 network; at every step the BF16 network is also evaluated on the same input, giving the
    relative error of the network output per step; then a separate BF16 run from the same seed gives
    the relative error of the final latent. Runs at `grid` (a reduced latent) to fit in the time."""
    from cosmos_dist.pipeline.denoiser import GuidedDenoiser, mask_tokens
    from cosmos_dist.sampling import SamplerSettings, initial_noise

    shape = (1, cfg.latent_channels, *grid)
    g = torch.Generator().manual_seed(3)
    cond = torch.randn(1, 512, cfg.crossattn_emb_channels, generator=g).to(device, net.dtype)
    uncond = torch.randn(1, 512, cfg.crossattn_emb_channels, generator=g).to(device, net.dtype)
    noise_tokens, pgrid = net.patchify(initial_noise(shape, 1, "fp8-quality"))
    extra = mask_tokens(net, shape, device, net.dtype)
    settings = SamplerSettings(name="euler", num_steps=steps)

    def denoiser(v):
        return GuidedDenoiser(net=net, grid=pgrid, fps=24.0, cond_emb=cond, uncond_emb=uncond, guidance=7.0,
                              extra_tokens=extra, self_attention=fp8_modes(net, v, kernel, bf16_attention))

    low, high = denoiser(variant), denoiser("bf16")
    per_step = []

    def compared(x_net, c_noise, sigma, step):
        fp8_modes(net, "bf16")
        ref = high(x_net, c_noise, sigma, step).float()
        fp8_modes(net, variant, kernel, bf16_attention)
        out = low(x_net, c_noise, sigma, step)
        per_step.append(float(torch.linalg.vector_norm(out.float() - ref) / torch.linalg.vector_norm(ref)))
        return out

    final_fp8 = settings.sample(compared, noise_tokens.to(device), dtype=net.dtype)
    fp8_modes(net, "bf16")
    final_bf16 = settings.sample(high, noise_tokens.to(device), dtype=net.dtype)
    err = float(torch.linalg.vector_norm(final_fp8 - final_bf16) / torch.linalg.vector_norm(final_bf16))
    return {
        "variant": variant,
        "latent": list(shape[1:]),
        "steps": steps,
        "per_step_rel_err": [round(e, 5) for e in per_step],
        "per_step_rel_err_max": round(max(per_step), 5),
        "per_step_rel_err_median": round(statistics.median(per_step), 5),
        "final_latent_rel_err": round(err, 5),
    }


def profile_shares(fn, device) -> dict:
    """Share of device time in attention kernels, matrix products and the rest."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=acts) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    buckets = {"attention": 0.0, "matmul": 0.0, "other": 0.0}
    top = []
    for ev in prof.key_averages():
        t = ev.self_device_time_total if device.type == "cuda" else ev.self_cpu_time_total
        if t <= 0:
            continue
        name = ev.key.lower()
        if any(k in name for k in ("flash", "fmha", "attention", "cudnn", "sdpa", "softmax")):
            buckets["attention"] += t
        elif any(k in name for k in ("gemm", "nvjet", "cutlass", "xmma", "matmul", "aten::mm", "aten::addmm", "aten::bmm", "sm90")):
            buckets["matmul"] += t
        elif device.type == "cuda" or not name.startswith("aten::") or name in ("aten::copy_",):
            buckets["other"] += t
        top.append((t, ev.key))
    total = sum(buckets.values()) or 1.0
    top.sort(reverse=True)
    return {
        "share": {k: round(v / total, 4) for k, v in buckets.items()},
        "top_kernels": [{"name": n[:120], "ms": round(t / 1000, 3)} for t, n in top[:12]],
    }


def save_partial(result, args) -> None:
    """Write what is measured so far: a run cut short (a time limit) still leaves its numbers."""
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))


def time_modes(fns, modes, label, result, args, timer, flops, device) -> None:
    entry_all = result["ours"].setdefault(label, {})
    for mode in modes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = timer(fns[mode], args.reps, args.warmup)
        med = statistics.median(times)
        entry = {"step_s": round(med, 4), "times_s": [round(t, 4) for t in times]}
        entry["tflops"] = round(2 * flops["total"] / med / 1e12, 1)
        if device.type == "cuda":
            entry["peak_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
        entry_all[mode] = entry
        save_partial(result, args)
        print(f"{label} {mode:10s} {med:8.3f} s/step  {entry['tflops']:7.1f} TFLOP/s  peak {entry.get('peak_gb', '-')} GB", flush=True)


def run_fp8(net, cfg, grid_latent, modes, result, args, timer, flops, device, bf16_attention=None) -> None:
    from cosmos_dist.models.fp8 import convert_blocks_to_fp8, resolve_linear_kernel

    linear_kernel = resolve_linear_kernel(args.fp8_linear_kernel, device)
    # Keep the bf16 weights beside the FP8 copies so one network serves both sides of the comparison.
    n = convert_blocks_to_fp8(net, keep_high_precision=True, kernel=linear_kernel)
    if args.compile:  # recompiled with the pipeline's FP8 compile options (plan.compile_blocks)
        from cosmos_dist.pipeline.plan import compile_blocks

        torch._dynamo.reset()
        compile_blocks(net, fp8=True)
    from cosmos_dist.attention.fp8 import resolve_kernel

    kernel = args.fp8_attention_kernel
    result["fp8"] = {"converted_linears": n, "linear_kernel": linear_kernel,
                     "attention_kernel": resolve_kernel(kernel, device)}
    print("FP8 linear kernel:", linear_kernel, "| FP8 attention kernel:", result["fp8"]["attention_kernel"], flush=True)
    for variant in ("linear", "linear+attention"):
        attn = fp8_modes(net, variant, kernel, bf16_attention)
        fns = our_step_fns(net, grid_latent, device, net.dtype, attn)[0]
        time_modes(fns, modes, f"fp8[{variant}]", result, args, timer, flops, device)
        if args.profile and variant == "linear+attention":
            result["fp8"]["profile"] = profile_shares(fns[modes[-1]], device)
            print("fp8 profile shares:", result["fp8"]["profile"]["share"], flush=True)
    bf16 = min(v["step_s"] for k, v in result["ours"].items() if k.startswith("ours[") for v in v.values())
    for variant in ("linear", "linear+attention"):
        best = min(v["step_s"] for v in result["ours"][f"fp8[{variant}]"].values())
        result["fp8"][f"{variant}_vs_bf16"] = round(best / bf16, 3)
        print(f"fp8[{variant}] best step {best:.3f} s = {best / bf16:.3f}x the best bf16 step", flush=True)
    if args.fp8_quality_steps:
        grid = SHAPES_CHECK.get(args.model, SHAPES[args.model])
        result["fp8"]["quality"] = [
            fp8_quality(net, cfg, device, args.fp8_quality_steps, grid, v, kernel, bf16_attention)
            for v in ("linear", "linear+attention")
        ]
        save_partial(result, args)
        for q in result["fp8"]["quality"]:
            print(f"fp8[{q['variant']}] quality: per-step rel err median {q['per_step_rel_err_median']} max "
                  f"{q['per_step_rel_err_max']}, final latent rel err {q['final_latent_rel_err']}", flush=True)
    fp8_modes(net, "bf16")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="7b", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--modes", default="sequential,batched")
    ap.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
    ap.add_argument("--diffusers", action="store_true", help="also time diffusers' CosmosTransformer3DModel")
    ap.add_argument("--profile", action="store_true", help="profiler shares of attention / matmul / other")
    ap.add_argument("--attention", default="auto",
                    help="local (BF16) self-attention kernel(s), comma-separated: auto (fa3 where installed, else sdpa), "
                         "sdpa, cudnn, flash, efficient, fa3; FP8 linears without FP8 attention use the last")
    ap.add_argument("--write-checkpoint", help="first write a random real-format model.pt here (timed)")
    ap.add_argument("--checkpoint", help="load the network from this model.pt / .safetensors (timed) instead of random init")
    ap.add_argument("--check", action="store_true", help="compare one bf16 forward with a float32 eager forward at a reduced latent")
    ap.add_argument("--fp8", action="store_true", help="also time FP8 linears and FP8 linears + FP8 attention (precision=fp8)")
    ap.add_argument("--fp8-linear-kernel", default="auto", choices=FP8_LINEAR_KERNELS,
                    help="FP8 linear kernel (precision.fp8_linear_kernel): cublas (torch._scaled_mm), te "
                         "(Transformer Engine); auto = cublas")
    ap.add_argument("--fp8-attention-kernel", default="auto", choices=FP8_ATTENTION_KERNELS,
                    help="FP8 self-attention kernel (precision.fp8_attention_kernel); auto = cudnn where installed, "
                         "else fa3, else triton")
    ap.add_argument("--fp8-quality-steps", type=int, default=0,
                    help="with --fp8: run this many sampling steps at a reduced latent for the FP8 quality figures")
    ap.add_argument("--output", help="write the results as JSON here")
    args = ap.parse_args(argv)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cfg = get_preset(f"{args.model}_text2world")
    grid_latent = SHAPES[args.model]
    grid_tokens = grid_latent[0] * (grid_latent[1] // 2) * (grid_latent[2] // 2)
    flops = model_flops(cfg, grid_tokens)
    timer = Timer(device)
    modes = [m for m in args.modes.split(",") if m]
    started = time.perf_counter()
    result = {
        "date": _dt.date.today().isoformat(),
        "command": " ".join(["python", "tools/benchmark.py", *(argv if argv is not None else sys.argv[1:])]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": args.model,
        "dtype": args.dtype,
        "latent": [cfg.latent_channels, *grid_latent],
        "tokens": grid_tokens,
        "flops_per_forward": flops,
        "ours": {},
    }
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)

    with torch.no_grad():
        if args.write_checkpoint:
            from cosmos_dist.checkpoint import write_random_checkpoint

            t0 = time.perf_counter()
            info = write_random_checkpoint(args.write_checkpoint, cfg, dtype=torch.bfloat16)
            result["write_checkpoint"] = {"s": round(time.perf_counter() - t0, 1), **{k: v for k, v in info.items() if k != "path"}}
            print("wrote checkpoint:", result["write_checkpoint"], flush=True)
            args.checkpoint = args.checkpoint or args.write_checkpoint
        t0 = time.perf_counter()
        if args.checkpoint:
            from cosmos_dist.checkpoint import load_dit

            net = load_dit(args.checkpoint, cfg=cfg, device=device, dtype=dtype)
            if device.type == "cuda":
                torch.cuda.synchronize()
            result["ours"]["load_s"] = round(time.perf_counter() - t0, 2)
            print(f"loaded {args.checkpoint} in {result['ours']['load_s']} s", flush=True)
        else:
            net = build_dit(cfg, device=device, dtype=dtype)
            result["ours"]["build_s"] = round(time.perf_counter() - t0, 2)
        if args.check:
            result["ours"]["check"] = reference_check(net, cfg, device, dtype)
            print("bf16 vs fp32 eager:", result["ours"]["check"], flush=True)
        if args.compile:
            # FP8 variants and the reduced quality latent each compile their own graphs.
            torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
            from cosmos_dist.pipeline.plan import compile_blocks

            compile_blocks(net)  # as the pipeline does (precision.compile); FP8 recompiles below
        from cosmos_dist.attention import get_local_attention
        from cosmos_dist.attention.local import resolve_attention_kernel

        result["attention_kernels"] = []
        for backend in args.attention.split(","):
            backend = resolve_attention_kernel(backend, device)
            result["attention_kernels"].append(backend)
            bf16_attention = get_local_attention(backend)
            fns = our_step_fns(net, grid_latent, device, dtype, bf16_attention)[0]
            time_modes(fns, modes, f"ours[{backend}]", result, args, timer, flops, device)
        if args.profile:
            result["ours"]["profile"] = profile_shares(fns[modes[0]], device)
            print("ours profile shares:", result["ours"]["profile"]["share"], flush=True)
        if args.fp8:
            run_fp8(net, cfg, grid_latent, modes, result, args, timer, flops, device, bf16_attention)
        del net, fns
        # Compiled graphs keep the network's tensors alive; drop them before diffusers' model comes in.
        import gc

        torch._dynamo.reset()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if args.diffusers:
            model, dfns = diffusers_step_fns(cfg, grid_latent, device, dtype)
            result["diffusers"] = {}
            for mode in modes:
                times = timer(dfns[mode], args.reps, args.warmup)
                med = statistics.median(times)
                result["diffusers"][mode] = {"step_s": round(med, 4), "times_s": [round(t, 4) for t in times]}
                entry = result["diffusers"][mode]
                # BF16 against BF16 (ours[...] entries), and FP8 against diffusers' BF16 separately.
                for label, prefix in (("ours_speedup", "ours["), ("ours_fp8_speedup", "fp8[")):
                    times = [v[mode]["step_s"] for k, v in result["ours"].items() if k.startswith(prefix) and mode in v]
                    if times:
                        entry[label] = round(med / min(times), 3)
                print(f"diffusers {mode:10s} {med:8.3f} s/step  (ours bf16 {entry['ours_speedup']:.2f}x faster"
                      + (f", fp8 {entry['ours_fp8_speedup']:.2f}x" if "ours_fp8_speedup" in entry else "") + ")", flush=True)
                save_partial(result, args)
            del model, dfns

    result["wall_s"] = round(time.perf_counter() - started, 1)  # the whole run: builds, compiles, every timing
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("ours", "diffusers")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
