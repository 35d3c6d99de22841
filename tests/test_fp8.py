"""precision=fp8: FP8 linears, FP8 attention (CPU emulation here; the Triton kernel where CUDA is), wiring."""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from cosmos_dist.attention.fp8 import fp8_attention, fp8_attention_with_lse
from cosmos_dist.attention.fp8_triton import fp8_attention_reference
from cosmos_dist.kernels.fp8_numerics import E4M3_MAX, quantize_heads, quantize_rows
from cosmos_dist.attention.local import attention_with_lse, sdpa_attention
from cosmos_dist.models import build_dit, get_preset
from cosmos_dist.models.fp8 import Fp8Linear, convert_blocks_to_fp8, set_fp8_enabled
from cosmos_dist.parallel.testing import init_gloo, rel_err, spawn_ranks

CUDA_FP8 = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def test_quantize_rows_is_e4m3_with_row_scales():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 64, generator=g) * torch.tensor([1e-3, 1.0, 30.0, 1e3, 0.0])[:, None]
    q, s = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (5, 1)
    back = q.float() * s
    # Each non-zero row's largest magnitude maps to 448 and survives; e4m3 keeps 3 mantissa bits.
    for i in range(4):
        assert q[i].float().abs().max().item() == E4M3_MAX
        big = x[i].abs() > x[i].abs().max() / 64  # normal range of e4m3 relative to the row max
        assert ((back[i] - x[i]).abs()[big] <= x[i].abs()[big] * 2**-4 + 1e-12).all()
    assert torch.equal(back[4], torch.zeros(64))


def test_fp8_linear_error_band_and_high_precision_switch():
    g = torch.Generator().manual_seed(1)
    lin = torch.nn.Linear(128, 64, bias=False)
    torch.nn.init.normal_(lin.weight, std=0.05, generator=g)
    x = torch.randn(3, 7, 128, generator=g)
    ref = lin(x)
    f8 = Fp8Linear(lin, keep_high_precision=True)
    out = f8(x)
    err = rel_err(out, ref)
    assert out.shape == ref.shape and 1e-3 < err < 6e-2, err  # quantised, yet close
    set_fp8_enabled(f8, False)
    assert torch.equal(f8(x), ref)
    with pytest.raises(RuntimeError, match="keep_high_precision"):
        g2 = Fp8Linear(lin)
        g2.fp8_enabled = False
        g2(x)
    with pytest.raises(ValueError, match="without bias"):
        Fp8Linear(torch.nn.Linear(16, 16))


def test_convert_blocks_leaves_modulation_and_matches_closely():
    cfg = get_preset("tiny_text2world")
    torch.manual_seed(0)
    net = build_dit(cfg, device="cpu", dtype=torch.float32)
    x = torch.randn(1, cfg.latent_channels, 2, 8, 8)
    emb = torch.randn(1, 12, cfg.crossattn_emb_channels)
    t = torch.tensor([0.3])
    with torch.no_grad():
        ref = net(x, t, emb, fps=torch.tensor([24.0]))
        n = convert_blocks_to_fp8(net, keep_high_precision=True)
        out = net(x, t, emb, fps=torch.tensor([24.0]))
        set_fp8_enabled(net, False)
        back = net(x, t, emb, fps=torch.tensor([24.0]))
    assert n == 10 * cfg.num_blocks  # per block: fa q/k/v/out, ca q/k/v/out, mlp layer1/layer2
    for block in net.blocks.values():
        for sub in block.blocks:
            assert all(not isinstance(m, Fp8Linear) for m in sub.adaLN_modulation)
    assert 1e-4 < rel_err(out, ref) < 0.1
    assert torch.equal(back, ref)


def _peaked_qkv(b, lq, lk, h, d, seed):
    """Scores with a realistic spread (RMS-normed q/k as in the DiT, times a head-dependent gain)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(b, lq, h, d, generator=g), dim=-1) * math.sqrt(d) * 1.5
    k = torch.nn.functional.normalize(torch.randn(b, lk, h, d, generator=g), dim=-1) * math.sqrt(d)
    v = torch.randn(b, lk, h, d, generator=g)
    return q, k, v


def test_fp8_attention_reference_error_band_and_lse():
    q, k, v = _peaked_qkv(2, 96, 80, 3, 64, 0)
    ref, ref_lse = attention_with_lse(q, k, v)
    out, lse = fp8_attention_with_lse(q, k, v)
    assert out.shape == q.shape and lse.shape == (2, 3, 96)
    assert 1e-3 < rel_err(out, ref) < 0.08
    assert (lse - ref_lse).abs().max() < 0.1
    assert torch.equal(fp8_attention(q, k, v), out)


def test_quantize_heads_scales_per_batch_and_head():
    x = torch.ones(2, 5, 3, 4) * torch.tensor([1.0, 10.0, 100.0])[None, None, :, None]
    x[1] *= 2
    q, s = quantize_heads(x)
    assert s.shape == (2, 3)
    assert torch.allclose(s[0], torch.tensor([1.0, 10.0, 100.0]) / E4M3_MAX)
    assert torch.allclose(s[1], 2 * s[0])


@pytest.mark.skipif(not CUDA_FP8, reason="needs a CUDA GPU with FP8 tensor cores (sm_89+) and Triton")
def test_triton_kernel_matches_emulation_on_gpu():
    pytest.importorskip("triton")
    for lq, lk in ((1000, 1000), (333, 517)):
        q, k, v = (t.cuda().bfloat16() for t in _peaked_qkv(1, lq, lk, 4, 128, lq))
        out, lse = fp8_attention_with_lse(q, k, v, kernel="triton")
        emu, emu_lse = fp8_attention_reference(q, k, v)
        exact = sdpa_attention(q.float(), k.float(), v.float())
        assert rel_err(out.float(), emu.float()) < 3e-2
        assert rel_err(out.float(), exact) < 8e-2
        assert (lse - emu_lse).abs().max() < 1e-2


def _cudnn_fp8_ready() -> bool:
    from cosmos_dist.attention import fp8_cudnn

    return CUDA_FP8 and fp8_cudnn.available(torch.device("cuda"))


@pytest.mark.skipif(not _cudnn_fp8_ready(), reason="needs a Hopper-class GPU and nvidia-cudnn-frontend")
def test_cudnn_fp8_attention_on_gpu_is_near_exact_and_returns_the_lse():
    from cosmos_dist.attention import fp8_cudnn
    from cosmos_dist.attention.local import attention_with_lse

    def check(out, lse, q, k, v):
        exact, exact_lse = attention_with_lse(q.float(), k.float(), v.float())
        emu, emu_lse = fp8_attention_reference(q, k, v)
        # per-tensor scales and an e4m3 output: a little further from exact than the per-head emulation
        assert rel_err(out.float(), exact) < 1.5 * rel_err(emu.float(), exact) + 2e-2
        assert (lse - exact_lse).abs().max() < 1.5 * (emu_lse - exact_lse).abs().max() + 2e-2

    for lq, lk in ((1024, 1024), (333, 517)):
        q, k, v = (t.cuda().bfloat16() for t in _peaked_qkv(2, lq, lk, 4, 128, lq))
        out, lse = fp8_attention_with_lse(q, k, v, kernel="cudnn")
        assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == (2, 4, lq)
        check(out, lse, q, k, v)
    # a configuration cuDNN rejects runs the Triton kernel on the same per-tensor-scaled inputs
    (q8, dq), (k8, dk), (v8, dv) = (fp8_cudnn.quantize_tensor(t) for t in (q, k, v))
    saved = set(fp8_cudnn._unsupported)
    try:
        fp8_cudnn._unsupported.add(fp8_cudnn._key(q8, k8, v8))
        o8, lse = fp8_cudnn._cudnn_fp8_attention_op(q8, k8, v8, dq, dk, dv)
    finally:
        fp8_cudnn._unsupported.clear()
        fp8_cudnn._unsupported.update(saved)
    assert o8.dtype == torch.float8_e4m3fn
    check((o8.float() * dv).bfloat16(), lse, q, k, v)


def test_fp8_attention_kernel_choice(monkeypatch):
    """auto = cudnn where the frontend is installed, else fa3 where an FA3 build is, else triton; cudnn without
    the frontend is a clear ConfigError naming the field before anything loads; on the CPU every choice is
    the emulation. (What this machine really has is patched over, so the test means the same everywhere.)"""
    from cosmos_dist.attention import fa3
    from cosmos_dist.attention import fp8 as fp8_mod
    from cosmos_dist.attention import fp8_cudnn
    from cosmos_dist.config import PrecisionConfig
    from cosmos_dist.errors import ConfigError
    from cosmos_dist.pipeline.plan import fp8_attention_kernel

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert {fp8_mod.resolve_kernel(k, cpu) for k in ("auto", "cudnn", "triton")} == {"emulated"}
    with pytest.raises(ValueError, match="one of"):
        fp8_mod.resolve_kernel("flash", cpu)
    monkeypatch.setattr(fp8_mod.fp8_triton, "triton_available", lambda device: device.type == "cuda")
    for has_frontend, has_fa3, auto in ((True, True, "cudnn"), (False, True, "fa3"), (False, False, "triton")):
        monkeypatch.setattr(fp8_cudnn, "available", lambda device, h=has_frontend: h)
        monkeypatch.setattr(fa3, "available", lambda device, h=has_fa3: h)
        assert fp8_mod.resolve_kernel("auto", gpu) == auto
        assert fp8_mod.resolve_kernel("triton", gpu) == "triton"
    prec = PrecisionConfig(fp8_attention=True, fp8_attention_kernel="cudnn")
    with pytest.raises(ConfigError, match="precision.fp8_attention_kernel.*nvidia-cudnn-frontend"):
        fp8_attention_kernel(prec, gpu)
    assert fp8_attention_kernel(PrecisionConfig(fp8_attention=False), gpu) is None


def _ulysses_fp8_worker(rank: int, world: int):
    from cosmos_dist.parallel.context_parallel import make_self_attention
    from cosmos_dist.parallel.sharding import token_ranges

    init_gloo(rank, world)
    try:
        group = dist.new_group(list(range(world)))
        q, k, v = _peaked_qkv(1, 30, 30, 4, 32, 7)
        ranges = token_ranges(30, world)
        s, e = ranges[rank]
        ref = fp8_attention(q, k, v)
        # Ulysses hands each rank whole heads over the whole sequence: the per-(batch, head) FP8
        # scales are the single-process ones, so the results agree to float32 rounding.
        attn = make_self_attention("ulysses", group, ranges, local=fp8_attention)
        assert rel_err(attn(q[:, s:e], k[:, s:e], v[:, s:e]), ref[:, s:e]) <= 1e-6
        # Ring quantises each key block on its own: not equal to single-process FP8, but as close to
        # exact attention as it is.
        ring = make_self_attention("ring", group, ranges, lse_kernel=fp8_attention_with_lse)
        r = ring(q[:, s:e], k[:, s:e], v[:, s:e])
        exact = sdpa_attention(q, k, v)[:, s:e]
        assert rel_err(r, exact) < 1.3 * rel_err(ref[:, s:e], exact) + 1e-3
    finally:
        dist.destroy_process_group()


def test_fp8_attention_under_ulysses_and_ring_gloo():
    spawn_ranks(_ulysses_fp8_worker, 2)


def test_pipeline_precision_fp8_with_high_precision_steps_and_offload(tmp_path, monkeypatch):
    """precision=fp8 through the real pipeline (tiny model, CPU emulation), with the DiT offloaded:
    the sidecar records it, the latent is near the float32 one but not equal, and with every step in
    high precision it equals the float32 latent exactly."""
    import json

    from pipeline_helpers import Recorder, recording_pipeline, small_cfg

    from cosmos_dist.config import validate_config
    from cosmos_dist.errors import ConfigError

    ckpt = tmp_path / "ckpt"
    latents = {}
    runs = {"fp32": (), "fp8": ("precision=fp8",), "fp8_all_hp": ("precision=fp8", "precision.fp8_high_precision_steps=1")}
    for name, extra in runs.items():
        out = tmp_path / name
        cfg = small_cfg(ckpt, out, "prompt=a red ball", "name=s", "save_latents=true", "offload=dit", "device=cpu", *extra)
        summary = recording_pipeline(cfg, Recorder(), monkeypatch).run()
        assert summary.done == ["s"] and not summary.failed
        latents[name] = torch.load(out / "s.latent.pt")
        side = json.loads((out / "s.json").read_text())
        if name != "fp32":
            assert side["precision"]["dit_fp8"]["linear"] and side["precision"]["dit_fp8"]["attention"]
            assert side["precision"]["dit_fp8"]["attention_kernel"] == "emulated"
            assert side["precision"]["dit_fp8"]["linear_kernel"] == "emulated"
    assert 1e-4 < rel_err(latents["fp8"], latents["fp32"]) < 0.2
    assert torch.equal(latents["fp8_all_hp"], latents["fp32"])  # 2 steps, first 1 + last 1 in high precision

    bad = small_cfg(ckpt, tmp_path / "x", "prompt=x", "precision=fp8", "precision.dit_dtype=float32")
    with pytest.raises(ConfigError, match="precision.dit_dtype"):
        validate_config(bad)
    bad = small_cfg(ckpt, tmp_path / "x", "prompt=x", "precision=fp8", "precision.fp8_attention_kernel=flash")
    with pytest.raises(ConfigError, match="precision.fp8_attention_kernel"):
        validate_config(bad)


@pytest.mark.skipif(not CUDA_FP8, reason="needs a CUDA GPU with FP8 tensor cores (sm_89+)")
def test_fp8_linear_on_gpu_matches_its_emulation():
    g = torch.Generator().manual_seed(2)
    lin = torch.nn.Linear(256, 128, bias=False)
    torch.nn.init.normal_(lin.weight, std=0.05, generator=g)
    x = torch.randn(64, 256, generator=g)
    f8 = Fp8Linear(lin.cuda().bfloat16())
    assert all(t.device.type == "cuda" for t in [*f8.buffers()])
    out = f8(x.cuda().bfloat16()).float().cpu()
    xq, xs = quantize_rows(x.cuda().bfloat16())
    emu = (xq.float() * xs) @ (f8.weight_fp8.float() * f8.weight_scale.t()).t()
    assert rel_err(out, emu.cpu()) < 1e-2  # bf16 output rounding only


class _FakeCudnnTensor:
    def __init__(self, **attrs):
        self.attrs = dict(attrs)

    def __getattr__(self, attr):
        if not attr.startswith("set_"):
            raise AttributeError(attr)

        def setter(value):
            self.attrs[attr[4:]] = value
            return self
        return setter


class _FakeCudnn:
    """Records how fp8_cudnn builds its cuDNN graph (the frontend's pygraph API), without a GPU."""

    class data_type:  # noqa: N801 (the frontend's names)
        FP8_E4M3, FLOAT = "fp8_e4m3", "float"

    class heur_mode:  # noqa: N801
        A, FALLBACK = "A", "FALLBACK"

    def __init__(self, reject: bool = False):
        self.reject, self.graphs = reject, []
        fake = self

        class pygraph:  # noqa: N801
            def __init__(self, **kw):
                self.kw, self.tensors, self.calls = kw, {}, []
                fake.graphs.append(self)

            def tensor(self, uid, dim, stride, data_type):
                self.tensors[uid] = _FakeCudnnTensor(uid=uid, dim=dim, stride=stride, data_type=data_type)
                return self.tensors[uid]

            def sdpa_fp8(self, **kw):
                self.sdpa = kw
                self.outs = [_FakeCudnnTensor() for _ in ("o", "stats", "amax_s", "amax_o")]
                return self.outs

            def __getattr__(self, step):  # validate, build_operation_graph, ...
                def call(*a):
                    self.calls.append(step)
                    if step == "check_support" and fake.reject:
                        raise RuntimeError("not supported on this GPU")
                return call

        self.pygraph = pygraph

    def backend_version(self):
        return 91900

    def create_handle(self):
        return "handle"


def test_cudnn_fp8_graph_describes_the_bshd_tensors(monkeypatch):
    """The graph cuDNN gets: q/k/v/o as (B, H, L, D) views of (B, L, H, D) memory, e4m3 in and out, LSE
    (B, H, Lq, 1) float32, softmax scale 1/sqrt(D), plans built in the frontend's order; a rejected graph
    is remembered (Triton runs that shape) instead of raising."""
    from cosmos_dist.attention import fp8_cudnn

    fake = _FakeCudnn()
    monkeypatch.setattr(fp8_cudnn, "frontend", lambda: fake)
    monkeypatch.setattr(fp8_cudnn, "_graphs", {})
    monkeypatch.setattr(fp8_cudnn, "_unsupported", set())
    monkeypatch.setattr(fp8_cudnn, "_handles", {0: "handle"})
    b, lq, lk, h, d = 2, 10, 7, 4, 64
    q = torch.empty(b, lq, h, d)
    kv = torch.empty(b, lk, 2, h, d)[:, :, 0]  # a strided view, as after a fused k/v projection
    key = (0, tuple(q.shape), q.stride(), tuple(kv.shape), kv.stride(), kv.stride())
    g = fp8_cudnn._graph(key)
    assert g is fake.graphs[0] and fp8_cudnn._graph(key) is g  # cached
    assert g.kw["io_data_type"] == "fp8_e4m3" and g.kw["compute_data_type"] == "float"
    tq = g.tensors[fp8_cudnn._Q].attrs
    assert tq["dim"] == [b, h, lq, d] and tq["stride"] == [lq * h * d, d, h * d, 1]
    tk = g.tensors[fp8_cudnn._K].attrs
    assert tk["dim"] == [b, h, lk, d] and tk["stride"] == [lk * 2 * h * d, d, 2 * h * d, 1]
    assert g.sdpa["attn_scale"] == pytest.approx(1 / 8) and g.sdpa["generate_stats"] is True
    o, stats = g.outs[0].attrs, g.outs[1].attrs
    assert o["dim"] == [b, h, lq, d] and o["stride"] == [lq * h * d, d, h * d, 1] and o["data_type"] == "fp8_e4m3"
    assert o["uid"] == fp8_cudnn._O and stats["uid"] == fp8_cudnn._STATS
    assert stats["dim"] == [b, h, lq, 1] and stats["stride"] == [h * lq, lq, 1, 1] and stats["data_type"] == "float"
    assert g.calls == ["validate", "build_operation_graph", "create_execution_plans", "check_support", "build_plans"]

    monkeypatch.setattr(fp8_cudnn, "frontend", lambda: _FakeCudnn(reject=True))
    other = (0, (1, 5, 4, 64), (1280, 256, 64, 1), (1, 5, 4, 64), (1280, 256, 64, 1), (1280, 256, 64, 1))
    assert fp8_cudnn._graph(other) is None and other in fp8_cudnn._unsupported


def test_compiled_fp8_blocks_match_eager_on_cpu():
    """stages.compile_blocks with the FP8 compile options (Inductor multi_kernel) builds and runs, and the
    compiled FP8 network agrees with the eager one far more closely than FP8 agrees with float32 (the options
    only choose kernel forms; a value on an e4m3 rounding boundary may still round the other way)."""
    from cosmos_dist.pipeline.plan import FP8_COMPILE_OPTIONS, compile_blocks

    assert FP8_COMPILE_OPTIONS == {"triton.multi_kernel": 1}
    cfg = get_preset("tiny_text2world")
    torch.manual_seed(5)
    net = build_dit(cfg, device=torch.device("cpu"), dtype=torch.float32)
    g = torch.Generator().manual_seed(5)
    tokens, grid = net.patchify(net.input_channels(torch.randn(1, cfg.latent_channels, 3, 16, 24, generator=g)))
    emb = torch.randn(1, 512, cfg.crossattn_emb_channels, generator=g)
    t, fps = torch.full((1,), 0.5), torch.tensor([24.0])
    with torch.no_grad():
        full = net.forward_tokens(tokens, t, emb, grid, fps)
        convert_blocks_to_fp8(net)
        eager = net.forward_tokens(tokens, t, emb, grid, fps)
        compile_blocks(net, fp8=True)
        compiled = net.forward_tokens(tokens, t, emb, grid, fps)
    assert all(block._compiled_call_impl is not None for block in net.blocks.values())
    fp8_err = rel_err(eager, full)
    assert fp8_err > 1e-4 and rel_err(compiled, eager) < 0.1 * fp8_err


def test_shape_rule_keeps_what_scaled_mm_refuses_and_counts_it(caplog):
    """cuBLASLt (torch._scaled_mm) wants K = in and N = out divisible by 16, not the token count: a layer that
    misses it stays in the run dtype and is counted; every token count runs the FP8 product."""
    from cosmos_dist.models import build_dit, get_preset
    from cosmos_dist.models.fp8 import convert_blocks_to_fp8, fp8_linear_counts, fp8_shape_ok

    assert fp8_shape_ok("cublas", 128, 512) and not fp8_shape_ok("cublas", 128, 520)
    assert not fp8_shape_ok("cublas", 120, 512)
    net = build_dit(get_preset("tiny_text2world"), device="cpu", dtype=torch.float32)
    attn = net.blocks["block1"].blocks[0].block
    for name, (i, o) in {"to_q": (128, 520), "to_k": (120, 512)}.items():
        setattr(getattr(attn.attn, name), "0", torch.nn.Linear(i, o, bias=False))
    with caplog.at_level("INFO", logger="cosmos_dist"):
        n = convert_blocks_to_fp8(net)
    assert fp8_linear_counts(net) == {"fp8": n, "run_dtype": 2} and n == 10 * net.config.num_blocks - 2
    assert "2 stay in the run dtype" in caplog.text and "512x120, 520x128" in caplog.text



def test_scaled_mm_path_takes_any_token_count(monkeypatch):
    """21 token rows go through torch._scaled_mm (PyTorch's CPU build runs it too), not a float32 fallback."""
    from cosmos_dist.models import fp8 as fp8_mod

    monkeypatch.setattr(fp8_mod, "_scaled_mm_supported", lambda device: True)
    seen = []
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda a, b, **kw: seen.append(a.shape) or real(a, b, **kw))
    f8 = Fp8Linear(torch.nn.Linear(32, 16, bias=False))
    x = torch.randn(3, 7, 32)
    xq, xs = quantize_rows(x.reshape(21, 32))
    emu = (xq.float() * xs) @ (f8.weight_fp8.float() * f8.weight_scale.t()).t()
    assert torch.allclose(f8(x), emu.reshape(3, 7, 16), rtol=1e-5, atol=1e-5) and seen == [(21, 32)]
