"""Local (single-device) attention kernels behind one small interface.

Every attention call in the DiT goes through a callable `attn(q, k, v) -> out` with tensors laid out
as (batch, tokens, heads, head_dim) -- "bshd". The DiT never knows which kernel or which process
group sits behind it; context-parallel wrappers (`cosmos_dist.parallel.context_parallel`) take the
same shapes with a sequence shard instead of the whole sequence.

The reference uses softmax scale 1/sqrt(head_dim), no mask, no dropout, for both self- and
cross-attention.
"""
from __future__ import annotations

import math
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

# Cheap to import: it loads an FA3 build only when first asked whether one is available.
from cosmos_dist.attention import fa3


class AttentionFn(Protocol):
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PyTorch scaled_dot_product_attention; (B, L, H, D) in and out."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention that also returns the log-sum-exp of the scores per (batch, head, query).

    Returns out (B, Lq, H, D) in q's dtype and lse (B, H, Lq) in float32. Ring attention merges
    partial results with it. On CUDA this uses the flash / cuDNN kernels that return the LSE; on
    the CPU it is computed in float32 in query chunks (exact softmax, bounded memory).
    """
    if q.is_cuda:
        out, lse = _cuda_attention_with_lse(q, k, v)
        if out is not None:
            return out, lse
    scale = 1.0 / math.sqrt(q.shape[-1])
    qf, kf, vf = (t.transpose(1, 2).float() for t in (q, k, v))  # (B, H, L, D)
    outs, lses = [], []
    for start in range(0, qf.shape[2], chunk):
        scores = torch.matmul(qf[:, :, start : start + chunk], kf.transpose(-1, -2)) * scale
        lse = torch.logsumexp(scores, dim=-1)
        outs.append(torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), vf))
        lses.append(lse)
    out = torch.cat(outs, dim=2).transpose(1, 2).to(q.dtype)
    return out, torch.cat(lses, dim=2)


def _cuda_attention_with_lse(q, k, v):
    """cuDNN attention (about 640 TFLOP/s on an H100 at the 7B shape, against 350 for flash
    attention 2) or flash attention through aten, both of which return the LSE; (None, None) where
    neither is available."""
    if q.dtype not in (torch.float16, torch.bfloat16):
        return None, None
    try:
        res = torch.ops.aten._scaled_dot_product_cudnn_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, True, 0.0, False, False
        )
        out, lse = res[0], res[1]
        if lse is not None and lse.numel():
            return out.transpose(1, 2), lse.float().reshape(q.shape[0], q.shape[2], q.shape[1])
    except (RuntimeError, AttributeError, TypeError):
        pass
    try:
        res = torch.ops.aten._scaled_dot_product_flash_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0.0, False, False
        )
    except (RuntimeError, AttributeError):
        return None, None
    out, lse = res[0], res[1]
    return out.transpose(1, 2), lse.float()


def _forced_sdpa(backend_name: str) -> Callable:
    """SDPA restricted to one kernel family (cuDNN attention is the fastest on Hopper at these
    sequence lengths; PyTorch's default choice may be flash attention 2)."""

    def attn(q, k, v):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([getattr(SDPBackend, backend_name)]):
            return sdpa_attention(q, k, v)

    attn.__name__ = f"sdpa_{backend_name.lower()}"
    return attn


LOCAL_BACKENDS: dict[str, Callable] = {
    "sdpa": sdpa_attention,
    "cudnn": _forced_sdpa("CUDNN_ATTENTION"),
    "flash": _forced_sdpa("FLASH_ATTENTION"),
    "efficient": _forced_sdpa("EFFICIENT_ATTENTION"),
    "math": _forced_sdpa("MATH"),
    "fa3": fa3.fa3_attention,  # FlashAttention-3 (Hopper), where an FA3 build is installed
}

#: precision.attention_kernel: the local (BF16) self-attention kernel. auto = fa3 where an FA3 build is
#: installed and the GPU is a Hopper, else sdpa (PyTorch's choice: cuDNN attention on an H100).
from cosmos_dist.choices import ATTENTION_KERNELS  # noqa: E402  (the one list; config.py validates with it)


def resolve_attention_kernel(name: str, device: torch.device) -> str:
    """The kernel `name` means on `device`; a RuntimeError (with the fix) where it cannot run there."""
    if name not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel must be one of {', '.join(ATTENTION_KERNELS)}; got {name!r}")
    if name == "auto":
        return "fa3" if fa3.available(device) else "sdpa"
    if name == "fa3" and not fa3.available(device):
        why = ("no FA3 build imports: pip install fa3-fwd (or cosmos-dist[fa3]), or build flash-attention's hopper/"
               if fa3.build_name() is None else "FA3 runs on Hopper GPUs (compute capability 9.x) only")
        raise RuntimeError(f"attention kernel fa3: {why}; or choose auto or sdpa")
    return name


def local_kernels(name: str) -> dict:
    """The self-attention callables of a resolved kernel name, as `denoiser_options` takes them: `local`
    (bshd in and out) and `lse_kernel` (also the log-sum-exp, for ring attention). {} for plain SDPA."""
    if name == "sdpa":
        return {}
    if name == "fa3":
        return {"local": fa3.fa3_attention, "lse_kernel": fa3.fa3_attention_with_lse}
    return {"local": get_local_attention(name)}


def get_local_attention(name: str = "sdpa") -> Callable:
    try:
        return LOCAL_BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(LOCAL_BACKENDS)}") from None
