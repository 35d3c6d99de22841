"""The guided network call the sampler steps with: F = F_c + g (F_c - F_u) on a token shard.

Three ways to get the two branches, same result up to rounding:
- `batch`: one forward of batch 2 (cond, uncond) on this rank;
- `sequential`: two forwards of batch 1 (what the reference does);
- `cfg_parallel`: this rank computes one branch, its cfg-pair partner the other, and the two
  outputs are exchanged once per step (`exchange` callable, from cosmos_dist.parallel).
With guidance 0 only the conditional branch runs.

Every evaluation goes through the pipeline's StepHook (pipeline/step_hooks.py): `around_denoise` around the
guided call, `around_blocks` around each forward's transformer block loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from cosmos_dist.attention import sdpa_attention
from cosmos_dist.models.dit import CosmosDiT
from cosmos_dist.pipeline.step_hooks import NoStepHook, StepContext, StepHook
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
    step_hook: StepHook = NoStepHook()
    runtime: Any = None  # handed to the step hook (cross-rank agreement); never used here
    num_steps: int = 0  # evaluations per sample, for the hook's context

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

    def _forward(self, x_net: torch.Tensor, c_noise: torch.Tensor, emb: torch.Tensor, extra: torch.Tensor,
                 ctx: StepContext):
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
            block_hook=lambda x, stack: self.step_hook.around_blocks(ctx, x, stack),
        )

    def _context(self, step: int, sigma: float, mode: str, branches: tuple[int, ...]) -> StepContext:
        return StepContext(step=step, num_steps=self.num_steps, sigma=float(sigma), mode=mode, branches=branches,
                           runtime=self.runtime)

    def __call__(self, x_net: torch.Tensor, c_noise: torch.Tensor, sigma: float, step: int) -> torch.Tensor:
        self._set_precision(step)
        extra = self.extra_tokens_fn(step) if self.extra_tokens_fn is not None else self.extra_tokens
        unguided = self.guidance == 0 or self.uncond_emb is None
        mode = "unguided" if unguided else self.mode
        branches = (self.cfg_branch,) if mode == "cfg_parallel" else (0,) if mode == "unguided" else (0, 1)
        ctx = self._context(step, sigma, mode, branches)
        return self.step_hook.around_denoise(ctx, lambda: self._guided(x_net, c_noise, sigma, step, extra, mode))

    def _guided(self, x_net, c_noise, sigma, step, extra, mode) -> torch.Tensor:
        if mode == "unguided":
            return self._forward(x_net, c_noise, self.cond_emb, extra, self._context(step, sigma, mode, (0,)))
        if mode == "cfg_parallel":
            mine = self.cond_emb if self.cfg_branch == 0 else self.uncond_emb
            ctx = self._context(step, sigma, mode, (self.cfg_branch,))
            f_cond, f_uncond = self.exchange(self._forward(x_net, c_noise, mine, extra, ctx))
        elif mode == "batch":
            ctx = self._context(step, sigma, mode, (0, 1))
            f_cond, f_uncond = self._forward(
                x_net, c_noise, torch.cat([self.cond_emb, self.uncond_emb]), extra, ctx
            ).chunk(2)
        else:
            f_cond = self._forward(x_net, c_noise, self.cond_emb, extra, self._context(step, sigma, mode, (0,)))
            f_uncond = self._forward(x_net, c_noise, self.uncond_emb, extra, self._context(step, sigma, mode, (1,)))
        return guide(f_cond, f_uncond, self.guidance)


# ---- one sample's sampling run on this rank -------------------------------------------------------------
def latent_shape(cfg, channels: int = 16) -> tuple[int, ...]:
    return (1, channels, 1 + (cfg.num_frames - 1) // 8, cfg.height // 8, cfg.width // 8)


def sampler_settings(cfg):
    from cosmos_dist.sampling import SamplerSettings

    s = cfg.sampler
    return SamplerSettings(name=s.name, num_steps=cfg.num_steps, sigma_min=s.sigma_min, sigma_max=s.sigma_max, rho=s.rho)


def mask_tokens(net, shape, device, dtype, condition_mask=None) -> torch.Tensor:
    """The non-latent input channels (condition mask, padding mask) as patch tokens (1, N, k)."""
    b, c, t, h, w = shape
    zeros = torch.zeros(shape, device=device, dtype=dtype)
    padding = torch.zeros(1, 1, h * 8, w * 8, device=device, dtype=dtype)  # the reference's all-zero mask
    full, _ = net.patchify(net.input_channels(zeros, padding, condition_mask))
    return full[..., c * net.config.patch_volume :]


def sample_latent(*, net, plan, runtime, cfg, sample_id: str, seed: int, cond, uncond, condition=None,
                  step_hook: StepHook = NoStepHook(), on_step: Optional[Callable] = None) -> Optional[torch.Tensor]:
    """Run the sampler on this rank's token shard; returns the full latent (1, 16, T, H, W) float32 on the replica
    leader (None elsewhere).

    `condition` (Video2World, None for Text2World): an object with `mask`, the condition-mask channel
    (1, 1, T, H, W), and `step_hooks(net, token_range)`, the sampler's StepHooks on this rank's shard.
    `on_step(step, total, latent)`: called after each evaluation (see cosmos_dist.sampling.interfaces.ProgressFn).
    """
    settings = sampler_settings(cfg)
    shape = latent_shape(cfg, net.config.latent_channels)
    noise = settings.initial_noise(shape, seed, sample_id)  # the sampler's own scale (RES: sigma_max)
    noise_tokens, grid = net.patchify(noise)
    token_range = runtime.token_range(noise_tokens.shape[1])
    extra = mask_tokens(net, shape, plan.device, net.dtype, None if condition is None else condition.mask)
    if token_range is not None:
        noise_tokens = noise_tokens[:, token_range[0] : token_range[1]]
        extra = extra[:, token_range[0] : token_range[1]]
    options, hp_attention = plan.attention(runtime, cfg.parallel, grid, net.config.num_heads)
    num_evaluations = settings.num_network_evaluations
    denoiser = GuidedDenoiser(
        net=net, grid=grid, fps=cfg.fps, cond_emb=cond, uncond_emb=uncond, guidance=cfg.guidance,
        extra_tokens=extra, token_range=token_range,
        high_precision_steps=plan.high_precision_steps(settings.num_steps), hp_self_attention=hp_attention,
        step_hook=step_hook, runtime=runtime, num_steps=num_evaluations, **options,
    )
    step_hook.begin_sample(sample_id, num_evaluations)
    hooks = None if condition is None else condition.step_hooks(net, token_range)
    out = settings.sample(denoiser, noise_tokens.to(plan.device), dtype=net.dtype, hooks=hooks, progress=on_step)
    full = runtime.gather_tokens(out)
    if full is None:
        return None
    return net.unpatchify(full.float(), grid)
