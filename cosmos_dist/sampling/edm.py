"""EDM preconditioning and the Karras sigma schedule (spec 2.1, 2.2).

The network contract of Cosmos-Predict1 is Karras et al.'s EDM parameterisation with
sigma_data = 0.5:

    F = net(c_in * x_sigma, c_noise)          c_noise = 0.25 * ln(sigma)
    D = c_skip * x_sigma + c_out * F          (the denoised estimate, "x0")

Every function here accepts a python float or a tensor sigma and answers in the same kind, so the
Euler loop can evaluate them on 0-dim float32 tensors exactly as diffusers does (its scheduler
keeps sigma as a float32 tensor), while RES and the tests can use python floats (float64).
"""

from __future__ import annotations

import math
from typing import Union

import torch

SIGMA_DATA = 0.5

# The reference inference scheduler (diffusers EDMEulerScheduler as built in mt2w.py:62).
EULER_SIGMA_MIN = 0.0002
# The RES sampler's own default (res.py); not used by the reference inference scripts.
RES_SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0

Sigma = Union[float, torch.Tensor]


def _sqrt(v: Sigma) -> Sigma:
    # `** 0.5` works on floats and tensors alike and is what diffusers writes; keeping the same
    # operation keeps float32 results bit-identical to the reference scheduler.
    return v**0.5


def c_skip(sigma: Sigma) -> Sigma:
    """sigma_d^2 / (sigma^2 + sigma_d^2): how much of the noisy input survives into D."""
    return SIGMA_DATA**2 / (sigma**2 + SIGMA_DATA**2)


def c_out(sigma: Sigma) -> Sigma:
    """sigma * sigma_d / sqrt(sigma^2 + sigma_d^2): the scale of the network's output in D."""
    return sigma * SIGMA_DATA / _sqrt(sigma**2 + SIGMA_DATA**2)


def c_in(sigma: Sigma) -> Sigma:
    """1 / sqrt(sigma^2 + sigma_d^2): brings x_sigma to unit variance before the network."""
    return 1 / _sqrt(sigma**2 + SIGMA_DATA**2)


def c_noise(sigma: Sigma) -> Sigma:
    """0.25 * ln(sigma): the network's time input (the reference casts it to bf16 before use)."""
    if isinstance(sigma, torch.Tensor):
        return 0.25 * torch.log(sigma)
    return 0.25 * math.log(sigma)


def denoised(x: torch.Tensor, f: torch.Tensor, sigma: Sigma) -> torch.Tensor:
    """D = c_skip * x + c_out * F."""
    return c_skip(sigma) * x + c_out(sigma) * f


def f_from_denoised(d: torch.Tensor, x: torch.Tensor, sigma: Sigma) -> torch.Tensor:
    """The network output that yields a given D: F = (D - c_skip * x) / c_out.

    Video2World uses it to pin the condition frames to the ground-truth latent (spec 2.6 step 4);
    the tests use it to drive the samplers with an exact, closed-form denoiser.
    """
    return (d - c_skip(sigma) * x) / c_out(sigma)


def init_noise_sigma(sigma_max: float = SIGMA_MAX) -> float:
    """Scale of the Euler sampler's initial noise: sqrt(sigma_max^2 + 1) (80.00625 for 80, not 80;
    pitfall 1), the diffusers scheduler's init_noise_sigma. RES scales by sigma_max itself (spec 2.7)."""
    return math.sqrt(sigma_max**2 + 1)


def f_from_denoised_as_written(d: torch.Tensor, x: torch.Tensor, sigma: Sigma) -> torch.Tensor:
    """The reference Video2World's replacement output as its code reads: d / c_out - c_skip * x.

    Operator precedence makes it differ from f_from_denoised, (d - c_skip * x) / c_out: the
    denoised estimate it gives is d + c_skip * (1 - c_out) * x, not d (spec 2.6 step 4). Offered
    only to reproduce the reference's outputs (condition_replacement=reference).
    """
    return d / c_out(sigma) - c_skip(sigma) * x


def _check_schedule_args(num_steps: int, sigma_min: float, sigma_max: float, rho: float) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho}")


def _karras_ramp(ramp: torch.Tensor, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    # Interpolate linearly in sigma^(1/rho) space; float64 throughout.
    max_inv_rho = sigma_max ** (1 / rho)
    min_inv_rho = sigma_min ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def karras_sigmas(
    num_steps: int,
    sigma_min: float = EULER_SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
) -> torch.Tensor:
    """The Euler schedule: num_steps Karras sigmas from sigma_max down to sigma_min, then 0.

    Matches diffusers EDMEulerScheduler(sigma_schedule="karras", final_sigmas_type="zero"): the
    ramp is linspace(0, 1, num_steps), the values are computed in float64 and stored as a float32
    CPU tensor of num_steps + 1 entries.
    """
    _check_schedule_args(num_steps, sigma_min, sigma_max, rho)
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    sigmas = _karras_ramp(ramp, sigma_min, sigma_max, rho)
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(torch.float32)


def res_sigmas(
    num_steps: int,
    sigma_min: float = RES_SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
) -> torch.Tensor:
    """The RES timestamps (spec 2.7): sigma_i for i = 0..N with ramp i/N, float64, no final 0.

    Unlike the Euler schedule the last entry is sigma_min itself; RES ends with one extra
    "sample clean" evaluation at that sigma instead of a step to 0.
    """
    _check_schedule_args(num_steps, sigma_min, sigma_max, rho)
    ramp = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    return _karras_ramp(ramp, sigma_min, sigma_max, rho)
