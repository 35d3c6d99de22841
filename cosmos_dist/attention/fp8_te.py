"""FP8 self-attention through Transformer Engine: `precision.fp8_attention_kernel=te`.

`te.DotProductAttention` inside TE's FP8 region with a recipe that asks for FP8 attention
(`fp8_dpa=True`): TE casts q, k and v to e4m3 with per-tensor current scales, runs cuDNN's fused FP8
attention (its "FusedAttention" backend; the same cuDNN kernel as `fp8_cudnn`), and returns bf16.
No mask, softmax scale 1/sqrt(D), (B, L, H, D) in and out, as every local kernel here.

TE's attention returns no log-sum-exp, so ring and usp context parallelism (which merge partial
results by it) cannot use it: with this kernel, cp_impl must be ulysses (each rank runs it on whole
heads); `pipeline.stages.check_fp8_attention_parallel` refuses the others before a run.
"""
from __future__ import annotations

import math

import torch

from cosmos_dist.errors import ConfigError
from cosmos_dist.models import fp8_te

NO_LSE = ("precision.fp8_attention_kernel=te: Transformer Engine's attention returns no log-sum-exp, which "
          "parallel.cp_impl={impl} needs to merge partial results; use parallel.cp_impl=ulysses, or "
          "precision.fp8_attention_kernel=cudnn / fa3 / triton")


class TeFp8Attention:
    """Callable (q, k, v) -> out; one TE module (and FP8 recipe) per (TE, heads, head size, device), built on
    first use (TE's module holds no weights; the key names the TE import so tests can swap it)."""

    def __init__(self):
        self._built: dict = {}

    def _module_and_recipe(self, heads: int, head_dim: int, device: torch.device):
        te, _ = fp8_te.import_te()
        key = (id(te), heads, head_dim, device)
        if key not in self._built:
            recipe = fp8_te.current_scaling_recipe(attention=True)  # an old TE refuses here, with what to do
            module = te.DotProductAttention(
                heads, head_dim, attention_dropout=0.0, qkv_format="bshd", attn_mask_type="no_mask",
                attention_type="self", softmax_scale=1.0 / math.sqrt(head_dim),
            )
            self._built[key] = (module, recipe)
        return self._built[key]

    @torch.compiler.disable  # TE's modules are not traceable; compiled blocks call this eagerly
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, lq, h, d = q.shape
        module, recipe = self._module_and_recipe(h, d, q.device)
        with fp8_te.autocast(recipe):
            out = module(q.contiguous(), k.contiguous(), v.contiguous())
        return out.view(b, lq, h, d)  # TE returns (B, L, H * D) for bshd


_SHARED = TeFp8Attention()


def te_fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _SHARED(q, k, v)


def te_fp8_attention_with_lse(q, k, v, impl: str = "ring"):
    raise ConfigError(NO_LSE.format(impl=impl))
