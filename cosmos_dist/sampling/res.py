"""RES 2ab: the second-order exponential multistep sampler of the reference repo (spec 2.7).

Not what the reference's inference scripts use (they use Euler, see euler.py); offered because
the repository ships it and it reaches a given quality in fewer steps.

Work in log-sigma time lambda = -ln(sigma). Between network evaluations the denoised estimate x0
is treated as a polynomial in lambda and the linear part of the probability-flow ODE is integrated
exactly (an exponential integrator):

* first step (no history): x_t = ((s - t)/s) * x0_s + (t/s) * x_s, the exact solution for a
  constant x0 over the step;
* later steps, with the previous sigma s1 and its x0_{s1} (Adams-Bashforth, 2 points):
      dt = lambda_t - lambda_s,  c2 = (lambda_s1 - lambda_s) / dt,  h = -dt
      phi1 = (e^h - 1)/h,  phi2 = (phi1 - 1)/h                  (float64)
      b1 = phi1 - phi2/c2,  b2 = phi2/c2
      x_t = e^{-dt} x_s + dt (b1 x0_s + b2 x0_{s1})
* after the last step one more evaluation returns x0 at sigma_N ("sample clean").

The timestamps are res_sigmas(N) (N + 1 values, last = sigma_min, no 0) and there are N + 1
network evaluations in all. The reference casts each x0 to float64, so the state here is float64
throughout; the network still sees c_in * x and c_noise cast to its run dtype.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from . import edm
from .interfaces import DenoiseFn, ProgressFn, StepHooks, batch_c_noise, check_output, resolve_hooks


def res_first_order_step(x_s: torch.Tensor, x0_s: torch.Tensor, s: float, t: float) -> torch.Tensor:
    """Step from sigma s to t with x0 held constant (used for the first step)."""
    return ((s - t) / s) * x0_s + (t / s) * x_s


def res_2ab_coefficients(s: float, t: float, s_prev: float) -> Tuple[float, float, float, float]:
    """(decay, dt, b1, b2) of the 2ab step from s to t with history at s_prev, in float64.

    decay = e^{-dt} = t/s; the update is x_t = decay * x_s + dt * (b1 * x0_s + b2 * x0_prev).
    """
    lam_s, lam_t, lam_prev = -math.log(s), -math.log(t), -math.log(s_prev)
    dt = lam_t - lam_s
    c2 = (lam_prev - lam_s) / dt
    h = -dt
    # expm1 keeps phi1 accurate for small steps; for the step sizes used here it agrees with
    # (exp(h) - 1)/h to float64 rounding.
    phi1 = math.expm1(h) / h
    phi2 = (phi1 - 1) / h
    b2 = phi2 / c2
    b1 = phi1 - b2
    return math.exp(-dt), dt, b1, b2


def res_2ab_step(
    x_s: torch.Tensor,
    x0_s: torch.Tensor,
    x0_prev: torch.Tensor,
    s: float,
    t: float,
    s_prev: float,
) -> torch.Tensor:
    """Step from sigma s to t using x0 at s and at the previous sigma s_prev."""
    decay, dt, b1, b2 = res_2ab_coefficients(s, t, s_prev)
    return decay * x_s + dt * (b1 * x0_s + b2 * x0_prev)


def res_sample(
    denoise: DenoiseFn,
    noise: torch.Tensor,
    *,
    num_steps: int = 35,
    sigma_min: float = edm.RES_SIGMA_MIN,
    sigma_max: float = edm.SIGMA_MAX,
    rho: float = edm.RHO,
    dtype: torch.dtype = torch.float32,
    hooks: Optional[StepHooks] = None,
    progress: Optional[ProgressFn] = None,
) -> torch.Tensor:
    """Run RES 2ab from `noise` (x at sigma_max) and return the clean sample as float32.

    The reference scales RES's initial noise by sigma_max itself, not by the Euler scheduler's
    sqrt(sigma_max^2 + 1) (SamplerSettings("res").initial_noise does this). Unlike Euler, the
    state is not rounded to the network dtype: the reference starts from its float32 noise and
    keeps the state in float64 after the first step; only the network input is cast.

    Makes num_steps + 1 network evaluations: steps 0..num_steps-1 move along res_sigmas, and
    evaluation num_steps (at sigma_min) gives the returned x0. Hooks and progress see all of
    them, progress with total = num_steps + 1.
    """
    sigmas = edm.res_sigmas(num_steps, sigma_min, sigma_max, rho).tolist()
    hooks = resolve_hooks(hooks)
    total = num_steps + 1

    def evaluate(x: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        # -> (x_in, x0) in float64 for evaluation k at sigmas[k].
        sigma = sigmas[k]
        x_in = hooks.network_input(x, sigma, k)
        x64 = x_in.to(torch.float64)
        x_net = (x64 * edm.c_in(sigma)).to(dtype)
        t = batch_c_noise(torch.tensor(edm.c_noise(sigma), dtype=torch.float64), x_in, dtype)
        f = denoise(x_net, t, sigma, k)
        check_output(f, x_in)
        f = hooks.replace_output(f, x_in, sigma, k).to(dtype)
        x0 = edm.c_skip(sigma) * x64 + edm.c_out(sigma) * f.to(torch.float64)
        if progress is not None:
            progress(k, total, x0)
        return x64, x0

    x = noise.to(torch.float64)
    x0_prev: Optional[torch.Tensor] = None
    for i in range(num_steps):
        s, t = sigmas[i], sigmas[i + 1]
        x_s, x0_s = evaluate(x, i)
        if x0_prev is None:
            x = res_first_order_step(x_s, x0_s, s, t)
        else:
            x = res_2ab_step(x_s, x0_s, x0_prev, s, t, sigmas[i - 1])
        x0_prev = x0_s
    _, x0 = evaluate(x, num_steps)
    return x0.to(torch.float32)
