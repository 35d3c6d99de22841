"""Transformer blocks of the Cosmos DiT (spec 3.4).

Each block is FA (self-attention with RoPE) -> CA (cross-attention to T5, no mask, no RoPE) -> MLP,
each wrapped as x + gate * f(LN(x) * (1 + scale) + shift), with adaLN-LoRA modulation. Tokens are
(B, L, D); L may be a context-parallel shard, in which case the `self_attention` callable does the
communication.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cosmos_dist.attention import sdpa_attention
from cosmos_dist.models.embeddings import RMSNorm, apply_rope
from cosmos_dist.models.presets import DiTConfig


def layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without affine parameters."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


class Attention(nn.Module):
    """Projections q/k/v with per-head RMSNorm on q and k ("RRI"), then an attention callable, then out."""

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int, eps: float):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.to_q = nn.Sequential(nn.Linear(dim, inner, bias=False), RMSNorm(head_dim, eps))
        self.to_k = nn.Sequential(nn.Linear(context_dim, inner, bias=False), RMSNorm(head_dim, eps))
        self.to_v = nn.Sequential(nn.Linear(context_dim, inner, bias=False), nn.Identity())
        self.to_out = nn.Sequential(nn.Linear(inner, dim, bias=False), nn.Dropout(0.0))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None,
        attn_fn: Callable,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        src = x if context is None else context
        b, lq, _ = x.shape
        lk = src.shape[1]
        # Project, split heads, then normalise per head (the norm runs over head_dim, not D).
        q = self.to_q[1](self.to_q[0](x).view(b, lq, self.heads, self.head_dim))
        k = self.to_k[1](self.to_k[0](src).view(b, lk, self.heads, self.head_dim))
        v = self.to_v[0](src).view(b, lk, self.heads, self.head_dim)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = attn_fn(q, k, v)
        return self.to_out(out.reshape(b, lq, self.heads * self.head_dim))


class VideoAttn(nn.Module):
    """Holds `attn` so that parameter names read `...block.attn.to_q.0.weight` as in the checkpoint."""

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int, eps: float):
        super().__init__()
        self.attn = Attention(dim, context_dim, heads, head_dim, eps)


class GPT2FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.layer1 = nn.Linear(dim, hidden, bias=False)
        self.activation = nn.GELU()  # exact erf GELU
        self.layer2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.activation(self.layer1(x)))


def adaln_modulation(dim: int, lora_dim: int, n_chunks: int) -> nn.Sequential:
    return nn.Sequential(
        nn.SiLU(), nn.Linear(dim, lora_dim, bias=False), nn.Linear(lora_dim, n_chunks * dim, bias=False)
    )


class DITBuildingBlock(nn.Module):
    """One sub-block: "fa" self-attention, "ca" cross-attention or "mlp"."""

    def __init__(self, kind: str, cfg: DiTConfig):
        super().__init__()
        d = cfg.model_channels
        self.kind = kind
        self.eps = cfg.eps
        if kind == "mlp":
            self.block = GPT2FeedForward(d, cfg.mlp_hidden)
        else:
            ctx = d if kind == "fa" else cfg.crossattn_emb_channels
            self.block = VideoAttn(d, ctx, cfg.num_heads, cfg.head_dim, cfg.eps)
        self.adaLN_modulation = adaln_modulation(d, cfg.adaln_lora_dim, 3)

    def forward(self, x, emb, adaln_lora, context, rope, self_attention, cross_attention) -> torch.Tensor:
        shift, scale, gate = (self.adaLN_modulation(emb) + adaln_lora).chunk(3, dim=-1)
        h = layer_norm(x, self.eps) * (1 + scale[:, None, :]) + shift[:, None, :]
        if self.kind == "fa":
            h = self.block.attn(h, None, self_attention, rope)
        elif self.kind == "ca":
            h = self.block.attn(h, context, cross_attention)
        else:
            h = self.block(h)
        return x + gate[:, None, :] * h


class GeneralDITTransformerBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.blocks = nn.ModuleList([DITBuildingBlock(kind, cfg) for kind in ("fa", "ca", "mlp")])

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        adaln_lora: torch.Tensor,
        context: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        extra_pos_emb: torch.Tensor,
        self_attention: Callable = sdpa_attention,
        cross_attention: Callable = sdpa_attention,
    ) -> torch.Tensor:
        # The learnable position embedding is added at the start of every block, not once.
        x = x + extra_pos_emb
        for sub in self.blocks:
            x = sub(x, emb, adaln_lora, context, rope, self_attention, cross_attention)
        return x


class FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.model_channels
        self.eps = cfg.eps
        self.linear = nn.Linear(d, cfg.patch_out_features, bias=False)
        self.adaLN_modulation = adaln_modulation(d, cfg.adaln_lora_dim, 2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, adaln_lora: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        # The final layer takes only the first 2D of the 3D timestep-MLP output.
        shift, scale = (self.adaLN_modulation(emb) + adaln_lora[:, : 2 * d]).chunk(2, dim=-1)
        return self.linear(layer_norm(x, self.eps) * (1 + scale[:, None, :]) + shift[:, None, :])
