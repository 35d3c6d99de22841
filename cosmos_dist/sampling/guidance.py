"""Classifier-free guidance on the raw network output (spec 2.4, pitfall 2).

The reference guides F, not x0 or epsilon:

    F = F_c + g * (F_c - F_u)

with g = 7 by default, i.e. an effective "standard" CFG scale of g + 1 = 8. Because
D = c_skip * x + c_out * F is affine in F, this is the same as guiding x0 with the same formula.
g = 0 means no guidance: only the conditional pass is needed.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

# (x_net, c_noise, sigma, step) -> raw network output F for one condition.
NetFn = Callable[[torch.Tensor, torch.Tensor, float, int], torch.Tensor]


def _check_guidance(guidance: float) -> None:
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise ValueError(f"guidance must be a finite number, got {guidance!r}")


def needs_uncond(guidance: float) -> bool:
    """Whether the unconditional pass must run at all (it does not for g == 0)."""
    _check_guidance(guidance)
    return guidance != 0


def guide(f_cond: torch.Tensor, f_uncond: Optional[torch.Tensor], guidance: float) -> torch.Tensor:
    """F_c + g * (F_c - F_u), evaluated in the dtype of the inputs as the reference does.

    For g == 0 the conditional output is returned as is and f_uncond may be None.
    """
    if not needs_uncond(guidance):
        return f_cond
    if f_uncond is None:
        raise ValueError(f"guidance={guidance} needs the unconditional output, got None")
    if f_uncond.shape != f_cond.shape:
        raise ValueError(f"cond/uncond shapes differ: {tuple(f_cond.shape)} vs {tuple(f_uncond.shape)}")
    return f_cond + guidance * (f_cond - f_uncond)


def guided_denoiser(cond: NetFn, uncond: Optional[NetFn], guidance: float):
    """A DenoiseFn for the samplers from two single-condition network calls.

    Runs cond and uncond one after the other, like the reference (two batch-1 forwards); the
    unconditional call is skipped entirely when guidance is 0. Batched or CFG-parallel execution
    should build its own DenoiseFn and call `guide` on the two halves.
    """
    use_uncond = needs_uncond(guidance)
    if use_uncond and uncond is None:
        raise ValueError(f"guidance={guidance} needs an unconditional network call")

    def denoise(x_net: torch.Tensor, c_noise: torch.Tensor, sigma: float, step: int) -> torch.Tensor:
        f_c = cond(x_net, c_noise, sigma, step)
        f_u = uncond(x_net, c_noise, sigma, step) if use_uncond else None
        return guide(f_c, f_u, guidance)

    return denoise
