"""The e4m3 format and its quantiser: one scale (amax / 448) per slice. Every FP8 path of the toolkit
(linears per row, attention per (batch, head) or per tensor) quantises through `quantize_e4m3`."""
from __future__ import annotations

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
# Smallest scale used: an all-zero row would otherwise divide by zero.
_MIN_AMAX = 1e-12


def quantize_e4m3(x: torch.Tensor, dims) -> tuple[torch.Tensor, torch.Tensor]:
    """x -> e4m3 and float32 scales with x ~= q * scale: one scale (amax / 448) per slice over `dims`, which stay
    in the scale's shape as size 1. Every FP8 path here quantises through this (rows, heads, whole tensors)."""
    amax = x.abs().amax(dim=dims, keepdim=True).float().clamp_min(_MIN_AMAX)
    scale = amax / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> e4m3 (M, K) and float32 scales (M, 1) with x ~= q * scale, one scale per row."""
    return quantize_e4m3(x, -1)


def quantize_heads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, H, D) -> e4m3 (B, L, H, D) and float32 scales (B, H), one per (batch, head)."""
    q, scale = quantize_e4m3(x, (1, 3))
    return q, scale[:, 0, :, 0]
