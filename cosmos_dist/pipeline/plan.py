"""The precision and kernel plan of a pipeline, resolved once when the pipeline is built.

Where each model runs (device), in which dtype, with which attention kernel and FP8 kernels, whether the DiT's
blocks are compiled, and which sampling steps run without FP8. Everything that reads one of these choices reads it
from here: the model loader (FP8 conversion, compile), the sampler (attention callables) and the sidecar. A choice
that cannot run on this machine fails here, as a ConfigError naming the field, before any model loads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Optional

import torch

from cosmos_dist.errors import ConfigError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Inductor options for FP8 blocks: with multi_kernel, reductions up to 16,384 wide may be persistent (Inductor
# times both forms once and keeps the faster), so the per-token amax + e4m3 cast of the MLP's hidden rows reads
# each row once instead of twice: 4.90 -> 4.83 s per 7B FP8 step on an H100, while BF16 blocks gained nothing
# (6.60 vs 6.62 s), so they keep Inductor's defaults (docs/PERFORMANCE.md).
FP8_COMPILE_OPTIONS = {"triton.multi_kernel": 1}


def resolve_device(name: str, local_device_index: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device: cuda was asked for but torch sees no CUDA GPU; use device=cpu or device=auto")
        return torch.device("cuda", local_device_index)
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def should_compile(setting, device: torch.device) -> bool:
    setting = str(setting).lower()
    return device.type == "cuda" if setting == "auto" else setting == "true"


def compile_blocks(net, fp8: bool = False) -> None:
    """torch.compile each transformer block in place (parameter names stay the checkpoint's)."""
    for block in net.blocks.values():
        block.compile(dynamic=False, options=FP8_COMPILE_OPTIONS if fp8 else None)


def _resolve(prec, setting: str, resolve: Callable, device) -> str:
    """`resolve(precision.<setting>, device)`; its RuntimeError (cannot run here) as a ConfigError naming the field."""
    try:
        return resolve(getattr(prec, setting), device)
    except RuntimeError as exc:
        raise ConfigError(f"precision.{setting}: {exc}") from None


def attention_kernel(prec, device) -> str:
    """The local self-attention kernel precision.attention_kernel means on `device` (fa3, sdpa, ...)."""
    from cosmos_dist.attention.local import resolve_attention_kernel

    return _resolve(prec, "attention_kernel", resolve_attention_kernel, device)


def fp8_linear_kernel(prec, device) -> str | None:
    """The FP8 linear precision.fp8_linear_kernel means on `device` (cublas, te or emulated); None without FP8."""
    if not prec.fp8_linear:
        return None
    from cosmos_dist.models.fp8 import resolve_linear_kernel

    return _resolve(prec, "fp8_linear_kernel", resolve_linear_kernel, device)


def fp8_attention_kernel(prec, device) -> str | None:
    """The FP8 self-attention kernel precision.fp8_attention_kernel means on `device`; None without FP8 attention."""
    if not prec.fp8_attention:
        return None
    from cosmos_dist.attention.fp8 import resolve_kernel

    return _resolve(prec, "fp8_attention_kernel", resolve_kernel, device)


def check_fp8_attention_parallel(kernel: str | None, cp_impl: str) -> None:
    """FP8 self-attention under context parallelism: ring and usp merge partial results by their
    log-sum-exp, which Transformer Engine's attention does not return; cp_impl=te runs TE's own
    context-parallel attention, in BF16, whatever the FP8 kernel."""
    if kernel is None or cp_impl == "local":
        return
    if cp_impl == "te":
        raise ConfigError("parallel.cp_impl=te runs Transformer Engine's own attention in BF16, so "
                          "precision.fp8_attention would not apply; use parallel.cp_impl=ulysses, ring or usp with FP8 "
                          "attention (or precision.fp8_attention=false)")
    if kernel == "te" and cp_impl in ("ring", "usp"):
        from cosmos_dist.attention.fp8_te import NO_LSE

        raise ConfigError(NO_LSE.format(impl=cp_impl))


@dataclass
class PrecisionPlan:
    device: torch.device
    dit_dtype: torch.dtype
    tokenizer_dtype: torch.dtype
    text_dtype: torch.dtype
    attention_kernel: str  # local BF16 self-attention: fa3 | sdpa | cudnn | flash | efficient
    fp8_linear_kernel: Optional[str]  # cublas | te | emulated; None without FP8 linears
    fp8_attention_kernel: Optional[str]  # cudnn | fa3 | triton | te | emulated; None without FP8 attention
    compile: bool  # torch.compile the DiT's blocks
    fp8_high_precision_steps: int
    fp8_linear_layers: Optional[dict] = None  # {"fp8": N, "run_dtype": M}: set when the DiT is converted
    _attention_cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def resolve(cls, cfg: Any, runtime) -> "PrecisionPlan":
        prec = cfg.precision
        device = resolve_device(cfg.device, runtime.local_device_index)
        fp8_linear, fp8_attention = fp8_linear_kernel(prec, device), fp8_attention_kernel(prec, device)
        plan = cls(
            device=device,
            dit_dtype=resolve_dtype(prec.dit_dtype, device),
            tokenizer_dtype=resolve_dtype(prec.tokenizer_dtype, device),
            text_dtype=resolve_dtype(prec.text_encoder_dtype, device),
            attention_kernel=attention_kernel(prec, device),
            fp8_linear_kernel=fp8_linear,
            fp8_attention_kernel=fp8_attention,
            compile=should_compile(prec.compile, device),
            fp8_high_precision_steps=int(prec.fp8_high_precision_steps) if (fp8_linear or fp8_attention) else 0,
        )
        from cosmos_dist.pipeline.assets import dit_preset

        check_fp8_attention_parallel(fp8_attention, runtime.cp_impl_for(dit_preset(cfg).num_heads))
        return plan

    @property
    def fp8(self) -> bool:
        return self.fp8_linear_kernel is not None or self.fp8_attention_kernel is not None

    def high_precision_steps(self, num_steps: int) -> frozenset:
        """The first and last `fp8_high_precision_steps` steps, which run without FP8."""
        k = self.fp8_high_precision_steps
        if k == 0:
            return frozenset()
        return frozenset(range(min(k, num_steps))) | frozenset(range(max(0, num_steps - k), num_steps))

    def attention(self, runtime, parallel_cfg, grid, num_heads: int) -> tuple[dict, Optional[Callable]]:
        """The denoiser's attention keywords on this runtime (self-attention callable, guidance mode) and the
        self-attention of the high-precision steps (None unless FP8 attention runs beside them). Built once per
        latent grid."""
        key = tuple(grid)
        if key not in self._attention_cache:
            from cosmos_dist.attention.local import local_kernels

            local = local_kernels(self.attention_kernel)
            hp_attention = None
            if self.fp8_attention_kernel is not None:
                from cosmos_dist.attention.fp8 import fp8_attention, fp8_attention_with_lse

                kernel = self.fp8_attention_kernel
                if self.fp8_high_precision_steps:
                    hp_attention = runtime.denoiser_options(parallel_cfg, grid, num_heads, **local)["self_attention"]
                local = {"local": partial(fp8_attention, kernel=kernel),
                         "lse_kernel": partial(fp8_attention_with_lse, kernel=kernel)}
            options = runtime.denoiser_options(parallel_cfg, grid, num_heads, **local)
            self._attention_cache[key] = (options, hp_attention)
        return self._attention_cache[key]

    def record(self) -> dict:
        """The sidecar's `precision` entry."""
        rec = {"dit": dtype_name(self.dit_dtype), "tokenizer": dtype_name(self.tokenizer_dtype),
               "text_encoder": dtype_name(self.text_dtype), "attention_kernel": self.attention_kernel}
        if self.fp8:
            rec["dit_fp8"] = {
                "linear": self.fp8_linear_kernel is not None,
                "attention": self.fp8_attention_kernel is not None,
                "high_precision_steps": self.fp8_high_precision_steps,
            }
            if self.fp8_linear_kernel is not None:
                rec["dit_fp8"]["linear_kernel"] = self.fp8_linear_kernel
                if self.fp8_linear_layers is not None:  # block linears in FP8 / left in the run dtype by shape
                    rec["dit_fp8"]["linear_layers"] = dict(self.fp8_linear_layers)
            if self.fp8_attention_kernel is not None:
                rec["dit_fp8"]["attention_kernel"] = self.fp8_attention_kernel
        return rec
