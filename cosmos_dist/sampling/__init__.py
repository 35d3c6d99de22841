"""Sampling: EDM preconditioning, sigma schedules, per-sample noise, guidance, Euler and RES.

Typical use (one sample):

    settings = SamplerSettings("euler", num_steps=35)
    noise = settings.initial_noise(shape, base_seed, sample_id).to(device)
    denoise = guided_denoiser(cond_fn, uncond_fn, guidance=7.0)
    latent = settings.sample(denoise, noise, dtype=torch.bfloat16)
"""

from .condition import CONDITION_REPLACEMENTS, condition_output
from .edm import (
    SIGMA_DATA,
    c_in,
    c_noise,
    c_out,
    c_skip,
    denoised,
    f_from_denoised,
    f_from_denoised_as_written,
    init_noise_sigma,
    karras_sigmas,
    res_sigmas,
)
from .euler import euler_sample, euler_step
from .guidance import guide, guided_denoiser, needs_uncond
from .interfaces import DenoiseFn, NullHooks, ProgressFn, StepHooks
from .noise import AUGMENT_STREAM, fixed_noise, initial_noise, sample_seed, stream_seed
from .res import res_2ab_step, res_first_order_step, res_sample
from .settings import SAMPLER_NAMES, SamplerSettings

__all__ = [
    "AUGMENT_STREAM",
    "CONDITION_REPLACEMENTS",
    "DenoiseFn",
    "NullHooks",
    "ProgressFn",
    "SAMPLER_NAMES",
    "SIGMA_DATA",
    "SamplerSettings",
    "StepHooks",
    "c_in",
    "c_noise",
    "c_out",
    "c_skip",
    "condition_output",
    "denoised",
    "euler_sample",
    "euler_step",
    "f_from_denoised",
    "f_from_denoised_as_written",
    "fixed_noise",
    "guide",
    "guided_denoiser",
    "init_noise_sigma",
    "initial_noise",
    "karras_sigmas",
    "needs_uncond",
    "res_2ab_step",
    "res_first_order_step",
    "res_sample",
    "res_sigmas",
    "sample_seed",
    "stream_seed",
]
