"""FP8 (e4m3) matrix products for the DiT's transformer blocks: `precision=fp8`.

`convert_blocks_to_fp8(net)` swaps the `nn.Linear` layers inside the transformer blocks (self- and
cross-attention projections, MLP) for `Fp8Linear`. The adaLN modulation, the embedders and the final
layer stay in the run dtype: they are a fraction of a percent of the FLOPs and the modulation feeds
every block, so they are not worth the error.

Scaling, chosen for error rather than simplicity:
* weights: one scale per output row, computed once at conversion (amax / 448);
* activations: one scale per token row, computed at every call (dynamic; no calibration, no history).
The product runs in `torch._scaled_mm` (cuBLASLt on Hopper, fp32 accumulation, bf16 out) and the two
row-wise scales are applied to its output. Where `_scaled_mm` cannot run (the CPU, old GPUs) the same quantised numbers are multiplied
in float32, so tests on the CPU see the quantisation error the GPU sees, only not its speed.

With Transformer Engine installed, `precision.fp8_linear_kernel=te` runs the same layers as `te.Linear`
instead (`TeFp8Linear` below; per-tensor scales, not the default: cosmos_dist.kernels.te says why).

`keep_high_precision=True` keeps the original weight next to the FP8 copy (1.5x the weight memory)
so `set_fp8_enabled(net, False)` can run selected sampling steps without FP8 (the first and last
steps, where the output is most sensitive).
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F

from cosmos_dist.kernels import te as te_support
from cosmos_dist.kernels.fp8_numerics import quantize_rows

_log = logging.getLogger("cosmos_dist")


def _scaled_mm_supported(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    major, minor = torch.cuda.get_device_capability(device)
    return (major, minor) >= (8, 9)  # Ada / Hopper and newer have FP8 tensor cores


class Fp8Layer(nn.Module):
    """A linear that runs in FP8 while `fp8_enabled`, else on a high-precision weight (`set_fp8_enabled`)."""

    def __init__(self):
        super().__init__()
        self.fp8_enabled = True


class Fp8Linear(Fp8Layer):
    """y = x W^T with W and x in e4m3 and row-wise scales; no bias (the DiT's linears have none)."""

    def __init__(self, linear: nn.Linear, keep_high_precision: bool = False):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Fp8Linear supports linears without bias only (all of the DiT's block linears)")
        w = linear.weight.detach()
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.out_dtype = w.dtype if w.dtype in (torch.bfloat16, torch.float16, torch.float32) else torch.bfloat16
        q, scale = quantize_rows(w)
        self.register_buffer("weight_fp8", q)
        # (1, N): the layout `_scaled_mm` wants for the second operand's row-wise scale.
        self.register_buffer("weight_scale", scale.reshape(1, -1))
        self.register_buffer("_one", torch.ones((), dtype=torch.float32, device=w.device), persistent=False)
        self.weight_hp = nn.Parameter(w, requires_grad=False) if keep_high_precision else None

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, high_precision_copy={self.weight_hp is not None}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fp8_enabled:
            if self.weight_hp is None:
                raise RuntimeError("FP8 was switched off, but no high-precision weight was kept (keep_high_precision)")
            return torch.nn.functional.linear(x, self.weight_hp)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        xq, xs = quantize_rows(x2)
        out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else self.out_dtype
        if _scaled_mm_supported(x.device):  # any token count: _scaled_mm wants K % 16 and N % 16 (conversion), not M
            # The product with unit scales, then both row-wise scales as a separate multiply: cuBLASLt's
            # tensor-wise FP8 GEMM runs at ~1,300 TFLOP/s on an H100 where the row-wise-scaled kernel
            # reaches ~1,000-1,130, and under torch.compile the multiply fuses into whatever follows.
            y = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=self._one, scale_b=self._one, out_dtype=out_dtype)
            y = (y.float() * xs * self.weight_scale).to(out_dtype)
        else:
            y = ((xq.float() * xs) @ (self.weight_fp8.float() * self.weight_scale.t()).t()).to(x.dtype)
        return y.reshape(*lead, self.out_features)


class TeFp8Linear(Fp8Layer):
    """A bias-free linear run by `te.Linear` in FP8; the original weight is copied into it (run dtype)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        te, _ = te_support.import_te()
        w = linear.weight.detach()  # on the GPU: resolve_linear_kernel only picks "te" there
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        if not te_support.linear_fits(self.in_features, self.out_features):
            raise ValueError(f"Transformer Engine's FP8 GEMM needs in_features % 16 == 0 and out_features % 8 == 0; "
                             f"got ({self.out_features}, {self.in_features})")
        self.linear = te.Linear(self.in_features, self.out_features, bias=False, params_dtype=w.dtype,
                                device=w.device)
        with torch.no_grad():
            self.linear.weight.copy_(w)
        self.linear.weight.requires_grad_(False)
        self.linear.eval()
        self.recipe = te_support.current_scaling_recipe(attention=False)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, transformer_engine=True"

    @torch.compiler.disable  # TE's compile path is not run here; compiled blocks call TE eagerly
    def _fp8_forward(self, x2: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), te_support.autocast(self.recipe):
            return self.linear(x2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if not self.fp8_enabled:  # the high-precision steps take the bf16 weight directly
            return F.linear(x2, self.linear.weight).reshape(*lead, self.out_features)
        rows = x2.shape[0]
        pad = -rows % te_support.TE_ROWS_MULTIPLE  # zero rows: the per-tensor amax, and so every real row, is unchanged
        if pad:
            x2 = F.pad(x2, (0, 0, 0, pad))
        y = self._fp8_forward(x2.contiguous())[:rows]
        return y.reshape(*lead, self.out_features)


def _linears_in(module: nn.Module):
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            yield module, name, child
        else:
            yield from _linears_in(child)


#: precision.fp8_linear_kernel: "cublas" (Fp8Linear above: torch._scaled_mm, row-wise scales), "te"
#: (Transformer Engine's te.Linear, per-tensor current scaling; `TeFp8Linear` below), "auto" = cublas,
#: the measured one (docs/PERFORMANCE.md says why TE is not the default).
from cosmos_dist.choices import FP8_LINEAR_KERNELS as LINEAR_KERNELS  # noqa: E402  (the one list)


def resolve_linear_kernel(kernel: str, device: torch.device) -> str:
    """The FP8 linear that `kernel` means on `device`: "cublas", "te", or "emulated" (Fp8Linear off an FP8 GPU:
    the same quantisation multiplied in float32); RuntimeError where it cannot run there."""
    if kernel not in LINEAR_KERNELS:
        raise ValueError(f"FP8 linear kernel must be one of {LINEAR_KERNELS}; got {kernel!r}")
    if kernel == "te":
        te_support.require(device, "fp8_linear_kernel")
        return "te"
    return "cublas" if _scaled_mm_supported(device) else "emulated"


def fp8_shape_ok(kernel: str, in_features: int, out_features: int) -> bool:
    """Whether `kernel`'s FP8 GEMM takes a weight (out, in). cublas / emulated: torch._scaled_mm wants the
    shared dimension K = in and the output width N = out divisible by 16 (its checks; the token count M is
    free). te: Transformer Engine wants in % 16 and out % 8 (cosmos_dist.kernels.te.linear_fits)."""
    if kernel == "te":
        return te_support.linear_fits(in_features, out_features)
    return in_features % 16 == 0 and out_features % 16 == 0


def convert_blocks_to_fp8(net: nn.Module, keep_high_precision: bool = False, kernel: str = "cublas") -> int:
    """Replace every bias-free linear of the transformer blocks' attention and MLP by an FP8 layer
    (`Fp8Linear` for kernel "cublas", `TeFp8Linear` for "te"), leaving the adaLN modulation in the run
    dtype. A linear whose shape the kernel's FP8 GEMM refuses (`fp8_shape_ok`) stays in the run dtype; how
    many did is logged and given by `fp8_linear_counts`. Returns the number converted. Call it before
    `torch.compile` and after loading weights."""
    if kernel == "te":
        make = TeFp8Linear  # keeps the bf16 weight anyway: keep_high_precision costs nothing there
    elif kernel in ("cublas", "emulated"):
        def make(lin):
            return Fp8Linear(lin, keep_high_precision)
    else:
        raise ValueError(f"unknown FP8 linear kernel {kernel!r} (resolve 'auto' first)")
    count, kept = 0, set()
    for block in net.blocks.values():
        for sub in block.blocks:
            for parent, name, lin in list(_linears_in(sub.block)):
                if not fp8_shape_ok(kernel, lin.in_features, lin.out_features):
                    kept.add((lin.out_features, lin.in_features))
                    continue
                setattr(parent, name, make(lin))
                count += 1
    if count == 0:
        raise ValueError("no linear layer of the transformer blocks could be converted to FP8")
    left = fp8_linear_counts(net)["run_dtype"]
    if left:
        shapes = ", ".join(f"{o}x{i}" for o, i in sorted(kept))
        _log.warning("FP8 (%s): %d block linears in FP8, %d stay in the run dtype: their shapes (out x in: %s) "
                     "do not fit the FP8 GEMM", kernel, count, left, shapes)
    else:
        _log.info("FP8 (%s): all %d block linears in FP8", kernel, count)
    return count


def fp8_linear_counts(net: nn.Module) -> dict[str, int]:
    """{"fp8": block linears converted, "run_dtype": block linears left in the run dtype by the shape rule}."""
    fp8 = run_dtype = 0
    for block in net.blocks.values():
        for sub in block.blocks:
            fp8 += sum(isinstance(m, Fp8Layer) for m in sub.block.modules())
            run_dtype += sum(1 for _ in _linears_in(sub.block))
    return {"fp8": fp8, "run_dtype": run_dtype}


def set_fp8_enabled(net: nn.Module, enabled: bool) -> None:
    """Switch every FP8 linear between FP8 and its high-precision weight."""
    for m in net.modules():
        if isinstance(m, Fp8Layer):
            m.fp8_enabled = bool(enabled)
