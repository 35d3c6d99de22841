"""FP8 matrix products through NVIDIA Transformer Engine: `precision.fp8_linear_kernel=te`.

The default FP8 linear (`Fp8Linear`, kernel `cublas`) calls cuBLASLt's FP8 GEMM through
`torch._scaled_mm` with one scale per weight row and per token. With Transformer Engine installed
(`pip install cosmos-dist[te]`) the same layers can run as `te.Linear` instead, under TE's
*current scaling* recipe in e4m3: one scale per tensor, computed from the tensor at every call (no
amax history, so the two guidance passes and the sampling steps do not influence each other's
scales, and no calibration is needed).

Why it is not the default: both paths end in the same cuBLASLt FP8 GEMM, the row-wise scales of the
default are finer than TE's per-tensor ones, and under `torch.compile` the default's quantisation
fuses into the norm / modulation / GELU before it, where a TE layer is an opaque call (compiled
code stops at it). TE's wheel could not be carried to the GPU this project measures on, so this
path is kept to TE's documented API (`te.Linear`, `te.autocast` / `te.fp8_autocast`,
`recipe.Float8CurrentScaling`) and its tests run where TE imports (docs/PERFORMANCE.md).

Inference only: the weights have no gradient, TE casts the bf16 weight to FP8 at each call (one pass
over the weight, small beside the GEMM at video token counts), and its bf16 weight is also what
`set_fp8_enabled(net, False)` runs on, so the high-precision steps need no second copy.
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn
from torch.nn import functional as F

from cosmos_dist.models.fp8 import Fp8Layer

INSTALL_HINT = "pip install cosmos-dist[te] (transformer-engine[pytorch])"


@functools.lru_cache(maxsize=None)
def _import() -> tuple[object, object] | tuple[None, str]:
    """(transformer_engine.pytorch, transformer_engine.common.recipe), or (None, why) where TE does not import."""
    try:
        import transformer_engine.pytorch as te
        from transformer_engine.common import recipe
    except Exception as exc:  # ImportError, or a broken build failing in its own import (missing libs)
        return None, f"{type(exc).__name__}: {exc}"
    return te, recipe


def import_te():
    """(te, recipe) or RuntimeError naming the install."""
    te, recipe = _import()
    if te is None:
        raise RuntimeError(f"Transformer Engine does not import here ({recipe}); {INSTALL_HINT}")
    return te, recipe


def available(device: torch.device) -> bool:
    """TE imports and `device` is a GPU with FP8 tensor cores (Ada / Hopper or newer)."""
    if device.type != "cuda" or _import()[0] is None:
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def require(device: torch.device, setting: str) -> None:
    """RuntimeError saying why `setting`=te cannot run on `device` (TE does not import, or no FP8 GPU)."""
    import_te()
    if not available(device):
        raise RuntimeError(f"{setting}=te needs a CUDA GPU with FP8 tensor cores (Ada, Hopper or newer); the DiT runs "
                           f"on {device}")


def current_scaling_recipe(attention: bool = False):
    """TE's per-tensor current-scaling recipe in e4m3; `attention` asks for FP8 dot-product attention too.

    A TE older than FP8 attention under current scaling refuses `fp8_dpa` in the recipe's own checks;
    that is reported as a RuntimeError saying what to change."""
    te, recipe = import_te()
    try:
        return recipe.Float8CurrentScaling(fp8_format=recipe.Format.E4M3, fp8_dpa=attention)
    except (AssertionError, AttributeError, TypeError, ValueError) as exc:  # AttributeError: a TE without this recipe
        import transformer_engine

        version = getattr(transformer_engine, "__version__", "unknown")
        what = "FP8 attention" if attention else "FP8 linears"
        raise RuntimeError(
            f"this Transformer Engine ({version}) has no {what} under its current-scaling recipe ({exc}); "
            "upgrade transformer-engine, or choose another kernel"
        ) from None


def autocast(recipe) -> contextlib.AbstractContextManager:
    """TE's FP8 region for `recipe`: `te.autocast` where this TE has it, else the older `te.fp8_autocast`."""
    te, _ = import_te()
    if hasattr(te, "autocast"):
        return te.autocast(enabled=True, recipe=recipe)
    return te.fp8_autocast(enabled=True, fp8_recipe=recipe)


class TeFp8Linear(Fp8Layer):
    """A bias-free linear run by `te.Linear` in FP8; the original weight is copied into it (run dtype)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        te, _ = import_te()
        w = linear.weight.detach()  # on the GPU: resolve_linear_kernel only picks "te" there
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.linear = te.Linear(self.in_features, self.out_features, bias=False, params_dtype=w.dtype,
                                device=w.device)
        with torch.no_grad():
            self.linear.weight.copy_(w)
        self.linear.weight.requires_grad_(False)
        self.recipe = current_scaling_recipe(attention=False)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, transformer_engine=True"

    @torch.compiler.disable  # TE's modules are not traceable; compiled blocks call this eagerly
    def _fp8_forward(self, x2: torch.Tensor) -> torch.Tensor:
        with autocast(self.recipe):
            return self.linear(x2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        # TE's FP8 GEMM needs both dimensions of the input divisible by 16 (the layer's own are checked at
        # conversion); other token counts, and the high-precision steps, take the bf16 weight directly.
        if not self.fp8_enabled or x2.shape[0] % 16:
            y = F.linear(x2, self.linear.weight)
        else:
            y = self._fp8_forward(x2.contiguous())
        return y.reshape(*lead, self.out_features)
