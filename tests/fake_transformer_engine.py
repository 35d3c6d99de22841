"""A stand-in for the part of NVIDIA Transformer Engine's documented PyTorch API that
cosmos_dist.models.fp8_te and cosmos_dist.attention.fp8_te use, for CPU tests of that wiring.

It keeps TE's signatures and contracts where the wiring depends on them, and refuses what TE refuses:
- `transformer_engine.common.recipe`: `Format` (E4M3, HYBRID) and `Float8CurrentScaling(fp8_format=...,
  fp8_dpa=...)`; an "old" TE refuses `fp8_dpa=True` in the recipe's own checks, as TE releases before
  FP8 attention under current scaling do;
- `transformer_engine.pytorch.autocast(enabled=, calibrating=, recipe=, amax_reduction_group=)` (TE >= 2.8)
  or only the older `fp8_autocast(enabled=, calibrating=, fp8_recipe=, fp8_group=)`;
- `Linear(in_features, out_features, bias=..., params_dtype=..., device=...)` with a `weight`
  parameter of shape (out, in); inside an FP8 region it quantises input and weight with one e4m3 scale
  per tensor (current scaling) and, like TE, asserts the input's leading dimension is a multiple of 16;
- `DotProductAttention(num_attention_heads, kv_channels, attention_dropout=, qkv_format=,
  attn_mask_type=, attention_type=, softmax_scale=)`; forward(q, k, v) returns (B, S, H * D) for
  bshd; with a recipe asking `fp8_dpa`, q, k and v are quantised per tensor first.
Every FP8 call is recorded (`calls`), with the recipe it ran under.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
import sys
import types

import torch
from torch import nn
from torch.nn import functional as F

E4M3 = torch.float8_e4m3fn


def quantize_tensor(x: torch.Tensor) -> torch.Tensor:
    """x through e4m3 with one scale per tensor (amax / 448), back in float32."""
    scale = x.abs().amax().float().clamp_min(1e-12) / 448.0
    return (x.float() / scale).clamp(-448.0, 448.0).to(E4M3).float() * scale


class FakeTransformerEngine:
    def __init__(self, modern: bool = True, fp8_attention_in_recipe: bool = True):
        self.calls: list[tuple[str, object]] = []
        self.built: list[tuple[str, dict]] = []
        self._active: list[object] = []
        self.modules = self._build(modern, fp8_attention_in_recipe)

    # ---- the fake package ---------------------------------------------------------------------
    def _build(self, modern: bool, fp8_attention_in_recipe: bool) -> dict[str, types.ModuleType]:
        fake = self

        class Format(enum.Enum):
            E4M3 = "E4M3"
            HYBRID = "HYBRID"

        @dataclasses.dataclass
        class Float8CurrentScaling:
            fp8_format: Format = Format.HYBRID
            fp8_dpa: bool = False
            fp8_mha: bool = False

            def __post_init__(self):
                assert fp8_attention_in_recipe or not (self.fp8_dpa or self.fp8_mha), \
                    "FP8 attention is not supported for Float8CurrentScaling."

        @contextlib.contextmanager
        def region(enabled=True, recipe=None):
            fake._active.append(recipe if enabled else None)
            try:
                yield
            finally:
                fake._active.pop()

        def autocast(enabled=True, calibrating=False, recipe=None, amax_reduction_group=None, _graph=False):
            return region(enabled, recipe)

        def fp8_autocast(enabled=True, calibrating=False, fp8_recipe=None, fp8_group=None, _graph=False):
            return region(enabled, fp8_recipe)

        class Linear(nn.Module):
            def __init__(self, in_features, out_features, sequence_parallel=False, fuse_wgrad_accumulation=False,
                         tp_group=None, tp_size=1, get_rng_state_tracker=None, rng_tracker_name=None,
                         init_method=None, bias=True, return_bias=False, params_dtype=None, parallel_mode=None,
                         parameters_split=None, device="cuda", **rest):
                super().__init__()
                assert not rest, f"arguments TE's Linear does not take: {sorted(rest)}"
                fake.built.append(("Linear", {"bias": bias, "params_dtype": params_dtype}))
                self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=params_dtype, device=device))
                self.bias = nn.Parameter(torch.zeros(out_features, dtype=params_dtype, device=device)) if bias else None

            def forward(self, inp, is_first_microbatch=None, fp8_output=False):
                recipe = fake.active_recipe()
                if recipe is None:
                    return F.linear(inp, self.weight, self.bias)
                assert inp.shape[-1] % 16 == 0 and math.prod(inp.shape[:-1]) % 16 == 0, \
                    "FP8 execution requires 2D input matrices with height divisible by 8 and width divisible by 16"
                fake.calls.append(("Linear", recipe))
                out = quantize_tensor(inp) @ quantize_tensor(self.weight).t()
                return out.to(inp.dtype)

        class DotProductAttention(nn.Module):
            def __init__(self, num_attention_heads, kv_channels, num_gqa_groups=None, attention_dropout=0.0,
                         qkv_format="sbhd", attn_mask_type="causal", window_size=None, sequence_parallel=False,
                         tp_size=1, get_rng_state_tracker=None, tp_group=None, layer_number=None,
                         attention_type="self", cp_group=None, cp_global_ranks=None, cp_stream=None,
                         cp_comm_type="p2p", softmax_scale=None, **rest):
                super().__init__()
                assert not rest, f"arguments TE's DotProductAttention does not take: {sorted(rest)}"
                self.heads, self.head_dim = num_attention_heads, kv_channels
                self.qkv_format, self.mask = qkv_format, attn_mask_type
                self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(kv_channels)
                fake.built.append(("DotProductAttention", {"qkv_format": qkv_format, "attn_mask_type": attn_mask_type,
                                                           "attention_type": attention_type, "dropout": attention_dropout,
                                                           "softmax_scale": softmax_scale}))

            def forward(self, query_layer, key_layer, value_layer, attention_mask=None, qkv_format=None, **rest):
                assert (qkv_format or self.qkv_format) == "bshd" and self.mask == "no_mask"
                b, s, h, d = query_layer.shape
                assert (h, d) == (self.heads, self.head_dim)
                recipe = fake.active_recipe()
                q, k, v = query_layer.float(), key_layer.float(), value_layer.float()
                if recipe is not None and recipe.fp8_dpa:
                    fake.calls.append(("DotProductAttention", recipe))
                    q, k, v = quantize_tensor(q), quantize_tensor(k), quantize_tensor(v)
                scores = torch.einsum("blhd,bmhd->bhlm", q, k) * self.scale
                out = torch.einsum("bhlm,bmhd->blhd", torch.softmax(scores, -1), v)
                return out.reshape(b, s, h * d).to(query_layer.dtype)

        te = types.ModuleType("transformer_engine")
        te.__version__ = "2.20.0-fake" if modern else "2.1.0-fake"
        common = types.ModuleType("transformer_engine.common")
        recipe_mod = types.ModuleType("transformer_engine.common.recipe")
        recipe_mod.Format, recipe_mod.Float8CurrentScaling = Format, Float8CurrentScaling
        pt = types.ModuleType("transformer_engine.pytorch")
        pt.Linear, pt.DotProductAttention, pt.fp8_autocast = Linear, DotProductAttention, fp8_autocast
        if modern:
            pt.autocast = autocast
        te.common, te.pytorch, common.recipe = common, pt, recipe_mod
        return {"transformer_engine": te, "transformer_engine.common": common,
                "transformer_engine.common.recipe": recipe_mod, "transformer_engine.pytorch": pt}

    # ---- use ----------------------------------------------------------------------------------
    def active_recipe(self):
        return self._active[-1] if self._active else None

    def install(self, monkeypatch) -> "FakeTransformerEngine":
        from cosmos_dist.models import fp8_te

        for name, module in self.modules.items():
            monkeypatch.setitem(sys.modules, name, module)
        fp8_te._import.cache_clear()
        monkeypatch.setattr(fp8_te, "_import", _uncached(fp8_te._import))
        return self

    def kinds(self) -> set[str]:
        return {kind for kind, _ in self.calls}


def _uncached(fn):
    """The import helper without its cache, so each test sees the TE it installed (or none)."""
    return getattr(fn, "__wrapped__", fn)
