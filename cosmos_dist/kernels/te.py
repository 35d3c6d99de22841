"""NVIDIA Transformer Engine for FP8: whether it imports, its backends, recipes and shape rule. Used by
`precision.fp8_linear_kernel=te` (`TeFp8Linear` in cosmos_dist.models.fp8) and `precision.fp8_attention_kernel=te`
(cosmos_dist.attention.fp8_te). A leaf: it imports no other module of cosmos_dist.

The default FP8 linear (`Fp8Linear`, kernel `cublas`) calls cuBLASLt's FP8 GEMM through
`torch._scaled_mm` with one scale per weight row and per token. With Transformer Engine installed
(`pip install cosmos-dist[te]`) the same layers can run as `te.Linear` instead, under TE's
*current scaling* recipe in e4m3: one scale per tensor, computed from the tensor at every call (no
amax history, so the two guidance passes and the sampling steps do not influence each other's
scales, and no calibration is needed).

Why it is not the default: both paths end in the same cuBLASLt FP8 GEMM, and the row-wise scales of
the default are finer than TE's per-tensor ones. The TE call is kept outside compiled graphs
(`torch.compiler.disable`): TE 2.20's `te.Linear` has a compile path of its own, but it has not been
run here, so the norm / modulation / GELU before it cannot fuse the quantisation the way the default's
can. TE has not been run on a GPU by this project (docs/PERFORMANCE.md).

What TE accepts was read from its 2.20.2 sources (transformer_engine/pytorch/...), and the stand-in
tests/fake_transformer_engine.py keeps to the same rules:
- FP8 GEMM shapes (utils.py `assert_dim_for_fp8_exec`, lines 704-715, called by module/linear.py line 472
  on both the input and the weight): the product of all dimensions but the last divisible by 8 and the
  last divisible by 16, else ValueError. So a layer is converted where in_features % 16 == 0 and
  out_features % 8 == 0, and token counts that are not a multiple of 8 are padded with zero rows (they
  do not change a per-tensor amax, so the real rows get exactly the FP8 result they would get alone).
- `te.autocast(enabled=, calibrating=, recipe=, amax_reduction_group=)` (quantization.py, class `autocast`,
  line 972 on);
  `fp8_autocast` is deprecated there (lines 941-966, a DeprecationWarning) and used here only where a TE
  predates `autocast`. `recipe=None` means TE's default recipe (`get_default_fp8_recipe`, lines 242-254:
  MXFP8 where supported, else delayed scaling), never current scaling, so the recipe is always passed.
- FP8 attention backends (attention/dot_product_attention/utils.py `get_attention_backend`, lines 717-808
  and 1863-1900): see `attention_backend` below.

Inference only: the weights have no gradient, TE casts the bf16 weight to FP8 at each call (one pass
over the weight, small beside the GEMM at video token counts), and its bf16 weight is also what
`set_fp8_enabled(net, False)` runs on, so the high-precision steps need no second copy.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch

INSTALL_HINT = "pip install cosmos-dist[te] (transformer-engine[pytorch])"
#: TE's FlashAttention 3: the `flash-attn-3` distribution with module `flash_attn_interface` (TE's own hint).
FA3_FOR_TE = ("FlashAttention 3 where Transformer Engine finds it (the flash-attn-3 package: "
              "git clone https://github.com/Dao-AILab/flash-attention && cd flash-attention/hopper && "
              "python setup.py install)")
#: TE's FP8 GEMM shape rule (rows = product of the leading dimensions, cols = the last).
TE_ROWS_MULTIPLE, TE_COLS_MULTIPLE = 8, 16


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


def te_version() -> str:
    import sys

    return str(getattr(sys.modules.get("transformer_engine"), "__version__", "unknown"))


def compute_capability(device: torch.device) -> tuple[int, int]:
    """The GPU's compute capability as TE sees it (its own helper, which its backend filter uses)."""
    te, _ = import_te()
    helper = getattr(getattr(te, "utils", None), "get_device_compute_capability", None)
    if helper is not None and (device.index is None or device.index == torch.cuda.current_device()):
        return tuple(helper())  # TE asks about the current device
    return tuple(torch.cuda.get_device_capability(device))


def available(device: torch.device) -> bool:
    """TE imports and `device` is a GPU with FP8 tensor cores (Ada / Hopper or newer)."""
    if device.type != "cuda" or _import()[0] is None:
        return False
    return compute_capability(device) >= (8, 9)


def require(device: torch.device, setting: str) -> None:
    """RuntimeError saying why `setting`=te cannot run on `device` (TE does not import, or no FP8 GPU)."""
    import_te()
    if not available(device):
        raise RuntimeError(f"{setting}=te needs a CUDA GPU with FP8 tensor cores (Ada, Hopper or newer); the DiT runs "
                           f"on {device}")


# ---- FP8 attention: which backend TE 2.20.2 would pick --------------------------------------------
def _cudnn_version() -> tuple[int, int, int]:
    """The cuDNN TE runs with (its own query where it has one, else PyTorch's)."""
    te, _ = import_te()
    helper = getattr(getattr(te, "utils", None), "get_cudnn_version", None)
    if helper is not None:
        return tuple(helper())
    v = torch.backends.cudnn.version() or 0
    return v // 10000, (v // 100) % 100, v % 100


def _fa3_installed() -> bool:
    """TE's own record of whether it found FlashAttention 3 (set when its attention backends import)."""
    import sys

    utils = sys.modules.get("transformer_engine.pytorch.attention.dot_product_attention.utils")
    return bool(getattr(getattr(utils, "FlashAttentionUtils", None), "v3_is_installed", False))


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def attention_backend(capability: tuple[int, int], fa3_installed: bool, cudnn: tuple[int, int, int],
                      env=_env) -> tuple[str | None, str]:
    """(backend, "") or (None, what to do): the backend TE 2.20.2 picks for our FP8 self-attention call.

    Our call: bshd, no mask, no bias, head size <= 256, dropout 0, no context parallelism, module in eval
    mode, recipe Float8CurrentScaling(fp8_dpa=True). TE's filter (utils.py `get_attention_backend`):
    - FlashAttention 2 and 4 never run FP8 attention (lines 722-727);
    - FlashAttention 3 only on sm90 (lines 646-649), only in eval mode (lines 728-731: "Disabling FlashAttention 3
      for FP8 training"), only for delayed or current scaling (732-737), and only where installed (1865);
    - the unfused backend only with NVTE_UnfusedDPA_Emulate_FP8=1, an emulation (lines 738-745);
    - FusedAttention (cuDNN) under current scaling only on sm100+ with cuDNN >= 9.14 (lines 757-773); under
      MXFP8 (NVTE_DPA_FP8_RECIPE=MXFP8BlockScaling) on sm100+ with cuDNN >= 9.21, not 9.23.0/9.23.1 (774-790);
    - nothing on sm120 (lines 796-808); FusedAttention is preferred where both remain (lines 1892-1897).
    The recipe switch NVTE_DPA_FP8_RECIPE (dot_product_attention.py, its table at lines 323-402) is honoured:
    "F16" turns FP8 attention off (refused: the run would claim FP8 attention); "DelayedScaling" takes each
    call's scales from earlier calls, and one TE module serves every layer here, so layer i+1 would be scaled
    by layer i's amax (refused)."""
    switch = env("NVTE_DPA_FP8_RECIPE", "")
    if switch == "F16":
        return None, ("NVTE_DPA_FP8_RECIPE=F16 makes Transformer Engine run attention in BF16; unset it, or set "
                      "precision.fp8_attention=false")
    if switch == "DelayedScaling":
        return None, ("NVTE_DPA_FP8_RECIPE=DelayedScaling scales each call by earlier calls' amax, and one TE module "
                      "serves every layer here; unset it")
    if switch not in ("", "Float8CurrentScaling", "MXFP8BlockScaling"):
        return None, f"unknown NVTE_DPA_FP8_RECIPE={switch!r}; unset it"
    mxfp8 = switch == "MXFP8BlockScaling"
    gpu = f"sm{capability[0]}{capability[1]}"
    if capability == (12, 0):
        return None, (f"Transformer Engine 2.20 has no FP8 attention on {gpu}; choose "
                      "precision.fp8_attention_kernel=cudnn or triton")
    fused = capability >= (10, 0) and env("NVTE_FUSED_ATTN", "1") != "0"
    if mxfp8:
        fused = fused and cudnn >= (9, 21, 0) and cudnn[:3] not in ((9, 23, 0), (9, 23, 1))
    else:
        fused = fused and cudnn >= (9, 14, 0)
    flash3 = (capability == (9, 0) and not mxfp8 and fa3_installed and env("NVTE_FLASH_ATTN", "1") != "0"
              and env("NVTE_FLASH_ATTN_V3", "1") != "0")
    if fused:
        return "FusedAttention (cuDNN)", ""
    if flash3:
        return "FlashAttention 3", ""
    if env("NVTE_UnfusedDPA_Emulate_FP8", "0") == "1" and env("NVTE_UNFUSED_ATTN", "1") != "0":
        return "UnfusedDotProductAttention (FP8 emulation)", ""
    cudnn_s = ".".join(map(str, cudnn))
    if capability == (9, 0):
        return None, (f"on {gpu} Transformer Engine 2.20 runs FP8 attention under current scaling only through "
                      f"FlashAttention 3 (its cuDNN FP8 attention needs sm100+ for this recipe); install {FA3_FOR_TE}, "
                      "or choose precision.fp8_attention_kernel=cudnn")
    if capability >= (10, 0):
        need = "9.21 (not 9.23.0/9.23.1)" if mxfp8 else "9.14"
        return None, (f"Transformer Engine's FP8 attention on {gpu} needs cuDNN >= {need}, it has {cudnn_s} "
                      "(or NVTE_FUSED_ATTN=0 is set); upgrade cuDNN, or choose precision.fp8_attention_kernel=cudnn")
    return None, (f"Transformer Engine 2.20 has no FP8 attention on {gpu} (FlashAttention 3 needs sm90, its cuDNN "
                  "FP8 attention sm100+); choose precision.fp8_attention_kernel=cudnn or triton")


def require_attention(device: torch.device) -> str:
    """The backend TE will run FP8 attention on for `device`, or RuntimeError with what to install or choose.
    Builds the FP8 attention recipe too, so a TE that refuses FP8 attention is reported here, before any
    model loads."""
    require(device, "fp8_attention_kernel")
    current_scaling_recipe(attention=True)
    backend, why = attention_backend(compute_capability(device), _fa3_installed(), _cudnn_version())
    if backend is None:
        raise RuntimeError(f"fp8_attention_kernel=te: {why}")
    return backend


def current_scaling_recipe(attention: bool = False):
    """TE's per-tensor current-scaling recipe in e4m3; `attention` asks for FP8 dot-product attention too.

    TE 2.x releases before FP8 attention under current scaling refuse `fp8_dpa` in the recipe's own checks
    (an AssertionError); that is reported as a RuntimeError saying what to change."""
    te, recipe = import_te()
    try:
        return recipe.Float8CurrentScaling(fp8_format=recipe.Format.E4M3, fp8_dpa=attention)
    except (AssertionError, AttributeError, TypeError, ValueError) as exc:  # AttributeError: a TE without this recipe
        what = "FP8 attention" if attention else "FP8 linears"
        raise RuntimeError(
            f"this Transformer Engine ({te_version()}) has no {what} under its current-scaling recipe ({exc}); "
            "upgrade transformer-engine, or choose another kernel"
        ) from None


def autocast(recipe) -> contextlib.AbstractContextManager:
    """TE's FP8 region for `recipe`: `te.autocast` where this TE has it, else the older (now deprecated)
    `te.fp8_autocast`."""
    te, _ = import_te()
    if hasattr(te, "autocast"):
        return te.autocast(enabled=True, recipe=recipe)
    return te.fp8_autocast(enabled=True, fp8_recipe=recipe)


def linear_fits(in_features: int, out_features: int) -> bool:
    """TE's FP8 GEMM takes this weight (out, in): out % 8 and in % 16 (its input then needs in % 16 too)."""
    return in_features % TE_COLS_MULTIPLE == 0 and out_features % TE_ROWS_MULTIPLE == 0
