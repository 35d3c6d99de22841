#!/usr/bin/env python
"""Time the Triton FP8 attention kernel's tile configurations at the 7B self-attention shape, beside
cuDNN BF16 attention and cuDNN's FP8 attention (with the cuDNN frontend installed), and check each
against a float32 reference on a subset of queries.

    python tools/tune_fp8_attention.py --output fp8_attention.json       # one CUDA GPU (sm_89+)

The configuration the pipeline uses is `cosmos_dist.attention.fp8.DEFAULT_CONFIG`; this tool is how it
was chosen. TFLOP/s counts 4*B*H*L*L*D per attention.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cosmos_dist.attention import fp8_triton  # noqa: E402
from cosmos_dist.attention.fp8 import fp8_attention  # noqa: E402
from cosmos_dist.kernels.fp8_numerics import quantize_heads  # noqa: E402
from cosmos_dist.attention.local import get_local_attention  # noqa: E402
from benchmark import Timer  # noqa: E402  (tools/benchmark.py)

CONFIGS = [  # (block_m, block_n, num_warps, num_stages, warp_specialize)
    (128, 128, 8, 3, False), (128, 128, 8, 4, False), (128, 128, 4, 3, False), (128, 64, 4, 3, False),
    (128, 64, 4, 4, False), (128, 128, 8, 3, True),
]


def timed(fn, reps: int = 5) -> float:
    """Median seconds of `fn` over `reps` runs after one warm-up, from CUDA events (benchmark.py's timer)."""
    return statistics.median(Timer(torch.device("cuda"))(fn, reps, 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=56320)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--ref-queries", type=int, default=512)
    ap.add_argument("--output")
    args = ap.parse_args(argv)
    if not fp8_triton.triton_available(torch.device("cuda")):
        print("needs a CUDA GPU with FP8 tensor cores and Triton", file=sys.stderr)
        return 2
    b, l, h, d = 1, args.seq_len, args.heads, args.head_dim
    g = torch.Generator(device="cuda").manual_seed(0)
    # RMS-normalised q and k (as the DiT's per-head RMSNorm makes them), v normal.
    q = torch.nn.functional.normalize(torch.randn(b, l, h, d, device="cuda", generator=g), dim=-1) * math.sqrt(d)
    k = torch.nn.functional.normalize(torch.randn(b, l, h, d, device="cuda", generator=g), dim=-1) * math.sqrt(d)
    v = torch.randn(b, l, h, d, device="cuda", generator=g)
    q, k, v = (t.bfloat16() for t in (q, k, v))
    flops = 4 * b * h * l * l * d
    nq = args.ref_queries
    ref = torch.nn.functional.scaled_dot_product_attention(
        q[:, :nq].transpose(1, 2).float(), k.transpose(1, 2).float(), v.transpose(1, 2).float()
    ).transpose(1, 2)

    def err(out):
        return float((out[:, :nq].float() - ref).norm() / ref.norm())

    result = {"shape": [b, l, h, d], "device": torch.cuda.get_device_name(), "torch": torch.__version__, "kernels": {}}
    cudnn = get_local_attention("cudnn")
    t = timed(lambda: cudnn(q, k, v))
    result["kernels"]["cudnn_bf16"] = {"ms": round(t * 1e3, 2), "tflops": round(flops / t / 1e12, 1), "rel_err": round(err(cudnn(q, k, v)), 5)}
    print("cudnn bf16", result["kernels"]["cudnn_bf16"], flush=True)
    q8, qs = quantize_heads(q)
    k8, ks = quantize_heads(k)
    v8, vs = quantize_heads(v)
    vt8 = v8.permute(0, 2, 3, 1).contiguous()
    t = timed(lambda: [quantize_heads(x) for x in (q, k, v)])
    result["quantize_eager_ms"] = round(t * 1e3, 2)
    for cfg in CONFIGS:
        name = "fp8_bm{}_bn{}_w{}_s{}_ws{}".format(*cfg)
        try:
            fn = lambda: fp8_triton.launch(q8, k8, vt8, qs, ks, vs, torch.bfloat16, *cfg)  # noqa: E731
            t = timed(fn)
            out, _ = fn()
            entry = {"ms": round(t * 1e3, 2), "tflops": round(flops / t / 1e12, 1), "rel_err": round(err(out), 5)}
        except Exception as e:  # a configuration may not fit in shared memory
            entry = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        result["kernels"][name] = entry
        print(name, entry, flush=True)
    # cuDNN's fused FP8 attention (precision.fp8_attention_kernel=cudnn), where the cuDNN frontend is installed
    from cosmos_dist.attention import fp8_cudnn

    if fp8_cudnn.available(q.device):
        (q8c, dq), (k8c, dk), (v8c, dv) = (fp8_cudnn.quantize_tensor(x) for x in (q, k, v))
        t = timed(lambda: fp8_cudnn._cudnn_fp8_attention_op(q8c, k8c, v8c, dq, dk, dv))
        o8, _ = fp8_cudnn._cudnn_fp8_attention_op(q8c, k8c, v8c, dq, dk, dv)
        result["kernels"]["cudnn_fp8"] = {"ms": round(t * 1e3, 2), "tflops": round(flops / t / 1e12, 1),
                                          "rel_err": round(err((o8.float() * dv).bfloat16()), 5)}
        t = timed(lambda: fp8_attention(q, k, v, kernel="cudnn"))
        result["kernels"]["cudnn_fp8_with_quantisation_eager"] = {"ms": round(t * 1e3, 2)}
        print("cudnn fp8", result["kernels"]["cudnn_fp8"], flush=True)
    else:
        result["kernels"]["cudnn_fp8"] = {"error": "nvidia-cudnn-frontend not installed (pip install -e .[fp8])"}
    out = fp8_attention(q, k, v, kernel="triton")
    result["fp8_attention_default"] = {"rel_err": round(err(out), 5), "config": list(fp8_triton.DEFAULT_CONFIG)}
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
