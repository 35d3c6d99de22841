"""The Cosmos-Predict1 DiT (GeneralDIT / VideoExtendGeneralDIT), as plain nn.Modules.

Two ways in:
- `forward(x, timesteps, crossattn_emb, fps, padding_mask, condition_video_input_mask)` is the
  reference contract on a whole latent (B, 16, T, H, W) -> F (B, 16, T, H, W).
- `forward_tokens(...)` works on patch tokens (B, n, features) that may be one contiguous shard
  `token_range` of the flattened (t, h, w) patch grid. Context parallelism uses it: RoPE and the
  learnable embedding are computed for the full grid and sliced, and only the injected
  `self_attention` callable communicates. The model itself never touches a process group.

Tokens, input and output, use the "canonical" feature order (c, t, ph, pw) of the input patching.
The reference's final layer emits (ph, pw, t, c); `forward_tokens` permutes that back so that the
sampler can do elementwise Euler updates on token shards and `unpatchify` once at the end.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from cosmos_dist.attention import sdpa_attention
from cosmos_dist.models.blocks import FinalLayer, GeneralDITTransformerBlock, layer_norm
from cosmos_dist.models.embeddings import (
    LearnablePosEmbAxis,
    PatchEmbed,
    RMSNorm,
    RoPE3D,
    Timesteps,
    TimestepEmbedding,
    patchify,
    resize_padding_mask,
    rope_cos_sin,
    unpatchify,
)
from cosmos_dist.models.presets import DiTConfig


class CosmosDiT(nn.Module):
    def __init__(self, cfg: DiTConfig, rope_in_model_dtype: bool = True):
        """`rope_in_model_dtype=True` computes RoPE frequencies in the parameter dtype, as the
        reference does after `.to(bfloat16)` (spec 3.5); False computes them in float32."""
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.rope_in_model_dtype = rope_in_model_dtype
        d = cfg.model_channels
        self.x_embedder = PatchEmbed(cfg)
        self.pos_embedder = RoPE3D(cfg)
        self.extra_pos_embedder = LearnablePosEmbAxis(cfg)
        self.t_embedder = nn.Sequential(Timesteps(d), TimestepEmbedding(d))
        self.blocks = nn.ModuleDict({f"block{i}": GeneralDITTransformerBlock(cfg) for i in range(cfg.num_blocks)})
        self.final_layer = FinalLayer(cfg)
        self.affline_norm = RMSNorm(d, cfg.eps)  # the reference's spelling, kept for checkpoint keys

    @property
    def dtype(self) -> torch.dtype:
        return self.affline_norm.weight.dtype

    # ---- input assembly -------------------------------------------------------------------
    def input_channels(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        condition_video_input_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Concatenate [latent, (Video2World) condition mask, padding mask] on C, as the reference."""
        b, _, t, h, w = x.shape
        parts = [x]
        if self.config.video2world:
            if condition_video_input_mask is None:
                raise ValueError("a Video2World network needs condition_video_input_mask (B, 1, T, H, W)")
            parts.append(condition_video_input_mask.to(x.dtype).expand(b, 1, t, h, w))
        elif condition_video_input_mask is not None:
            raise ValueError("condition_video_input_mask was given to a Text2World network")
        if padding_mask is None:
            padding_mask = torch.zeros(1, 1, h, w, dtype=x.dtype, device=x.device)
        pm = resize_padding_mask(padding_mask.to(x.dtype), (h, w))
        parts.append(pm.unsqueeze(2).expand(b, 1, t, h, w))
        return torch.cat(parts, dim=1)

    def patchify(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """(B, C, T, H, W) -> tokens (B, T'H'W', C*pt*ps*ps) and the patch grid (T', H', W')."""
        c = self.config
        p = patchify(x, c.patch_temporal, c.patch_spatial)
        grid = tuple(p.shape[1:4])
        return p.reshape(p.shape[0], -1, p.shape[-1]), grid

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        c = self.config
        return unpatchify(tokens, grid, c.latent_channels, c.patch_temporal, c.patch_spatial)

    # ---- the network -----------------------------------------------------------------------
    def position_tables(
        self,
        grid: tuple[int, int, int],
        fps: torch.Tensor | float | None,
        token_range: tuple[int, int] | None = None,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """RoPE (cos, sin) and the learnable embedding for the full grid, sliced to token_range."""
        dtype, device = self.dtype, self.affline_norm.weight.device
        angle_dtype = dtype if self.rope_in_model_dtype else torch.promote_types(dtype, torch.float32)
        angles = self.pos_embedder.angles(grid, fps, angle_dtype, device)
        extra = self.extra_pos_embedder.embedding(grid)
        if token_range is not None:
            angles = angles[token_range[0] : token_range[1]]
            extra = extra[token_range[0] : token_range[1]]
        return rope_cos_sin(angles), extra.unsqueeze(0)

    def forward_tokens(
        self,
        tokens: torch.Tensor,
        timesteps: torch.Tensor,
        crossattn_emb: torch.Tensor,
        grid: tuple[int, int, int],
        fps: torch.Tensor | float | None = None,
        token_range: tuple[int, int] | None = None,
        self_attention: Callable = sdpa_attention,
        cross_attention: Callable = sdpa_attention,
        positions: tuple | None = None,
        block_hook: Callable[[torch.Tensor, "BlockStack"], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """tokens (B, n, in_channels*patch) -> F tokens (B, n, latent_channels*patch), canonical order.

        `positions` may carry a precomputed `position_tables(...)` result (it depends only on the
        grid, fps and shard, so a sampling loop computes it once).
        `block_hook(x, stack)`, when given, runs the transformer block loop in place of the plain loop: it gets
        the blocks' input and a `BlockStack` and returns their output (step caching decides there whether to run
        the stack or reuse an earlier residual; see cosmos_dist/pipeline/step_hooks.py)."""
        dtype = self.dtype
        b = tokens.shape[0]
        rope, extra = positions if positions is not None else self.position_tables(grid, fps, token_range)

        t = timesteps.reshape(-1).to(dtype)
        if t.numel() == 1 and b > 1:
            t = t.expand(b)
        sinusoid, adaln_lora = self.t_embedder[1](self.t_embedder[0](t))
        emb = self.affline_norm(sinusoid)
        context = crossattn_emb.to(dtype)

        stack = BlockStack(self, emb, adaln_lora, context, rope, extra, self_attention, cross_attention)
        # The blocks' input is handed over without a name kept here, so the plain loop frees it after block 0:
        # one (B, n, hidden) activation less at the peak (0.9 GB for 7B with batched guidance).
        x = (stack.run(self.x_embedder.proj[1](tokens.to(dtype))) if block_hook is None
             else block_hook(self.x_embedder.proj[1](tokens.to(dtype)), stack))
        out = self.final_layer(x, emb, adaln_lora)
        return self._to_canonical(out)

    def _to_canonical(self, out: torch.Tensor) -> torch.Tensor:
        """Final-layer features (ph, pw, t, c) -> (c, t, ph, pw)."""
        c = self.config
        b, n, _ = out.shape
        out = out.view(b, n, c.patch_spatial, c.patch_spatial, c.patch_temporal, c.latent_channels)
        return out.permute(0, 1, 5, 4, 2, 3).reshape(b, n, -1)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        crossattn_emb: torch.Tensor,
        fps: torch.Tensor | float | None = None,
        padding_mask: torch.Tensor | None = None,
        condition_video_input_mask: torch.Tensor | None = None,
        self_attention: Callable = sdpa_attention,
        cross_attention: Callable = sdpa_attention,
    ) -> torch.Tensor:
        """The reference contract: x = c_in * x_sigma (B, 16, T, H, W), timesteps = c_noise (B,)."""
        if x.ndim != 5 or x.shape[1] != self.config.latent_channels:
            raise ValueError(f"x must be (B, {self.config.latent_channels}, T, H, W); got {tuple(x.shape)}")
        tokens, grid = self.patchify(self.input_channels(x.to(self.dtype), padding_mask, condition_video_input_mask))
        out = self.forward_tokens(
            tokens, timesteps, crossattn_emb, grid, fps, None, self_attention, cross_attention
        )
        return self.unpatchify(out, grid)


class BlockStack:
    """The transformer block loop of one forward, with its conditioning bound: what a `block_hook` may run.

    `run(x, start, stop)` runs blocks[start:stop] on x; `modulated_input(x)` is block 0's self-attention input
    after its adaLN modulation (layer_norm(x + pos) * (1 + scale) + shift): it depends on the state and the
    timestep embedding, which is what TeaCache compares between steps. Nothing here communicates except the
    injected attention callables, exactly as in the plain loop.
    """

    def __init__(self, net: "CosmosDiT", emb, adaln_lora, context, rope, extra, self_attention, cross_attention):
        self.blocks = list(net.blocks.values())
        self._args = (emb, adaln_lora, context, rope, extra, self_attention, cross_attention)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def run(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        for block in self.blocks[start:stop]:
            x = block(x, *self._args)
        return x

    def modulated_input(self, x: torch.Tensor, position_embedding: bool = True) -> torch.Tensor:
        """`position_embedding=False` leaves out the learnable position embedding, as TeaCache4Cosmos's signal does.
        Works while offload=dit streams the blocks: outside a block's call its weights live on the host, so the
        small adaLN projection is then evaluated with device copies of its weights (a few MB at 7B)."""
        emb, adaln_lora, _, _, extra = self._args[:5]
        first = _unwrap(self.blocks[0]).blocks[0]  # block 0's self-attention sub-block
        modulation = first.adaLN_modulation
        if any(p.device != emb.device for p in modulation.parameters()):
            weights = {name: p.to(emb.device, non_blocking=True) for name, p in modulation.named_parameters()}
            projected = torch.func.functional_call(modulation, weights, (emb,))
        else:
            projected = modulation(emb)
        shift, scale, _ = (projected + adaln_lora).chunk(3, dim=-1)
        h = x + extra if position_embedding else x
        return layer_norm(h, first.eps) * (1 + scale[:, None, :]) + shift[:, None, :]

    def select(self, rows: list[int]) -> "BlockStack":
        """The same blocks for a subset of the batch rows (with batched guidance: one branch of two)."""
        emb, adaln_lora, context, rope, extra, self_attention, cross_attention = self._args
        sub = BlockStack.__new__(BlockStack)
        sub.blocks = self.blocks
        index = torch.tensor(rows, device=emb.device)
        sub._args = (emb.index_select(0, index), adaln_lora.index_select(0, index), context.index_select(0, index),
                     rope, extra, self_attention, cross_attention)
        return sub


def _unwrap(block: nn.Module) -> nn.Module:
    """The block module behind torch.compile's wrapper or the offload streamer's stand-in."""
    while True:
        inner = getattr(block, "_orig_mod", None) or getattr(block, "inner", None)
        if inner is None:
            return block
        block = inner


def build_dit(
    cfg: DiTConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, **kwargs
) -> CosmosDiT:
    """Construct the network. On device "meta" nothing is allocated (for loading real weights)."""
    # Construct directly in the run dtype so a 14B model never exists in float32 on the device.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point else previous)
    try:
        with torch.device(device):
            net = CosmosDiT(cfg, **kwargs)
    finally:
        torch.set_default_dtype(previous)
    return net.eval().requires_grad_(False)
