"""FP8 self-attention through Transformer Engine: `precision.fp8_attention_kernel=te`.

`te.DotProductAttention` in eval mode, without autograd, inside TE's FP8 region with a current-scaling
e4m3 recipe that asks for FP8 attention (`fp8_dpa=True`): TE casts q, k and v to e4m3 with one scale
per tensor computed from the tensor, runs its FP8 attention and returns bf16. No mask, softmax scale
1/sqrt(D), (B, L, H, D) in and out, as every local kernel here.

Which kernel TE runs depends on the GPU (TE 2.20.2's backend filter, read in its sources; the rules and
line numbers are in `cosmos_dist.kernels.te.attention_backend`):
- Hopper (sm90): FlashAttention 3's FP8 forward, and only that: TE turns off its cuDNN FP8 attention
  under current scaling below sm100, and FlashAttention 3 while the module is in training mode (hence
  `.eval()`). FA3 must be installed where TE looks for it (the `flash-attn-3` package); without it the
  run is refused before any model loads, naming the install or `precision.fp8_attention_kernel=cudnn`.
- Blackwell (sm100 / sm103 / sm110): cuDNN's fused FP8 attention ("FusedAttention"), with cuDNN >= 9.14.
- Ada (sm89) and sm120: TE has no FP8 attention there; refused before the run.
Not run on a GPU by this project (docs/PERFORMANCE.md).

TE's attention returns no log-sum-exp, so ring and usp context parallelism (which merge partial
results by it) cannot use it: with this kernel, cp_impl must be ulysses (each rank runs it on whole
heads); `pipeline.plan.check_fp8_attention_parallel` refuses the others before a run.
"""
from __future__ import annotations

import math

import torch

from cosmos_dist.errors import ConfigError
from cosmos_dist.kernels import te as te_support

NO_LSE = ("precision.fp8_attention_kernel=te: Transformer Engine's attention returns no log-sum-exp, which "
          "parallel.cp_impl={impl} needs to merge partial results; use parallel.cp_impl=ulysses, or "
          "precision.fp8_attention_kernel=cudnn / fa3 / triton")


class TeFp8Attention:
    """Callable (q, k, v) -> out; one TE module (and FP8 recipe) per (TE, heads, head size, device), built on
    first use (TE's module holds no weights; the key names the TE import so tests can swap it)."""

    def __init__(self):
        self._built: dict = {}

    def _module_and_recipe(self, heads: int, head_dim: int, device: torch.device):
        te, _ = te_support.import_te()
        key = (id(te), heads, head_dim, device)
        if key not in self._built:
            recipe = te_support.current_scaling_recipe(attention=True)  # an old TE refuses here, with what to do
            module = te.DotProductAttention(
                heads, head_dim, attention_dropout=0.0, qkv_format="bshd", attn_mask_type="no_mask",
                attention_type="self", softmax_scale=1.0 / math.sqrt(head_dim),
            )
            module.eval()  # TE turns FlashAttention 3 off for FP8 attention in training mode (sm90's only backend)
            self._built[key] = (module, recipe)
        return self._built[key]

    @torch.compiler.disable  # TE's FP8 attention runs eagerly (TE itself leaves compiled graphs for it)
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, lq, h, d = q.shape
        module, recipe = self._module_and_recipe(h, d, q.device)
        # TE's FP8 attention takes bf16 / fp16 in (its filter drops every backend for float32); the e4m3
        # cast that follows makes the bf16 rounding of a float32 run immaterial.
        in_dtype = q.dtype
        dtype = in_dtype if in_dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        q, k, v = (t.to(dtype).contiguous() for t in (q, k, v))
        with torch.no_grad(), te_support.autocast(recipe):
            out = module(q, k, v)
        return out.view(b, lq, h, d).to(in_dtype)  # TE returns (B, L, H * D) for bshd


_SHARED = TeFp8Attention()


def te_fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _SHARED(q, k, v)


def te_fp8_attention_with_lse(q, k, v, impl: str = "ring"):
    raise ConfigError(NO_LSE.format(impl=impl))
