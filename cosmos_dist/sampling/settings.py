"""SamplerSettings: which sampler, how many steps, which schedule; recorded in every sidecar."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import torch

from . import edm
from .euler import euler_sample
from .interfaces import DenoiseFn, ProgressFn, StepHooks
from .noise import initial_noise
from .res import res_sample

from cosmos_dist.choices import SAMPLERS as SAMPLER_NAMES  # noqa: E402  (the one list)


@dataclass(frozen=True)
class SamplerSettings:
    """A sampler choice.

    name:      "euler" (the reference's inference sampler, the default) or "res" (RES 2ab).
    sigma_min: None picks the sampler's reference default: 0.0002 for euler, 0.002 for res.
    """

    name: str = "euler"
    num_steps: int = 35
    sigma_min: Optional[float] = None
    sigma_max: float = edm.SIGMA_MAX
    rho: float = edm.RHO

    def __post_init__(self) -> None:
        if self.name not in SAMPLER_NAMES:
            raise ValueError(f"sampler name {self.name!r} is not one of {', '.join(SAMPLER_NAMES)}")
        if self.sigma_min is None:
            default = edm.EULER_SIGMA_MIN if self.name == "euler" else edm.RES_SIGMA_MIN
            object.__setattr__(self, "sigma_min", default)
        # Same checks the schedules make, raised now rather than at the first sample.
        edm._check_schedule_args(self.num_steps, self.sigma_min, self.sigma_max, self.rho)

    @property
    def num_network_evaluations(self) -> int:
        """Guided evaluations per sample (each is one or two DiT forwards depending on CFG)."""
        return self.num_steps + (1 if self.name == "res" else 0)

    def sigmas(self) -> torch.Tensor:
        """The sigma schedule this sampler walks (Euler: ends in 0; RES: ends at sigma_min)."""
        if self.name == "euler":
            return edm.karras_sigmas(self.num_steps, self.sigma_min, self.sigma_max, self.rho)
        return edm.res_sigmas(self.num_steps, self.sigma_min, self.sigma_max, self.rho)

    def init_noise_sigma(self) -> float:
        """Scale of this sampler's initial noise, as the reference scales it: Euler (the diffusers
        scheduler) sqrt(sigma_max^2 + 1), RES sigma_max itself (spec 2.2, 2.7)."""
        if self.name == "res":
            return float(self.sigma_max)
        return edm.init_noise_sigma(self.sigma_max)

    def initial_noise(
        self, shape: Sequence[int], base_seed: int, sample_id: str, *, seed: Optional[int] = None
    ) -> torch.Tensor:
        """A sample's initial state for this sampler: noise.initial_noise scaled by init_noise_sigma()
        (float32, CPU; the same standard normal draw for both samplers)."""
        return initial_noise(shape, base_seed, sample_id, self.sigma_max, seed=seed, scale=self.init_noise_sigma())

    def sample(
        self,
        denoise: DenoiseFn,
        noise: torch.Tensor,
        *,
        dtype: torch.dtype = torch.float32,
        hooks: Optional[StepHooks] = None,
        progress: Optional[ProgressFn] = None,
    ) -> torch.Tensor:
        """Run the chosen sampler from `noise`; returns the clean latent as float32."""
        if self.name == "euler":
            return euler_sample(denoise, noise, self.sigmas(), dtype=dtype, hooks=hooks, progress=progress)
        return res_sample(
            denoise,
            noise,
            num_steps=self.num_steps,
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
            rho=self.rho,
            dtype=dtype,
            hooks=hooks,
            progress=progress,
        )

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-ready values (sigma_min resolved) for sidecars."""
        return dataclasses.asdict(self)
