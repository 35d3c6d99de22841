"""What the sampling loops call: the guided denoiser and optional per-step hooks.

The loops know nothing about the network, its conditions, the tensor layout or parallelism. The
state x may be a full latent (B, 16, T, H, W) or one context-parallel rank's token shard
(B, n, 64): every sampler operation is elementwise, and the only shape the loops read is the
batch size B = x.shape[0] for the per-sample c_noise vector.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

import torch

# progress(step_index, total, state): called after each network evaluation, step_index counting from 0, with the
# latent after that evaluation (Euler: the new state; RES: the evaluation's denoised estimate), in the loop's
# layout: a whole latent or this rank's token shard.
ProgressFn = Callable[[int, int, torch.Tensor], None]


class DenoiseFn(Protocol):
    """Returns the GUIDED raw network output F for the network input.

    x_net:   c_in(sigma) * x_in, already cast to the network's run dtype.
    c_noise: 0.25 * ln(sigma), shape (B,), in the run dtype (bf16 in the reference; pitfall 1).
    sigma:   the current sigma as a python float (the float32 schedule value for Euler).
    step:    index of the network evaluation, from 0.
    """

    def __call__(self, x_net: torch.Tensor, c_noise: torch.Tensor, sigma: float, step: int) -> torch.Tensor: ...


class StepHooks(Protocol):
    """Per-step changes to the state and the network output (Video2World, spec 2.6).

    The default methods change nothing; subclass and override what you need.
    """

    def network_input(self, x: torch.Tensor, sigma: float, step: int) -> torch.Tensor:
        """The x_in used for this step (e.g. the state with the condition frames replaced).

        The network sees c_in * x_in, and the step's update starts from x_in, not x.
        """
        return x

    def replace_output(self, f: torch.Tensor, x_in: torch.Tensor, sigma: float, step: int) -> torch.Tensor:
        """The F used for the update (e.g. replaced so that D equals the condition latent)."""
        return f


class NullHooks(StepHooks):
    """Hooks that change nothing (used when none are given)."""


def resolve_hooks(hooks: Optional[StepHooks]) -> StepHooks:
    return NullHooks() if hooks is None else hooks


def batch_c_noise(value: torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """c_noise as the network takes it: cast to the run dtype, one entry per sample, on x's device.

    The cast happens on the scalar before expanding, so every entry is the same bf16 value the
    reference passes (it casts its float32 timestep to bf16).
    """
    return value.to(dtype).to(x.device).expand(x.shape[0]).contiguous()


def check_output(f: torch.Tensor, x_in: torch.Tensor) -> None:
    """Catch a network output that would silently broadcast against the state."""
    if f.shape != x_in.shape:
        raise ValueError(f"denoiser output shape {tuple(f.shape)} != state shape {tuple(x_in.shape)}")
