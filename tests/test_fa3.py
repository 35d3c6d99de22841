"""FlashAttention-3 as the local attention kernel (BF16 and FP8): the wrapper's contract with FA3's `fwd`
operator (checked against a stand-in operator on the CPU, the real one on a Hopper GPU with FA3
installed), and the choice of kernel (precision.attention_kernel / fp8_attention_kernel)."""
from __future__ import annotations

import math

import pytest
import torch

from cosmos_dist.attention import fa3
from cosmos_dist.attention.local import attention_with_lse, local_kernels, resolve_attention_kernel, sdpa_attention
from cosmos_dist.parallel.testing import rel_err

FA3_GPU = torch.cuda.is_available() and fa3.available(torch.device("cuda"))


def _qkv(b=2, lq=40, lk=40, h=3, d=64, seed=0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, lq, h, d, generator=g)
    k = torch.randn(b, lk, h, d, generator=g)
    v = torch.randn(b, lk, h, d, generator=g) * torch.linspace(0.1, 3.0, h)[None, None, :, None]
    return q.to(dtype), k.to(dtype), v.to(dtype)


class FakeFa3Fwd:
    """FA3's `fwd` operator as the schema defines it (keyword names, (B, H) descales, bf16 output for e4m3
    inputs, 4 results), computed in float32; records what it was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, q, k, v, *, q_descale=None, k_descale=None, v_descale=None, softmax_scale=None,
                 is_causal=False, **rest):
        assert not rest, f"unexpected arguments {sorted(rest)}"
        self.calls.append({"dtype": q.dtype, "descales": [None if t is None else tuple(t.shape)
                                                          for t in (q_descale, k_descale, v_descale)],
                           "scale": softmax_scale, "causal": is_causal})
        fp8 = q.dtype == torch.float8_e4m3fn
        b, lq, h, d = q.shape

        def real(x, s):
            x = x.float()
            return x * s[:, None, :, None] if s is not None else x

        qf, kf, vf = real(q, q_descale), real(k, k_descale), real(v, v_descale)
        scores = torch.einsum("blhd,bmhd->bhlm", qf, kf) * softmax_scale
        lse = torch.logsumexp(scores, -1)
        out = torch.einsum("bhlm,bmhd->blhd", torch.softmax(scores, -1), vf)
        return out.to(torch.bfloat16 if fp8 else q.dtype), lse, None, None


@pytest.fixture
def fake_fa3(monkeypatch):
    fake = FakeFa3Fwd()
    monkeypatch.setattr(fa3, "_fwd_op", lambda: fake)
    return fake


def test_bf16_wrapper_passes_the_schema_and_matches_exact_attention(fake_fa3):
    q, k, v = _qkv(lk=24)  # cross-attention shapes too: Lk != Lq
    out, lse = fa3.fa3_attention_with_lse(q, k, v)
    ref, ref_lse = attention_with_lse(q, k, v)
    assert out.shape == q.shape and out.dtype == torch.bfloat16 and lse.shape == (2, 3, 40)
    assert rel_err(out, ref) < 1e-2 and (lse - ref_lse).abs().max() < 1e-3
    call = fake_fa3.calls[-1]
    assert call["descales"] == [None, None, None] and not call["causal"]
    assert call["scale"] == pytest.approx(1 / math.sqrt(64))
    # A non-contiguous last dimension is made contiguous first (FA3 wants stride 1 there).
    qt = q.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert torch.equal(fa3.fa3_attention(qt, k, v), out)


def test_fp8_wrapper_quantises_per_batch_and_head(fake_fa3):
    q, k, v = _qkv(seed=1)
    out, lse = fa3.fa3_fp8_attention_with_lse(q, k, v)
    call = fake_fa3.calls[-1]
    assert call["dtype"] == torch.float8_e4m3fn and call["descales"] == [(2, 3)] * 3
    exact = sdpa_attention(q.float(), k.float(), v.float())
    assert out.dtype == torch.bfloat16
    err = rel_err(out, exact)
    assert 1e-4 < err < 0.08  # e4m3 has 3 mantissa bits: a few per cent, never exact
    # Same quantisation as the emulated FP8 kernel's q/k/v (one scale per batch and head), exact P:
    # the two agree more closely than either does with exact attention.
    from cosmos_dist.attention.fp8_triton import fp8_attention_reference

    emu, _ = fp8_attention_reference(q, k, v)
    assert rel_err(out, emu) < err


def test_kernel_choice_and_errors(monkeypatch):
    from cosmos_dist.attention import fp8 as fp8_mod
    from cosmos_dist.config import PrecisionConfig
    from cosmos_dist.errors import ConfigError
    from cosmos_dist.pipeline.plan import attention_kernel, fp8_attention_kernel

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_attention_kernel("auto", cpu) == "sdpa"
    assert resolve_attention_kernel("cudnn", cpu) == "cudnn"
    with pytest.raises(ValueError, match="one of"):
        resolve_attention_kernel("fa2", cpu)
    if fa3.build_name() is None:
        with pytest.raises(ConfigError, match="precision.attention_kernel: .*pip install fa3-fwd"):
            attention_kernel(PrecisionConfig(attention_kernel="fa3"), cpu)
    monkeypatch.setattr(fa3, "available", lambda device: device.type == "cuda")
    assert resolve_attention_kernel("auto", gpu) == "fa3" and resolve_attention_kernel("auto", cpu) == "sdpa"
    assert set(local_kernels("fa3")) == {"local", "lse_kernel"} and local_kernels("sdpa") == {}
    # FP8: auto = cudnn, else fa3, else triton.
    monkeypatch.setattr(fp8_mod.fp8_triton, "triton_available", lambda device: device.type == "cuda")
    from cosmos_dist.attention import fp8_cudnn

    monkeypatch.setattr(fp8_cudnn, "available", lambda device: False)
    assert fp8_mod.resolve_kernel("auto", gpu) == "fa3" and fp8_mod.resolve_kernel("fa3", gpu) == "fa3"
    monkeypatch.setattr(fa3, "available", lambda device: False)
    assert fp8_mod.resolve_kernel("auto", gpu) == "triton"
    with pytest.raises(ConfigError, match="precision.fp8_attention_kernel: .*fa3-fwd"):
        fp8_attention_kernel(PrecisionConfig(fp8_attention=True, fp8_attention_kernel="fa3"), gpu)


def test_bad_attention_kernel_is_a_config_error(tmp_path):
    from pipeline_helpers import small_cfg

    from cosmos_dist.config import validate_config
    from cosmos_dist.errors import ConfigError

    bad = small_cfg(tmp_path / "ckpt", tmp_path / "x", "prompt=x", "precision.attention_kernel=flash3")
    with pytest.raises(ConfigError, match="precision.attention_kernel: 'flash3'; choose auto, sdpa"):
        validate_config(bad)


@pytest.mark.skipif(not FA3_GPU, reason="needs a Hopper GPU with an FA3 build (pip install fa3-fwd)")
def test_fa3_on_gpu_matches_sdpa_and_compiles():
    q, k, v = (t.cuda() for t in _qkv(b=2, lq=1000, lk=1000, h=4, d=128, seed=3))
    ref, ref_lse = attention_with_lse(q, k, v)
    out, lse = fa3.fa3_attention_with_lse(q, k, v)
    assert rel_err(out, ref) < 1e-2 and (lse - ref_lse).abs().max() < 1e-2
    o8, lse8 = fa3.fa3_fp8_attention_with_lse(q, k, v)
    exact = sdpa_attention(q.float(), k.float(), v.float())
    assert o8.dtype == torch.bfloat16 and rel_err(o8, exact) < 0.08 and (lse8 - ref_lse).abs().max() < 0.1
    compiled = torch.compile(fa3.fa3_fp8_attention_with_lse, fullgraph=True)
    oc, _ = compiled(q, k, v)
    assert rel_err(oc, o8) < 1e-2
