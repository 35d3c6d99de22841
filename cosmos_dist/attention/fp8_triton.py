"""FP8 (e4m3) self-attention for `precision=fp8`: a Triton flash-attention forward kernel.

PyTorch offers no FP8 attention (its FP8 SDPA work is unreleased). cuDNN's own FP8 attention is faster
(cosmos_dist.attention.fp8_cudnn; it needs the optional `nvidia-cudnn-frontend` package), so `auto` picks
it where installed; this kernel is what FP8 attention runs on without it.

Numerics (bshd in, bshd out, no mask, softmax scale 1/sqrt(D) as everywhere in the DiT):
* q, k and v are quantised to e4m3 with one scale per (batch, head) (amax / 448);
* S = q k^T on FP8 tensor cores, fp32 accumulation; online softmax in fp32 (base 2);
* P (in [0, 1]) is multiplied by 256 before its e4m3 cast, so probabilities down to ~2^-17 survive
  instead of flushing at e4m3's 2^-9; the factor is divided out at the end (a power of two: exact);
* P V on FP8 tensor cores; V is stored transposed (B, H, D, L) because Hopper's FP8 MMA wants the
  second operand K-major.
The log-sum-exp per query is returned too, so ring attention can merge FP8 partial results.

On a machine without Triton/CUDA `fp8_attention` falls back to the same quantisation in float32
PyTorch (exact softmax, P quantised the same way against the final row maximum): a numerical
stand-in for tests, not a fast path.
"""
from __future__ import annotations

import math

import torch

from cosmos_dist.kernels.fp8_numerics import E4M3, quantize_heads

P_SCALE = 256.0
_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


_KERNEL = None
#: (block_m, block_n, num_warps, num_stages) of the kernel; tools/tune_fp8_attention.py measures the choices.
DEFAULT_CONFIG = (128, 128, 8, 3)


def _build_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def fp8_attention_fwd_kernel(
        Q, K, VT, O, LSE, QS, KS, VS,
        sq_b, sq_l, sq_h,  # q/k strides (bshd, head_dim contiguous)
        sk_b, sk_l, sk_h,
        sv_b, sv_h, sv_d,  # v^T strides (B, H, D, L), L contiguous
        so_b, so_l, so_h,
        H, LQ, LK, sm_scale,
        D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PS: tl.constexpr,
        EVEN_N: tl.constexpr, WS: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        descale_qk = tl.load(QS + bh) * tl.load(KS + bh)
        qk_scale = sm_scale * descale_qk * 1.4426950408889634  # scores in base 2
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        q_ptrs = Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_l + offs_d[None, :]
        q = tl.load(q_ptrs, mask=offs_m[:, None] < LQ, other=0.0)
        k_base = K + b * sk_b + h * sk_h + offs_d[:, None] + offs_n[None, :] * sk_l  # (D, BLOCK_N): k^T
        v_base = VT + b * sv_b + h * sv_h + offs_d[:, None] * sv_d + offs_n[None, :]  # (D, BLOCK_N): v^T
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        for start in tl.range(0, LK, BLOCK_N, warp_specialize=WS):
            if EVEN_N:  # no tail: skip the masks (the 7B / 14B sequence lengths are multiples of 128)
                kt = tl.load(k_base + start * sk_l)
                vt = tl.load(v_base + start)
                s = tl.dot(q, kt)
            else:
                valid = (start + offs_n) < LK
                kt = tl.load(k_base + start * sk_l, mask=valid[None, :], other=0.0)
                vt = tl.load(v_base + start, mask=valid[None, :], other=0.0)
                s = tl.where(valid[None, :], tl.dot(q, kt), float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            p = tl.math.exp2(s * qk_scale - m_new[:, None])  # one FMA per score
            l_new = tl.sum(p, 1)
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + l_new
            acc = acc * alpha[:, None]
            acc = tl.dot((p * PS).to(vt.dtype), tl.trans(vt), acc)
            m_i = m_new
        descale_v = tl.load(VS + bh) / PS
        out = acc * (descale_v / l_i)[:, None]
        o_ptrs = O + b * so_b + h * so_h + offs_m[:, None] * so_l + offs_d[None, :]
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_m[:, None] < LQ)
        lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453
        tl.store(LSE + bh * LQ + offs_m, lse, mask=offs_m < LQ)

    return fp8_attention_fwd_kernel


def triton_available(device: torch.device) -> bool:
    if device.type != "cuda" or not torch.cuda.is_available() or torch.cuda.get_device_capability(device) < (8, 9):
        return False
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def launch(q8, k8, vt8, qs, ks, vs, out_dtype, block_m=None, block_n=None, num_warps=None, num_stages=None,
            warp_specialize=False):
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _build_kernel()
    dm, dn, dw, ds = DEFAULT_CONFIG
    block_m, block_n = block_m or dm, block_n or dn
    num_warps, num_stages = num_warps or dw, num_stages or ds
    b, lq, h, d = q8.shape
    lk = k8.shape[1]
    out = torch.empty(q8.shape, device=q8.device, dtype=out_dtype)
    lse = torch.empty((b, h, lq), device=q8.device, dtype=torch.float32)
    grid = (triton_cdiv(lq, block_m), b * h)
    _KERNEL[grid](
        q8, k8, vt8, out, lse, qs.contiguous(), ks.contiguous(), vs.contiguous(),
        q8.stride(0), q8.stride(1), q8.stride(2),
        k8.stride(0), k8.stride(1), k8.stride(2),
        vt8.stride(0), vt8.stride(1), vt8.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        h, lq, lk, 1.0 / math.sqrt(d),
        D=d, BLOCK_M=block_m, BLOCK_N=block_n, PS=P_SCALE, EVEN_N=lk % block_n == 0, WS=warp_specialize,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out, lse


# An opaque custom op, so torch.compile fuses the quantisation around it and leaves the kernel alone.
@torch.library.custom_op("cosmos_dist::fp8_attention_fwd", mutates_args=())
def _fp8_attention_op(
    q8: torch.Tensor, k8: torch.Tensor, vt8: torch.Tensor, qs: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    return launch(q8, k8, vt8, qs, ks, vs, out_dtype)


@_fp8_attention_op.register_fake
def _(q8, k8, vt8, qs, ks, vs, out_dtype):
    b, lq, h, _ = q8.shape
    return q8.new_empty(q8.shape, dtype=out_dtype), q8.new_empty((b, h, lq), dtype=torch.float32)


def fp8_attention_triton(q, k, v):
    d = q.shape[-1]
    if d not in (64, 128, 256):
        raise ValueError(f"the FP8 attention kernel supports head_dim 64, 128 or 256; got {d}")
    q8, qs = quantize_heads(q)
    k8, ks = quantize_heads(k)
    v8, vs = quantize_heads(v)
    vt8 = v8.permute(0, 2, 3, 1).contiguous()  # (B, H, D, L)
    return _fp8_attention_op(q8, k8, vt8, qs, ks, vs, q.dtype)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def fp8_attention_reference(q, k, v, chunk: int = 2048):
    """The kernel's quantisation in float32 PyTorch: q/k/v per-head e4m3, P scaled and cast to e4m3."""
    q8, qs = quantize_heads(q)
    k8, ks = quantize_heads(k)
    v8, vs = quantize_heads(v)
    scale = 1.0 / math.sqrt(q.shape[-1])
    qf = q8.float().transpose(1, 2) * qs[..., None, None]
    kf = k8.float().transpose(1, 2) * ks[..., None, None]
    vf = v8.float().transpose(1, 2)
    outs, lses = [], []
    for start in range(0, qf.shape[2], chunk):
        s = qf[:, :, start : start + chunk] @ kf.transpose(-1, -2) * scale
        m = s.amax(dim=-1, keepdim=True)
        p = torch.exp(s - m)
        denom = p.sum(dim=-1, keepdim=True)
        p8 = (p * P_SCALE).to(E4M3).float()
        outs.append(p8 @ vf * (vs[..., None, None] / P_SCALE) / denom)
        lses.append((m + torch.log(denom)).squeeze(-1))
    out = torch.cat(outs, dim=2).transpose(1, 2).to(q.dtype)
    return out, torch.cat(lses, dim=2)
