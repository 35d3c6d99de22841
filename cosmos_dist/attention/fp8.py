"""FP8 (e4m3) self-attention for `precision=fp8`: which kernel runs it, and the calls the model uses.

The kernels: cuDNN's fused FP8 attention (cosmos_dist.attention.fp8_cudnn), FlashAttention-3's FP8 kernel
(cosmos_dist.attention.fa3), this project's Triton kernel (cosmos_dist.attention.fp8_triton, also the float32
stand-in where there is no FP8 GPU) and Transformer Engine's (cosmos_dist.attention.fp8_te).
"""
from __future__ import annotations

import torch

from cosmos_dist.attention import fp8_triton
from cosmos_dist.kernels import te as te_support

#: Which FP8 attention kernel runs on CUDA: "cudnn" (cuDNN's fused FP8 attention through the cuDNN frontend,
#: cosmos_dist.attention.fp8_cudnn), "fa3" (FlashAttention-3's FP8 kernel, cosmos_dist.attention.fa3), "triton"
#: (cosmos_dist.attention.fp8_triton), "auto" = cudnn where the frontend is installed, else fa3 where an FA3 build is, else
#: triton. cuDNN and FA3 run at the same speed on an H100 (~950 TFLOP/s at the 7B shape); FA3 takes one scale
#: per (batch, head) and writes bf16, cuDNN one scale per tensor and e4m3. precision.fp8_attention_kernel.
#: "te": Transformer Engine's DotProductAttention in FP8 (cosmos_dist.attention.fp8_te; no LSE, so not under
#: ring / usp; never picked by auto).
from cosmos_dist.choices import FP8_ATTENTION_KERNELS as KERNELS  # noqa: E402  (the one list)


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """The kernel that `kernel` means on `device`: "cudnn", "fa3", "triton", "te" or "emulated" (no CUDA: float32
    stand-in)."""
    if kernel not in KERNELS:
        raise ValueError(f"FP8 attention kernel must be one of {KERNELS}; got {kernel!r}")
    if kernel == "te":
        te_support.require_attention(device)  # TE has an FP8 attention backend for this GPU and install
        return "te"
    if not fp8_triton.triton_available(device):
        if kernel in ("cudnn", "fa3") and device.type == "cuda":
            raise RuntimeError(f"fp8_attention_kernel={kernel} needs an FP8-capable GPU (Hopper or newer)")
        return "emulated"
    from cosmos_dist.attention import fa3, fp8_cudnn

    if kernel == "cudnn" and not fp8_cudnn.available(device):
        raise RuntimeError("fp8_attention_kernel=cudnn needs the cuDNN frontend: pip install nvidia-cudnn-frontend "
                           "(or cosmos-dist[fp8]); or set precision.fp8_attention_kernel=triton")
    if kernel == "fa3" and not fa3.available(device):
        raise RuntimeError("fp8_attention_kernel=fa3 needs an FA3 build on a Hopper GPU: pip install fa3-fwd "
                           "(or cosmos-dist[fa3]); or set precision.fp8_attention_kernel=triton")
    if kernel == "auto":
        return "cudnn" if fp8_cudnn.available(device) else "fa3" if fa3.available(device) else "triton"
    return kernel


def fp8_attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           kernel: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 attention, (B, L, H, D) in and out, plus the LSE (B, H, Lq) in float32."""
    if kernel == "te":  # (never what auto resolves to)
        from cosmos_dist.attention.fp8_te import te_fp8_attention_with_lse

        return te_fp8_attention_with_lse(q, k, v)
    # The pipeline passes the kernel its PrecisionPlan resolved (possibly "emulated"); direct callers may pass a
    # setting ("auto", ...), resolved here.
    which = kernel if kernel == "emulated" else resolve_kernel(kernel, q.device)
    if which == "cudnn":
        from cosmos_dist.attention.fp8_cudnn import cudnn_fp8_attention_with_lse

        return cudnn_fp8_attention_with_lse(q, k, v)
    if which == "fa3":
        from cosmos_dist.attention.fa3 import fa3_fp8_attention_with_lse

        return fa3_fp8_attention_with_lse(q, k, v)
    if which == "triton":
        return fp8_triton.fp8_attention_triton(q, k, v)
    return fp8_triton.fp8_attention_reference(q, k, v)


def fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: str = "auto") -> torch.Tensor:
    if kernel == "te":
        from cosmos_dist.attention.fp8_te import te_fp8_attention

        return te_fp8_attention(q, k, v)
    return fp8_attention_with_lse(q, k, v, kernel)[0]
