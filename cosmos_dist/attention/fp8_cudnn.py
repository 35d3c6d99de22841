"""FP8 (e4m3) self-attention through cuDNN's fused FP8 attention, via the cuDNN frontend's Python API.

cuDNN ships an FP8 flash-attention forward for Hopper (the kernel Transformer Engine uses for
`fp8_dpa`). PyTorch does not expose it, so this module builds the cuDNN graph itself with the
`nvidia-cudnn-frontend` package (an optional extra, a small wheel; the cuDNN library it drives is the
one PyTorch already loaded). Without that package FP8 attention runs the Triton kernel
(cosmos_dist.attention.fp8_triton); where cuDNN rejects a shape, the same quantised inputs go to the Triton kernel (logged once per shape).

Numerics (bshd in, bshd out, no mask, softmax scale 1/sqrt(D)):
* q, k and v are quantised to e4m3 with ONE scale per tensor (cuDNN's FP8 graph takes scalar
  scales), amax / 448 -- unlike the Triton kernel's per-(batch, head) scales;
* S = q k^T and P V on FP8 tensor cores, fp32 softmax; P is scaled by 256 before its e4m3 cast and
  the factor divided out (cuDNN's scale_s / descale_s);
* the output is e4m3, stored as o / descale_v (|o| <= max|v|: o is a convex combination of v's rows),
  and dequantised outside the op so torch.compile fuses that into the next operation (cuDNN 9.19 on
  Hopper builds FP8 attention with an e4m3 output only; a bf16 output is refused);
* the log-sum-exp per query (cuDNN's softmax stats, natural log) is returned for ring attention.
"""
from __future__ import annotations

import functools
import logging
import math
import threading

import torch

from cosmos_dist.kernels.fp8_numerics import E4M3, E4M3_MAX, quantize_e4m3

P_SCALE = 256.0

# uids of the graph's tensors (the variant pack is keyed by them)
_Q, _K, _V, _O, _STATS, _DQ, _DK, _DV, _DS, _SS, _SO, _AMAX_S, _AMAX_O = range(1, 14)

_lock = threading.Lock()
_handles: dict[int, object] = {}
_graphs: dict[tuple, object] = {}
_unsupported: set[tuple] = set()
log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def frontend():
    """The cudnn frontend module, or None where it is not installed or cannot load cuDNN."""
    try:
        import cudnn  # nvidia-cudnn-frontend
    except Exception:  # ImportError, or its loader failing to find libcudnn
        return None
    return cudnn


def available(device: torch.device) -> bool:
    return (device.type == "cuda" and torch.cuda.is_available()
            and torch.cuda.get_device_capability(device) >= (9, 0) and frontend() is not None)


def _handle(cudnn, index: int):
    with _lock:
        if index not in _handles:
            with torch.cuda.device(index):
                _handles[index] = cudnn.create_handle()
        return _handles[index]


def _bhsd(shape, stride) -> tuple[list[int], list[int]]:
    """A (B, L, H, D) tensor's shape and strides as cuDNN's (B, H, L, D) dims and strides (BSHD layout)."""
    return [shape[0], shape[2], shape[1], shape[3]], [stride[0], stride[2], stride[1], stride[3]]


def _contiguous_strides(shape) -> tuple[int, ...]:
    return torch.empty(shape, device="meta").stride()


def _build_graph(cudnn, handle, key):
    _, q_shape, q_stride, k_shape, k_stride, v_stride = key
    b, lq, h, d = q_shape
    dt = cudnn.data_type
    g = cudnn.pygraph(io_data_type=dt.FP8_E4M3, intermediate_data_type=dt.FLOAT, compute_data_type=dt.FLOAT,
                      handle=handle)

    def tensor(uid, shape, stride):
        dims, strides = _bhsd(shape, stride)
        return g.tensor(uid=uid, dim=dims, stride=strides, data_type=dt.FP8_E4M3)

    def scalar(uid):
        return g.tensor(uid=uid, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=dt.FLOAT)

    o, stats, amax_s, amax_o = g.sdpa_fp8(
        q=tensor(_Q, q_shape, q_stride), k=tensor(_K, k_shape, k_stride), v=tensor(_V, k_shape, v_stride),
        descale_q=scalar(_DQ), descale_k=scalar(_DK), descale_v=scalar(_DV),
        descale_s=scalar(_DS), scale_s=scalar(_SS), scale_o=scalar(_SO),
        generate_stats=True, attn_scale=1.0 / math.sqrt(d), use_causal_mask=False, use_padding_mask=False,
    )
    o_dims, o_strides = _bhsd(q_shape, _contiguous_strides(q_shape))
    o.set_uid(_O).set_output(True).set_dim(o_dims).set_stride(o_strides).set_data_type(dt.FP8_E4M3)
    stats.set_uid(_STATS).set_output(True).set_dim([b, h, lq, 1]).set_stride([h * lq, lq, 1, 1]).set_data_type(dt.FLOAT)
    for t, uid in ((amax_s, _AMAX_S), (amax_o, _AMAX_O)):
        t.set_uid(uid).set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(dt.FLOAT)
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans()
    return g


def _key(q8, k8, v8) -> tuple:
    index = q8.device.index if q8.device.index is not None else torch.cuda.current_device()
    return (index, tuple(q8.shape), tuple(q8.stride()), tuple(k8.shape), tuple(k8.stride()), tuple(v8.stride()))


def _graph(key):
    """The built graph for `key` (shapes and strides only: also callable while torch.compile traces with fake
    tensors), or None where cuDNN rejects it (GPU, cuDNN version, shape)."""
    with _lock:
        if key in _unsupported:
            return None
        g = _graphs.get(key)
    if g is None:
        cudnn = frontend()
        try:
            g = _build_graph(cudnn, _handle(cudnn, key[0]), key)
        except Exception as exc:
            with _lock:
                _unsupported.add(key)
            log.warning("cuDNN has no FP8 attention for shape %s (cuDNN %s: %s); using the Triton kernel",
                        key[1], cudnn.backend_version(), str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            return None
        with _lock:
            _graphs[key] = g
    return g


@torch.library.custom_op("cosmos_dist::cudnn_fp8_attention_fwd", mutates_args=())
def _cudnn_fp8_attention_op(
    q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 (B, L, H, D) q8/k8/v8 and their float32 (1,) descales -> o (B, Lq, H, D) in e4m3, stored as
    o / descale_v (|o| <= max|v|, so it fits), and the LSE (B, H, Lq) float32."""
    key = _key(q8, k8, v8)
    g = _graph(key)
    if g is None:  # cuDNN rejects this configuration: the Triton kernel, its output stored the same way
        from cosmos_dist.attention.fp8_triton import launch

        b, _, h, _ = q8.shape
        vt8 = v8.permute(0, 2, 3, 1).contiguous()  # (B, H, D, L), as the Triton kernel wants v
        out, lse = launch(q8, k8, vt8, dq.expand(b, h), dk.expand(b, h), dv.expand(b, h), torch.bfloat16)
        return (out.float() / dv).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), lse
    cudnn = frontend()
    handle = _handle(cudnn, key[0])
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(q8.device).cuda_stream)
    b, lq, h, _ = q8.shape
    out = torch.empty(q8.shape, device=q8.device, dtype=E4M3)
    stats = torch.empty((b, h, lq), device=q8.device, dtype=torch.float32)
    one = torch.ones(1, device=q8.device)
    pack = {
        _Q: q8, _K: k8, _V: v8, _O: out, _STATS: stats, _DQ: dq, _DK: dk, _DV: dv, _SO: 1.0 / dv,
        _DS: one / P_SCALE, _SS: one * P_SCALE, _AMAX_S: torch.empty(1, device=q8.device),
        _AMAX_O: torch.empty(1, device=q8.device),
    }
    workspace = torch.empty(g.get_workspace_size(), device=q8.device, dtype=torch.uint8)
    g.execute(pack, workspace, handle=handle)
    return out, stats


@_cudnn_fp8_attention_op.register_fake
def _(q8, k8, v8, dq, dk, dv):
    b, lq, h, _ = q8.shape
    return torch.empty_like(q8, memory_format=torch.contiguous_format), q8.new_empty((b, h, lq), dtype=torch.float32)


def quantize_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x -> e4m3 with one scale for the whole tensor, and that scale (amax / 448) as a float32 (1,) tensor."""
    q, descale = quantize_e4m3(x, tuple(range(x.dim())))
    return q, descale.reshape(1)


def cudnn_fp8_attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """(B, L, H, D) bf16 q, k, v -> out (B, Lq, H, D) in q's dtype and LSE (B, H, Lq) float32, through cuDNN's
    FP8 attention (where cuDNN rejects the shape, the Triton kernel on the same quantised inputs)."""
    q8, dq = quantize_tensor(q)
    k8, dk = quantize_tensor(k)
    v8, dv = quantize_tensor(v)
    o8, lse = _cudnn_fp8_attention_op(q8, k8, v8, dq, dk, dv)
    # Dequantised outside the op, so torch.compile fuses it into what reads the output next.
    return (o8.float() * dv).to(q.dtype), lse
