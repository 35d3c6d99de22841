#!/usr/bin/env python
"""Check the local attention kernels behind context parallelism, in one process.

At the full 7B self-attention shape (B=1, L=56320 = 16x44x80 tokens, H=32, D=128, bf16 on CUDA)
this compares, against torch.nn.functional.scaled_dot_product_attention:

- `attention_with_lse` (the kernel ring attention uses, which also returns the log-sum-exp);
- the ring merge: K/V split into 2 and 4 blocks, one `attention_with_lse` per block, partial
  outputs merged by log-sum-exp in float32 (what each rank does over a ring of 2 / 4);
- the ulysses head split: attention for H/n heads at a time over the whole sequence (what each
  rank does after the all-to-all), n = 2, 4, 8, results concatenated;
- on CUDA, the other kernels the pipeline can pick: FlashAttention-3 BF16 (`fa3`, where an FA3 build is
  installed) and the FP8 kernels `fp8[cudnn]`, `fp8[fa3]`, `fp8[triton]`, timed with their quantisation.

It prints relative errors (||x - sdpa|| / ||sdpa||, and against a float32 reference on a subset of
queries), the median time over several repeats after warm-up (CUDA events on the GPU), and
TFLOP/s counted as 4*B*H*L*L*D per full attention; and writes everything as JSON to --output.

    python tools/check_attention_kernels.py --output results/attention_kernels.json
    python tools/check_attention_kernels.py --small --output /tmp/k.json   # CPU, seconds
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmos_dist.parallel.context_parallel import merge_partial  # noqa: E402
from cosmos_dist.attention.local import attention_with_lse, sdpa_attention  # noqa: E402
from cosmos_dist.parallel.sharding import token_ranges  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, help="JSON file to write")
    p.add_argument("--small", action="store_true", help="tiny CPU-friendly shape (for tests)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=56320)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--ring", type=int, nargs="*", default=[2, 4], help="ring sizes to simulate")
    p.add_argument("--ulysses", type=int, nargs="*", default=[2, 4, 8], help="ulysses sizes to simulate")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--ref-queries", type=int, default=256, help="queries checked against a float32 reference")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.small:
        args.seq_len, args.heads, args.head_dim = 301, 4, 32
        args.warmup, args.repeats = 1, 3
        args.ulysses = [n for n in args.ulysses if args.heads % n == 0]
        args.device = args.device or "cpu"
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.dtype = DTYPES[args.dtype or ("bf16" if args.device.type == "cuda" else "fp32")]
    return args


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def timed(fn: Callable, device: torch.device, warmup: int, repeats: int) -> tuple[object, list[float]]:
    """Run fn warmup + repeats times; returns the last result and the times in ms."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            result = fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return result, times


def ring_merge(q, k, v, n: int) -> torch.Tensor:
    out = lse = None
    for s, e in token_ranges(k.shape[1], n):
        out, lse = merge_partial(out, lse, *attention_with_lse(q, k[:, s:e], v[:, s:e]))
    return out.to(q.dtype)


def ulysses_split(q, k, v, n: int) -> torch.Tensor:
    h = q.shape[2] // n
    outs = [sdpa_attention(q[:, :, i * h : (i + 1) * h], k[:, :, i * h : (i + 1) * h], v[:, :, i * h : (i + 1) * h]) for i in range(n)]
    return torch.cat(outs, dim=2)


def fp32_reference(q, k, v, nq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact float32 attention output and LSE for the first nq queries (B, nq, H, D), (B, H, nq)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    qf = q[:, :nq].transpose(1, 2).float()
    kf, vf = k.transpose(1, 2).float(), v.transpose(1, 2).float()
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.softmax(scores, dim=-1), vf)
    return out.transpose(1, 2), lse


def other_kernels(dev: torch.device) -> list[tuple[str, Callable]]:
    """(name, kernel returning (out, lse)): FA3 BF16 and the FP8 kernels, where CUDA is."""
    if dev.type != "cuda":
        return []
    from functools import partial

    from cosmos_dist.attention.fa3 import fa3_attention_with_lse
    from cosmos_dist.attention.fp8 import fp8_attention_with_lse

    return [("fa3", fa3_attention_with_lse)] + [
        (f"fp8[{kernel}]", partial(fp8_attention_with_lse, kernel=kernel)) for kernel in ("cudnn", "fa3", "triton")
    ]


def main(argv=None) -> dict:
    args = parse_args(argv)
    dev, dtype = args.device, args.dtype
    b, l, h, d = args.batch, args.seq_len, args.heads, args.head_dim
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    q, k, v = (torch.randn(b, l, h, d, generator=gen).to(dev, dtype) for _ in range(3))
    flops = 4.0 * b * h * l * l * d
    nq = min(args.ref_queries, l)

    torch.set_grad_enabled(False)
    ref_out, ref_lse = fp32_reference(q, k, v, nq)
    results = []

    def record(name: str, out: torch.Tensor, times: list[float], sdpa_out: torch.Tensor | None, extra=None):
        med = statistics.median(times)
        row = {
            "name": name,
            "rel_err_vs_sdpa": None if sdpa_out is None else rel_err(out, sdpa_out),
            "rel_err_vs_fp32_subset": rel_err(out[:, :nq], ref_out),
            "median_ms": med,
            "times_ms": times,
            "tflops": flops / (med * 1e-3) / 1e12 if med > 0 else None,
        }
        row.update(extra or {})
        results.append(row)
        err = "-" if row["rel_err_vs_sdpa"] is None else f"{row['rel_err_vs_sdpa']:.3e}"
        print(
            f"{name:<28} rel_err_vs_sdpa {err:>10}  vs_fp32 {row['rel_err_vs_fp32_subset']:.3e}  "
            f"median {med:9.3f} ms  {row['tflops']:8.2f} TFLOP/s",
            flush=True,
        )

    # Reference: F.scaled_dot_product_attention on (B, H, L, D), whichever backend torch picks.
    qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    sdpa_bhld, times = timed(lambda: F.scaled_dot_product_attention(qt, kt, vt), dev, args.warmup, args.repeats)
    sdpa_out = sdpa_bhld.transpose(1, 2)
    record("sdpa (reference)", sdpa_out, times, None)
    del qt, kt, vt

    if dev.type == "cuda":  # each backend on its own, where it runs for this shape and dtype
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            try:
                with sdpa_kernel([backend]):
                    out, times = timed(lambda: sdpa_attention(q, k, v), dev, args.warmup, args.repeats)
            except RuntimeError as exc:
                results.append({"name": f"sdpa[{backend.name}]", "error": str(exc).splitlines()[0]})
                print(f"sdpa[{backend.name}] unavailable: {str(exc).splitlines()[0]}", flush=True)
                continue
            record(f"sdpa[{backend.name}]", out, times, sdpa_out)
            del out

    (out, lse), times = timed(lambda: attention_with_lse(q, k, v), dev, args.warmup, args.repeats)
    lse_err = float((lse[:, :, :nq].float() - ref_lse).abs().max())
    record("attention_with_lse", out, times, sdpa_out, {"lse_max_abs_err_vs_fp32": lse_err})
    del out, lse

    # The other local kernels the pipeline can pick (precision.attention_kernel, fp8_attention_kernel), each
    # with its LSE, FP8 ones including their quantisation of q/k/v; those that cannot run here are listed.
    for name, fn in other_kernels(dev):
        try:
            (out, lse), times = timed(lambda: fn(q, k, v), dev, args.warmup, args.repeats)
        except (RuntimeError, ValueError) as exc:
            results.append({"name": name, "error": str(exc).splitlines()[0]})
            print(f"{name} unavailable: {str(exc).splitlines()[0]}", flush=True)
            continue
        lse_err = float((lse[:, :, :nq].float() - ref_lse).abs().max())
        record(name, out, times, sdpa_out, {"lse_max_abs_err_vs_fp32": lse_err})
        del out, lse

    for n in args.ring:
        out, times = timed(lambda: ring_merge(q, k, v, n), dev, args.warmup, args.repeats)
        record(f"ring_merge[{n} blocks]", out, times, sdpa_out, {"blocks": n})
        del out

    for n in args.ulysses:
        if h % n:
            continue
        out, times = timed(lambda: ulysses_split(q, k, v, n), dev, args.warmup, args.repeats)
        record(f"ulysses_split[{n} groups]", out, times, sdpa_out, {"groups": n, "per_rank_ms": statistics.median(times) / n})
        del out

    report = {
        "shape": {"batch": b, "seq_len": l, "heads": h, "head_dim": d},
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "flops_per_attention": flops,
        "ref_queries": nq,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "results": results,
    }
    out_path = Path(args.output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2))
    print(f"wrote {out_path}")
    return report


if __name__ == "__main__":
    main()
