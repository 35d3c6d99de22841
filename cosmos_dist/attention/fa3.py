"""FlashAttention-3 (Hopper) for local attention, BF16 and FP8, where an FA3 build is installed.

FA3 is not on PyPI as the upstream project publishes it: it is built from flash-attention's `hopper/`
directory (module `flash_attn_3._C`, ops under `torch.ops.flash_attn_3`) or installed as the
forward-only wheel `fa3-fwd` (module `fa3_fwd._C`, ops under `torch.ops.fa3_fwd`; the optional
extra `cosmos-dist[fa3]`, built on PyTorch's stable ABI, so one wheel serves several torch versions).
Both register a `fwd` operator with the same schema; it is called by keyword. Without either build,
nothing here is used.

Why: on an H100 at the 7B self-attention shape (56,320 tokens, 32 heads of 128) FA3's BF16 kernel
runs at ~730 TFLOP/s, batch 1 or 2, where cuDNN's SDPA gives 616-644: a 7B guided step goes from 7.1 to
6.5 s. Its FP8 kernel matches cuDNN's (~950 TFLOP/s) while taking one scale per (batch, head) and
writing a bf16 output, so no e4m3 output round trip (docs/PERFORMANCE.md has the measurements).

Numerics: no mask, softmax scale 1/sqrt(D); (B, L, H, D) in and out; the log-sum-exp per query
(B, H, Lq, float32, natural log) comes back for ring attention. FP8: q, k and v in e4m3 with float32
descales of shape (B, H) (amax / 448 per batch and head), output bf16.
"""
from __future__ import annotations

import functools
import importlib
import math

import torch

# (module that registers the ops, torch.ops namespace): the upstream build first, then the fa3-fwd wheel.
_BUILDS = (("flash_attn_3._C", "flash_attn_3"), ("fa3_fwd._C", "fa3_fwd"))


@functools.lru_cache(maxsize=None)
def _loaded() -> tuple[str | None, object]:
    """(namespace, FA3's forward operator), or (None, None) where no FA3 build imports."""
    for module, namespace in _BUILDS:
        try:
            importlib.import_module(module)
            return namespace, getattr(torch.ops, namespace).fwd
        except (ImportError, OSError, AttributeError, RuntimeError):
            continue
    return None, None


def _fwd_op():
    return _loaded()[1]


def build_name() -> str | None:
    """Which FA3 build is in use: "flash_attn_3" (upstream) or "fa3_fwd" (the wheel); None without one."""
    return _loaded()[0]


def available(device: torch.device) -> bool:
    """FA3 runs on Hopper (compute capability 9.x) only."""
    return (device.type == "cuda" and torch.cuda.is_available()
            and torch.cuda.get_device_capability(device)[0] == 9 and _fwd_op() is not None)


@torch.library.custom_op("cosmos_dist::fa3_fwd", mutates_args=())
def _fa3_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    q_descale: torch.Tensor | None, k_descale: torch.Tensor | None, v_descale: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, H, D) q, k, v (bf16/fp16, or e4m3 with (B, H) float32 descales) -> out (B, Lq, H, D) (bf16 for
    e4m3 inputs) and the LSE (B, H, Lq) float32. Opaque to torch.compile, which fuses what is around it."""
    op = _fwd_op()
    if op is None:
        raise RuntimeError("no FA3 build imports: pip install fa3-fwd (or cosmos-dist[fa3])")
    out, lse, *_ = op(
        q, k, v, q_descale=q_descale, k_descale=k_descale, v_descale=v_descale,
        softmax_scale=1.0 / math.sqrt(q.shape[-1]), is_causal=False,
    )
    return out, lse


@_fa3_op.register_fake
def _(q, k, v, q_descale, k_descale, v_descale):
    b, lq, h, _ = q.shape
    out_dtype = torch.bfloat16 if q.dtype == torch.float8_e4m3fn else q.dtype
    return (torch.empty(q.shape, dtype=out_dtype, device=q.device),
            torch.empty((b, h, lq), dtype=torch.float32, device=q.device))


def _contiguous_last(*ts):
    return [t if t.stride(-1) == 1 else t.contiguous() for t in ts]


def fa3_attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BF16/FP16 attention through FA3: out (B, Lq, H, D) in q's dtype and LSE (B, H, Lq) float32."""
    q, k, v = _contiguous_last(q, k, v)
    return _fa3_op(q, k, v, None, None, None)


def fa3_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return fa3_attention_with_lse(q, k, v)[0]


def fa3_fp8_attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 attention through FA3: q, k, v quantised to e4m3 with one scale per (batch, head); out in q's dtype."""
    from cosmos_dist.kernels.fp8_numerics import quantize_heads

    q8, qs = quantize_heads(q)
    k8, ks = quantize_heads(k)
    v8, vs = quantize_heads(v)
    out, lse = _fa3_op(q8, k8, v8, qs, ks, vs)
    return out.to(q.dtype), lse
