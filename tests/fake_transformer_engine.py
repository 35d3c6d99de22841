"""A stand-in for the part of NVIDIA Transformer Engine's PyTorch API that cosmos_dist.kernels.te,
cosmos_dist.models.fp8 (TeFp8Linear), cosmos_dist.attention.fp8_te and cp_impl=te use, for CPU tests of that
wiring.

Checked against the Python sources of Transformer Engine 2.20.2 (the transformer-engine-cu13 2.20.2 wheel,
transformer_engine/...); it refuses what that release refuses and accepts what it accepts for every call
this project makes (an "old" variant models a 2.x release before `autocast`, whose current-scaling recipe
refused `fp8_dpa`). Line numbers are of 2.20.2:
- common/recipe/__init__.py: `Format`; `DelayedScaling`, `Float8CurrentScaling`, `MXFP8BlockScaling` and
  `Float8BlockScaling` (the last refuses fp8_dpa / fp8_mha, lines 461-463; all refuse pure E5M2); the
  `delayed()` / `float8_current_scaling()` / `mxfp8()` / `float8_block_scaling()` class tests (lines 136-170).
- pytorch/quantization.py: `autocast(enabled=, calibrating=, recipe=, amax_reduction_group=, _graph=)`
  (class at line 972); `recipe=None` is the default recipe (`get_default_fp8_recipe`, lines 242-254:
  MXFP8BlockScaling on sm100-sm11x, Float8CurrentScaling on sm120+, else DelayedScaling); `fp8_autocast` warns
  DeprecationWarning and forwards (lines 941-969).
- pytorch/module/linear.py: `Linear.__init__` keywords (lines 2002-2030) and `forward(inp,
  is_first_microbatch=, fp8_output=, fp8_grad=)` (line 2346); in an FP8 region both the input and the weight
  go through utils.py `assert_dim_for_fp8_exec` (lines 704-715): leading product % 8 and last dim % 16, else
  ValueError with TE's message.
- pytorch/attention/dot_product_attention/dot_product_attention.py: `DotProductAttention.__init__` keywords
  (lines 854-878) and forward keywords (lines 1935-1972); the backend is chosen per call with the module's
  `training` flag (line 2796) and "No dot product attention backend is available ..." raised as ValueError
  (lines 2898-2903). Under Float8CurrentScaling with fp8_dpa the filter sees that recipe (lines 1207-1222 make
  a DelayedScaling one for S / dP only; utils.py lines 718-721 take local_recipes[0]); NVTE_DPA_FP8_RECIPE
  (read at import, line 403) switches it.
- pytorch/attention/dot_product_attention/utils.py `get_attention_backend`: the filters for our calls
  (bshd, no mask, no bias): compute capability (lines 639-668), data type (669-716), FP8 execution (717-808),
  context parallelism (1269-1379), installed flash-attn (1863-1868), FusedAttention preferred (1892-1897).
  cuDNN's own per-shape support check (`tex.get_fused_attn_backend`) is not modelled: FusedAttention is
  taken as available wherever the Python filter leaves it.
Each FP8 call is recorded in `calls` as (kind, recipe, backend); modules built in `built`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
import os
import sys
import types
import warnings

import torch
from torch import nn
from torch.nn import functional as F

E4M3 = torch.float8_e4m3fn
ATTENTION_UTILS = "transformer_engine.pytorch.attention.dot_product_attention.utils"
NO_BACKEND = ("No dot product attention backend is available for the provided inputs. Please run with "
              "NVTE_DEBUG=1 NVTE_DEBUG_LEVEL=2 to find out the reasons for disabling all backends.")


def quantize_tensor(x: torch.Tensor) -> torch.Tensor:
    """x through e4m3 with one scale per tensor (amax / 448), back in float32."""
    scale = x.abs().amax().float().clamp_min(1e-12) / 448.0
    return (x.float() / scale).clamp(-448.0, 448.0).to(E4M3).float() * scale


class FakeTransformerEngine:
    """`capability`: the GPU TE sees; `fa3_installed` / `flash_attn_installed`: flash-attn 3 / 2 next to TE;
    `cudnn`: TE's cuDNN; `modern=False`: a 2.x TE before `autocast` whose current scaling refuses fp8_dpa.
    NVTE_* variables are read from the environment when the stand-in is built, as TE reads them at import."""

    def __init__(self, modern: bool = True, capability=(9, 0), fa3_installed: bool = True,
                 flash_attn_installed: bool = False, cudnn=(9, 14, 0)):
        self.capability, self.cudnn = tuple(capability), tuple(cudnn)
        self.env = dict(os.environ)
        self.calls: list[tuple[str, object, str]] = []
        self.built: list[tuple[str, dict]] = []
        self._active: list[object] = []
        self.modules = self._build(modern, fa3_installed, flash_attn_installed)

    # ---- the fake package ---------------------------------------------------------------------
    def _build(self, modern: bool, fa3_installed: bool, flash_attn_installed: bool) -> dict[str, types.ModuleType]:
        fake = self

        class Format(enum.Enum):
            E4M3 = "E4M3"
            E5M2 = "E5M2"
            HYBRID = "HYBRID"

        class Recipe:
            @classmethod
            def delayed(cls):
                return issubclass(cls, DelayedScaling)

            @classmethod
            def float8_current_scaling(cls):
                return issubclass(cls, Float8CurrentScaling)

            @classmethod
            def mxfp8(cls):
                return issubclass(cls, MXFP8BlockScaling)

            @classmethod
            def float8_block_scaling(cls):
                return issubclass(cls, Float8BlockScaling)

            def __post_init__(self):
                assert self.fp8_format != Format.E5M2, "Pure E5M2 training is not supported."

        @dataclasses.dataclass
        class DelayedScaling(Recipe):
            margin: int = 0
            fp8_format: Format = Format.HYBRID
            amax_history_len: int = 1024
            amax_compute_algo: str = "max"
            fp8_dpa: bool = False
            fp8_mha: bool = False

        @dataclasses.dataclass
        class Float8CurrentScaling(Recipe):
            fp8_format: Format = Format.HYBRID
            fp8_dpa: bool = False
            fp8_mha: bool = False

            def __post_init__(self):
                super().__post_init__()
                if not modern:  # as 2.x releases before FP8 attention under current scaling
                    assert not (self.fp8_dpa or self.fp8_mha), \
                        "FP8 attention is not supported for Float8CurrentScaling."

        @dataclasses.dataclass
        class MXFP8BlockScaling(Recipe):
            fp8_format: Format = Format.E4M3
            fp8_dpa: bool = False
            fp8_mha: bool = False

        @dataclasses.dataclass
        class Float8BlockScaling(Recipe):
            fp8_format: Format = Format.E4M3
            fp8_dpa: bool = False
            fp8_mha: bool = False

            def __post_init__(self):
                assert not self.fp8_dpa and not self.fp8_mha, "FP8 attention is not supported for Float8BlockScaling."
                super().__post_init__()

        def default_recipe():
            if (10, 0) <= fake.capability < (12, 0):
                return MXFP8BlockScaling()
            if fake.capability >= (12, 0):
                return Float8CurrentScaling()
            return DelayedScaling()

        @contextlib.contextmanager
        def autocast(enabled=True, calibrating=False, recipe=None, amax_reduction_group=None, _graph=False):
            fake._active.append((recipe if recipe is not None else default_recipe()) if enabled else None)
            try:
                yield
            finally:
                fake._active.pop()

        def fp8_autocast(enabled=True, calibrating=False, fp8_recipe=None, fp8_group=None, _graph=False):
            if modern:  # deprecated once autocast exists
                warnings.warn("fp8_autocast is deprecated and will be removed in a future release. Use "
                              "autocast(enabled=..., calibrating=..., recipe=..., group=..., _graph=...) instead.",
                              DeprecationWarning, stacklevel=2)
            return autocast(enabled=enabled, calibrating=calibrating, recipe=fp8_recipe,
                            amax_reduction_group=fp8_group, _graph=_graph)

        def assert_dim_for_fp8_exec(*tensors):
            for t in tensors:
                if math.prod(t.shape[:-1]) % 8 != 0 or t.shape[-1] % 16 != 0:
                    raise ValueError(
                        "FP8 execution requires the product of all dimensions except the last to be divisible by 8 "
                        "and the last dimension to be divisible by 16, but got tensor with dims="
                        f"{list(t.size())} (product of leading dims = {math.prod(t.shape[:-1])}, last dim = "
                        f"{t.shape[-1]})")

        class Linear(nn.Module):
            def __init__(self, in_features, out_features, sequence_parallel=False, fuse_wgrad_accumulation=False,
                         tp_group=None, tp_size=1, get_rng_state_tracker=None, rng_tracker_name=None,
                         init_method=None, bias=True, return_bias=False, params_dtype=None, parallel_mode=None,
                         parameters_split=None, device="cuda", ub_overlap_ag=False, ub_overlap_rs=False,
                         ub_overlap_rs_dgrad=False, ub_bulk_dgrad=False, ub_bulk_wgrad=False, ub_name=None,
                         delay_wgrad_compute=False, symmetric_ar_type=None, save_original_input=False, name=None):
                super().__init__()
                params_dtype = torch.get_default_dtype() if params_dtype is None else params_dtype
                fake.built.append(("Linear", {"bias": bias, "params_dtype": params_dtype}))
                self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=params_dtype, device=device))
                self.bias = nn.Parameter(torch.zeros(out_features, dtype=params_dtype, device=device)) if bias else None

            def forward(self, inp, is_first_microbatch=None, fp8_output=False, fp8_grad=False):
                recipe = fake.active_recipe()
                if recipe is None:
                    return F.linear(inp, self.weight, self.bias)
                assert_dim_for_fp8_exec(inp, self.weight)
                fake.calls.append(("Linear", recipe, "cublas"))
                out = quantize_tensor(inp) @ quantize_tensor(self.weight).t()
                if self.bias is not None:
                    out = out + self.bias.float()
                return out.to(inp.dtype)

        class DotProductAttention(nn.Module):
            def __init__(self, num_attention_heads, kv_channels, num_gqa_groups=None, attention_dropout=0.0,
                         qkv_format="sbhd", attn_mask_type="causal", window_size=None, bottom_right_diagonal=None,
                         softcap=0.0, sequence_parallel=False, tp_size=1, get_rng_state_tracker=None, tp_group=None,
                         layer_number=None, attention_type="self", cp_group=None, cp_global_ranks=None,
                         cp_stream=None, cp_comm_type="p2p", softmax_scale=None, softmax_type="vanilla",
                         return_max_logit=False, name=None):
                super().__init__()
                self.heads, self.head_dim = num_attention_heads, kv_channels
                self.qkv_format, self.mask = qkv_format, attn_mask_type
                self.context_parallel, self.cp_comm_type = cp_group is not None, cp_comm_type
                self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(kv_channels)
                fake.built.append(("DotProductAttention", {
                    "qkv_format": qkv_format, "attn_mask_type": attn_mask_type, "attention_type": attention_type,
                    "dropout": attention_dropout, "softmax_scale": softmax_scale}))

            def forward(self, query_layer=None, key_layer=None, value_layer=None, attention_mask=None, qkv_format=None,
                        cu_seqlens_q=None, cu_seqlens_kv=None, cu_seqlens_q_padded=None, cu_seqlens_kv_padded=None,
                        max_seqlen_q=None, max_seqlen_kv=None, attn_mask_type=None, window_size=None,
                        bottom_right_diagonal=None, softcap=None, checkpoint_core_attention=False,
                        core_attention_bias_type="no_bias", core_attention_bias=None, alibi_slopes=None,
                        fast_zero_fill=True, inference_params=None, pad_between_seqs=None, fp8_output=False,
                        bf16_backward=False, num_splits=1, score_mod=None, score_mod_bprop=None,
                        score_mod_tensors=None, score_mod_bprop_tensors=None, qkv_layer=None, kv_layer=None,
                        qkv_interleave_dim=-3, thd_attention_policies=None, thd_attention_policy_dispatch="auto"):
                assert (qkv_format or self.qkv_format) == "bshd" and self.mask == "no_mask", "only our call is modelled"
                b, s, h, d = query_layer.shape
                assert (h, d) == (self.heads, self.head_dim)
                recipe = fake.active_recipe()
                fp8 = recipe is not None and (recipe.fp8_dpa or recipe.fp8_mha)
                if fp8 and fake.env.get("NVTE_DPA_FP8_RECIPE", "") == "F16":
                    recipe.fp8_dpa = recipe.fp8_mha = fp8 = False  # TE clears them on the autocast recipe itself
                backend = fake.attention_backend(query_layer.dtype, h, fp8 and recipe, self.training,
                                                 self.context_parallel, self.cp_comm_type, fa3_installed,
                                                 flash_attn_installed)
                if backend is None:
                    raise ValueError(NO_BACKEND)
                q, k, v = query_layer.float(), key_layer.float(), value_layer.float()
                if fp8:
                    fake.calls.append(("DotProductAttention", recipe, backend))
                    q, k, v = quantize_tensor(q), quantize_tensor(k), quantize_tensor(v)
                scores = torch.einsum("blhd,bmhd->bhlm", q, k) * self.scale
                out = torch.einsum("bhlm,bmhd->blhd", torch.softmax(scores, -1), v)
                return out.reshape(b, s, h * d).to(query_layer.dtype)

        te = types.ModuleType("transformer_engine")
        te.__version__ = "2.20.2-fake" if modern else "2.1.0-fake"
        common = types.ModuleType("transformer_engine.common")
        recipe_mod = types.ModuleType("transformer_engine.common.recipe")
        for cls in (Format, Recipe, DelayedScaling, Float8CurrentScaling, MXFP8BlockScaling, Float8BlockScaling):
            setattr(recipe_mod, cls.__name__, cls)
        pt = types.ModuleType("transformer_engine.pytorch")
        pt.Linear, pt.DotProductAttention, pt.fp8_autocast = Linear, DotProductAttention, fp8_autocast
        if modern:
            pt.autocast = autocast
        utils = types.ModuleType("transformer_engine.pytorch.utils")
        utils.get_device_compute_capability = lambda: fake.capability
        utils.get_cudnn_version = lambda: fake.cudnn
        utils.assert_dim_for_fp8_exec = assert_dim_for_fp8_exec
        pt.utils = utils
        att_utils = types.ModuleType(ATTENTION_UTILS)
        att_utils.FlashAttentionUtils = types.SimpleNamespace(is_installed=flash_attn_installed,
                                                              v3_is_installed=fa3_installed)
        te.common, te.pytorch, common.recipe = common, pt, recipe_mod
        return {"transformer_engine": te, "transformer_engine.common": common,
                "transformer_engine.common.recipe": recipe_mod, "transformer_engine.pytorch": pt,
                "transformer_engine.pytorch.utils": utils, ATTENTION_UTILS: att_utils}

    # ---- TE 2.20.2's backend filter, for the calls modelled ----------------------------------------
    def attention_backend(self, dtype, heads, fp8_recipe, training, context_parallel, cp_comm_type,
                          fa3_installed, flash_attn_installed) -> str | None:
        """The backend `get_attention_backend` selects (None: none). `fp8_recipe`: the recipe when FP8
        attention is on, else falsy. bshd, no mask, no bias, head size <= 256, not deterministic."""
        cap, env = self.capability, self.env
        on = lambda name: env.get(name, "1") != "0"  # noqa: E731
        fa2 = on("NVTE_FLASH_ATTN") and on("NVTE_FLASH_ATTN_V2") and cap >= (8, 0)
        fa3 = on("NVTE_FLASH_ATTN") and on("NVTE_FLASH_ATTN_V3") and cap == (9, 0)
        fused = on("NVTE_FUSED_ATTN") and cap >= (8, 0)
        unfused = on("NVTE_UNFUSED_ATTN")
        if dtype not in (torch.bfloat16, torch.float16):
            fa2 = fa3 = fused = False
        if fp8_recipe:
            switch = env.get("NVTE_DPA_FP8_RECIPE", "")
            seen = fp8_recipe
            if fp8_recipe.float8_current_scaling() and switch == "DelayedScaling":
                seen = self.modules["transformer_engine.common.recipe"].DelayedScaling(
                    fp8_format=fp8_recipe.fp8_format, amax_history_len=1, fp8_dpa=True)
            elif fp8_recipe.float8_current_scaling() and switch == "MXFP8BlockScaling":
                seen = self.modules["transformer_engine.common.recipe"].MXFP8BlockScaling(fp8_dpa=True)
            fa2 = False
            if training or not (seen.delayed() or seen.float8_current_scaling()):
                fa3 = False
            if env.get("NVTE_UnfusedDPA_Emulate_FP8", "0") != "1":
                unfused = False
            if seen.float8_current_scaling():
                fused = fused and cap >= (10, 0) and self.cudnn >= (9, 14, 0)
            elif seen.mxfp8():
                fused = fused and cap >= (10, 0) and self.cudnn >= (9, 21, 0) and self.cudnn not in ((9, 23, 0),
                                                                                                      (9, 23, 1))
            elif not seen.delayed():
                fused = False
            if cap == (12, 0):
                fa2 = fa3 = fused = False
        if context_parallel:
            unfused = False
            if fp8_recipe:
                fa2 = fa3 = False
            if cp_comm_type in ("a2a", "a2a+p2p") and heads % 2:
                fused = False
        fa2, fa3 = fa2 and flash_attn_installed, fa3 and fa3_installed
        if fused:
            return "FusedAttention"
        if fa3:
            return "FlashAttention 3"
        if fa2:
            return "FlashAttention 2"
        return "UnfusedDotProductAttention" if unfused else None

    # ---- use ----------------------------------------------------------------------------------
    def active_recipe(self):
        return self._active[-1] if self._active else None

    def install(self, monkeypatch) -> "FakeTransformerEngine":
        from cosmos_dist.kernels import te as te_support

        for name, module in self.modules.items():
            monkeypatch.setitem(sys.modules, name, module)
        te_support._import.cache_clear()
        monkeypatch.setattr(te_support, "_import", _uncached(te_support._import))
        return self

    def kinds(self) -> set[str]:
        return {kind for kind, *_ in self.calls}

    def backends(self, kind: str = "DotProductAttention") -> set[str]:
        return {backend for k, _, backend in self.calls if k == kind}


def _uncached(fn):
    """The import helper without its cache, so each test sees the TE it installed (or none)."""
    return getattr(fn, "__wrapped__", fn)
