"""Embeddings of the Cosmos DiT: patches, timesteps, 3D RoPE and the learnable axis embedding.

Module and parameter names follow the reference checkpoint (spec 3.7), so a real `model.pt` loads
into these modules key for key.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cosmos_dist.models.presets import DiTConfig


def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """The reference computes norms, sinusoids and RoPE in float32 for bf16 models; a float64
    model (used to pin our arithmetic in tests) keeps float64."""
    return torch.promote_types(dtype, torch.float32)


class RMSNorm(nn.Module):
    """RMSNorm as Transformer Engine computes it: float32 statistics, weight applied, input dtype out."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(_at_least_fp32(x.dtype))
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(xf.dtype)).to(x.dtype)


class PatchFlatten(nn.Module):
    """(B, C, T, H, W) -> (B, T', H', W', C*pt*ph*pw), features ordered (c, t, ph, pw) as the reference."""

    def __init__(self, patch_temporal: int, patch_spatial: int):
        super().__init__()
        self.pt, self.ps = patch_temporal, patch_spatial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return patchify(x, self.pt, self.ps)


def patchify(x: torch.Tensor, pt: int, ps: int) -> torch.Tensor:
    b, c, t, h, w = x.shape
    if t % pt or h % ps or w % ps:
        raise ValueError(f"latent (T, H, W) = {(t, h, w)} is not divisible by the patch ({pt}, {ps}, {ps})")
    x = x.reshape(b, c, t // pt, pt, h // ps, ps, w // ps, ps)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, t // pt, h // ps, w // ps, c * pt * ps * ps)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int, int], channels: int, pt: int, ps: int) -> torch.Tensor:
    """Inverse of `patchify` for tokens (B, T'*H'*W', C*pt*ps*ps) in (c, t, ph, pw) feature order."""
    b = tokens.shape[0]
    gt, gh, gw = grid
    x = tokens.reshape(b, gt, gh, gw, channels, pt, ps, ps)
    return x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, channels, gt * pt, gh * ps, gw * ps)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        # proj.0 is the reference's einops Rearrange (no parameters), proj.1 the bias-free Linear.
        self.proj = nn.Sequential(
            PatchFlatten(cfg.patch_temporal, cfg.patch_spatial),
            nn.Linear(cfg.patch_in_features, cfg.model_channels, bias=False),
        )


class Timesteps(nn.Module):
    """Sinusoidal features [cos, sin] (cos first), computed in float32, returned in the input dtype."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        wide = _at_least_fp32(t.dtype)
        exponent = -math.log(10000.0) * torch.arange(half, dtype=wide, device=t.device) / half
        angles = t.to(wide)[:, None] * torch.exp(exponent)[None, :]
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).to(t.dtype)


class TimestepEmbedding(nn.Module):
    """adaLN-LoRA timestep MLP: returns (the raw sinusoid, the 3D MLP output added to every block)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(dim, dim, bias=False)
        self.activation = nn.SiLU()
        self.linear_2 = nn.Linear(dim, 3 * dim, bias=False)

    def forward(self, sinusoid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return sinusoid, self.linear_2(self.activation(self.linear_1(sinusoid)))


class RoPE3D(nn.Module):
    """3D rotary angles for self-attention (spec 3.5).

    head_dim splits into dim_h = dim_w = head_dim // 6 * 2 and dim_t = the rest (44/42/42 for 128).
    NTK scaling: theta_axis = 10000 * ratio ** (dim_axis / (dim_axis - 2)). Temporal positions are
    scaled by base_fps / fps. The angle vector per token is [t, h, w, t, h, w] (rotate-half pairing).

    `angles(..., dtype)` reproduces the reference's arithmetic: its buffers are cast to the model
    dtype, so under bf16 the frequencies and the outer product are computed in bf16 and only then
    turned to float32. Passing float32 gives the exact angles.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        hd = cfg.head_dim
        self.dim_h = self.dim_w = hd // 6 * 2
        self.dim_t = hd - 2 * self.dim_h
        r_t, r_h, r_w = cfg.rope_extrapolation
        self.theta_t = 10000.0 * r_t ** (self.dim_t / (self.dim_t - 2))
        self.theta_h = 10000.0 * r_h ** (self.dim_h / (self.dim_h - 2))
        self.theta_w = 10000.0 * r_w ** (self.dim_w / (self.dim_w - 2))
        self.base_fps = cfg.base_fps
        self.max_h, self.max_w = cfg.pos_table_sizes[1], cfg.pos_table_sizes[2]
        # Kept only because the real checkpoint carries it (`pos_embedder.seq` = arange); values are
        # recomputed in `angles`, so a checkpoint's copy is never trusted.
        self.register_buffer("seq", torch.arange(cfg.rope_seq_len, dtype=torch.float32), persistent=True)
        self.seq_len = cfg.rope_seq_len

    def angles(
        self, grid: tuple[int, int, int], fps: torch.Tensor | float | None, dtype: torch.dtype, device
    ) -> torch.Tensor:
        """(T*H*W, head_dim) angles (float32, float64 for a float64 model) for the full (t, h, w)
        grid, t-major token order."""
        t, h, w = grid
        if h > self.max_h or w > self.max_w or max(t, h, w) > self.seq_len:
            raise ValueError(
                f"patch grid (T, H, W) = {grid} exceeds the RoPE table ({self.seq_len} positions, H/W <= "
                f"{self.max_h}/{self.max_w} patches)"
            )
        wide = _at_least_fp32(dtype)
        seq = torch.arange(self.seq_len, dtype=wide, device=device).to(dtype)

        def freqs(theta: float, dim: int) -> torch.Tensor:
            rng = (torch.arange(0, dim, 2, dtype=wide, device=device)[: dim // 2] / dim).to(dtype)
            return 1.0 / (theta**rng)

        pos_t = seq[:t]
        if fps is not None:
            fps_t = torch.as_tensor(fps, device=device).reshape(-1)[:1].to(dtype)
            pos_t = pos_t / fps_t * self.base_fps
        half_t = torch.outer(pos_t, freqs(self.theta_t, self.dim_t))
        half_h = torch.outer(seq[:h], freqs(self.theta_h, self.dim_h))
        half_w = torch.outer(seq[:w], freqs(self.theta_w, self.dim_w))
        emb = torch.cat(
            [
                half_t[:, None, None, :].expand(t, h, w, -1),
                half_h[None, :, None, :].expand(t, h, w, -1),
                half_w[None, None, :, :].expand(t, h, w, -1),
            ]
            * 2,
            dim=-1,
        )
        return emb.reshape(t * h * w, -1).to(wide)


def rope_cos_sin(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables at the angles' precision (float32 for bf16 models, as TE's fused RoPE)."""
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Non-interleaved rotate-half RoPE. x (B, L, H, D); cos/sin (L, D).

    Computed at the tables' precision and rounded once to x's dtype, as Transformer Engine's fused
    kernel does for the reference."""
    half = x.shape[-1] // 2
    xw = x.to(cos.dtype)
    x1, x2 = xw[..., :half], xw[..., half:]
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xw * cos[None, :, None, :] + rotated * sin[None, :, None, :]).to(x.dtype)


class LearnablePosEmbAxis(nn.Module):
    """Sum of per-axis tables t + h + w, RMS-normalised per token, added at the start of every block."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        n_t, n_h, n_w = cfg.pos_table_sizes
        d = cfg.model_channels
        self.pos_emb_h = nn.Parameter(torch.empty(n_h, d))
        self.pos_emb_w = nn.Parameter(torch.empty(n_w, d))
        self.pos_emb_t = nn.Parameter(torch.empty(n_t, d))
        self.eps = cfg.eps
        for p in (self.pos_emb_h, self.pos_emb_w, self.pos_emb_t):
            if p.device.type != "meta":
                nn.init.trunc_normal_(p, std=0.02)

    def embedding(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """(T*H*W, D) in the parameters' dtype, t-major token order."""
        t, h, w = grid
        if t > self.pos_emb_t.shape[0] or h > self.pos_emb_h.shape[0] or w > self.pos_emb_w.shape[0]:
            raise ValueError(
                f"patch grid (T, H, W) = {grid} exceeds the learnable position tables "
                f"({self.pos_emb_t.shape[0]}, {self.pos_emb_h.shape[0]}, {self.pos_emb_w.shape[0]})"
            )
        d = self.pos_emb_t.shape[1]
        emb = (
            self.pos_emb_t[:t, None, None, :].expand(t, h, w, d)
            + self.pos_emb_h[None, :h, None, :].expand(t, h, w, d)
            + self.pos_emb_w[None, None, :w, :].expand(t, h, w, d)
        )
        # Norm in float32, cast to the model dtype, then divide (as the reference's `normalize`).
        norm = torch.linalg.vector_norm(emb, dim=-1, keepdim=True, dtype=_at_least_fp32(emb.dtype))
        norm = self.eps + norm * math.sqrt(1.0 / d)
        return (emb / norm.to(emb.dtype)).reshape(t * h * w, d)


def resize_padding_mask(padding_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a (B, 1, H_px, W_px) mask to the latent's (H, W)."""
    if tuple(padding_mask.shape[-2:]) == tuple(size):
        return padding_mask
    return F.interpolate(padding_mask.float(), size=size, mode="nearest").to(padding_mask.dtype)
