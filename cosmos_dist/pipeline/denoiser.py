"""The guided network call the sampler steps with: F = F_c + g (F_c - F_u) on a token shard.

Three ways to get the two branches, same result up to rounding:
- `batch`: one forward of batch 2 (cond, uncond) on this rank;
- `sequential`: two forwards of batch 1 (what the reference does);
- `cfg_parallel`: this rank computes one branch, its cfg-pair partner the other, and the two
  outputs are exchanged once per step (`exchange` callable, from cosmos_dist.parallel).
With guidance 0 only the conditional branch runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from cosmos_dist.attention import sdpa_attention
from cosmos_dist.models.dit import CosmosDiT
from cosmos_dist.sampling import guide


@dataclass
class GuidedDenoiser:
    net: CosmosDiT
    grid: tuple[int, int, int]
    fps: float
    cond_emb: torch.Tensor  # (1, L, C) text embedding of the prompt
    uncond_emb: Optional[torch.Tensor]  # (1, L, C) negative-prompt (or zeroed) embedding
    guidance: float
    extra_tokens: torch.Tensor  # (1, n, k) mask channels (condition mask, padding mask) for this shard
    token_range: Optional[tuple[int, int]] = None
    self_attention: Callable = sdpa_attention
    mode: str = "batch"  # batch | sequential | cfg_parallel
    cfg_branch: int = 0  # cfg_parallel: 0 computes the conditional branch, 1 the unconditional
    exchange: Optional[Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = None
    extra_tokens_fn: Optional[Callable[[int], torch.Tensor]] = None  # per-step mask tokens (Video2World)
    # precision=fp8: steps that run without FP8 (FP8 linears switched to their kept weights, and
    # `hp_self_attention` instead of the FP8 kernel when it is given).
    high_precision_steps: frozenset = frozenset()
    hp_self_attention: Optional[Callable] = None

    def __post_init__(self):
        fps = torch.tensor([float(self.fps)], device=self.extra_tokens.device)
        # RoPE and the learnable embedding depend only on the grid, fps and shard: compute once.
        self._positions = self.net.position_tables(self.grid, fps.to(self.net.dtype), self.token_range)
        self._fps = fps
        self._high_precision = False

    def _set_precision(self, step: int) -> None:
        if not self.high_precision_steps:
            return
        hp = step in self.high_precision_steps
        if hp != self._high_precision:
            from cosmos_dist.models.fp8 import set_fp8_enabled

            set_fp8_enabled(self.net, not hp)
            self._high_precision = hp

    def _forward(self, x_net: torch.Tensor, c_noise: torch.Tensor, emb: torch.Tensor, extra: torch.Tensor):
        b = emb.shape[0]
        use_hp = self._high_precision and self.hp_self_attention is not None
        attn = self.hp_self_attention if use_hp else self.self_attention
        tokens = torch.cat([x_net.expand(b, -1, -1), extra.to(x_net.dtype).expand(b, -1, -1)], dim=-1)
        return self.net.forward_tokens(
            tokens,
            c_noise.reshape(1).expand(b),
            emb,
            self.grid,
            self._fps,
            self.token_range,
            self_attention=attn,
            positions=self._positions,
        )

    def __call__(self, x_net: torch.Tensor, c_noise: torch.Tensor, sigma: float, step: int) -> torch.Tensor:
        self._set_precision(step)
        extra = self.extra_tokens_fn(step) if self.extra_tokens_fn is not None else self.extra_tokens
        if self.guidance == 0 or self.uncond_emb is None:
            return self._forward(x_net, c_noise, self.cond_emb, extra)
        if self.mode == "cfg_parallel":
            mine = self.cond_emb if self.cfg_branch == 0 else self.uncond_emb
            f_cond, f_uncond = self.exchange(self._forward(x_net, c_noise, mine, extra))
        elif self.mode == "batch":
            f_cond, f_uncond = self._forward(
                x_net, c_noise, torch.cat([self.cond_emb, self.uncond_emb]), extra
            ).chunk(2)
        else:
            f_cond = self._forward(x_net, c_noise, self.cond_emb, extra)
            f_uncond = self._forward(x_net, c_noise, self.uncond_emb, extra)
        return guide(f_cond, f_uncond, self.guidance)
