"""First-order Euler ODE sampler: the reference's inference sampler (spec 2.3, pitfall 1).

One step i, as diffusers EDMEulerScheduler.step executes it with s_churn = 0 (sigma is the
float32 schedule value, used as a 0-dim float32 tensor like the scheduler does):

    x_in  = hooks.network_input(x, sigma_i)             (identity unless Video2World)
    F     = denoise((c_in * x_in) -> dtype, c_noise -> dtype)
    D     = c_skip * x_in_f32 + (c_out * F)              c_out * F is rounded to the network dtype
    x     = x_in_f32 + (x_in_f32 - D) / sigma_i * (sigma_{i+1} - sigma_i)
    x     = x.to(dtype)                                  the state is stored in the network dtype

The initial state is cast to the network dtype before the first step, as every later state is:
the reference casts its state at the top of every iteration, the first included (Text2World draws
its noise in float32 and the cast rounds it to bf16; Video2World draws it in bf16 directly). A step
to sigma = 0 returns D itself, since x + (x - D)/s * (0 - s) is D in exact arithmetic.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import edm
from .interfaces import DenoiseFn, ProgressFn, StepHooks, batch_c_noise, check_output, resolve_hooks


def _check_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError("sigmas must be a 1-D tensor of at least 2 values (num_steps + 1)")
    sigmas = sigmas.detach().to(device="cpu", dtype=torch.float32)
    if not bool((sigmas[:-1] > 0).all()) or not bool(sigmas[-1] >= 0):
        raise ValueError("sigmas must be positive (the last one may be 0)")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas must be strictly decreasing")
    return sigmas


def euler_step(
    x_in: torch.Tensor,
    f: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
) -> torch.Tensor:
    """One Euler update from x_in at sigma to sigma_next, given the (guided, replaced) output F.

    Returns float32. `sigma` and `sigma_next` are 0-dim float32 CPU tensors; F is used in its own
    dtype so that c_out * F rounds exactly as the reference's bf16 product does.
    """
    x32 = x_in.to(torch.float32)
    # The reference multiplies its bf16 F by the 0-dim float32 c_out: the product is bf16, computed
    # in float32 and rounded once (CUDA reads a CPU 0-dim tensor as a float32 scalar). Spelled out
    # here because the CPU kernel would instead round c_out itself to bf16 first, so implicit type
    # promotion would give device-dependent numbers. The sum with c_skip*x is float32 (spec 2.3).
    c_out_f = (edm.c_out(sigma) * f.to(torch.float32)).to(f.dtype).to(torch.float32)
    d = edm.c_skip(sigma) * x32 + c_out_f
    if float(sigma_next) == 0.0:
        return d
    derivative = (x32 - d) / sigma
    return x32 + derivative * (sigma_next - sigma)


def euler_sample(
    denoise: DenoiseFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    hooks: Optional[StepHooks] = None,
    progress: Optional[ProgressFn] = None,
) -> torch.Tensor:
    """Run len(sigmas) - 1 Euler steps from `noise` (x at sigmas[0]) and return x at sigmas[-1].

    noise:  the initial state, already scaled (SamplerSettings("euler").initial_noise gives
            sqrt(sigma_max^2 + 1) * N(0, I)), on the device the network runs on; any layout with the
            batch first. It is rounded to `dtype` before the first step, like every later state.
    sigmas: num_steps + 1 decreasing values, e.g. karras_sigmas(35); may end in 0.
    dtype:  the network's run dtype: the net input and c_noise are cast to it, F is taken in it
            and the state is stored in it between steps.
    Returns the final state as float32 (for a schedule ending in 0: the last denoised estimate,
    rounded to `dtype` like every other state).
    """
    sigmas = _check_sigmas(sigmas)
    hooks = resolve_hooks(hooks)
    num_steps = sigmas.numel() - 1
    x = noise.to(dtype)  # the reference's loop casts the state, the initial noise included (spec 2.3)
    for i in range(num_steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        sigma_f = float(sigma)
        x_in = hooks.network_input(x, sigma_f, i)
        x_net = (x_in.to(torch.float32) * edm.c_in(sigma)).to(dtype)
        t = batch_c_noise(edm.c_noise(sigma), x_in, dtype)
        f = denoise(x_net, t, sigma_f, i)
        check_output(f, x_in)
        f = hooks.replace_output(f, x_in, sigma_f, i).to(dtype)
        x = euler_step(x_in, f, sigma, sigma_next).to(dtype)
        if progress is not None:
            progress(i, num_steps, x)
    return x.to(torch.float32)
