"""FP8 through Transformer Engine (precision.fp8_linear_kernel=te, fp8_attention_kernel=te).

On the CPU the wiring runs against a stand-in that keeps TE 2.20.2's signatures and refuses what that release
refuses, its attention backend rules included (tests/fake_transformer_engine.py); where TE itself imports next
to an FP8 GPU, the last test runs the real thing."""
from __future__ import annotations

import json
import math

import pytest
import torch
from fake_transformer_engine import FakeTransformerEngine, quantize_tensor

from cosmos_dist.attention.fp8 import fp8_attention, fp8_attention_with_lse, resolve_kernel
from cosmos_dist.attention.local import sdpa_attention
from cosmos_dist.errors import ConfigError
from cosmos_dist.kernels import te as te_support
from cosmos_dist.models import build_dit, get_preset
from cosmos_dist.models import fp8 as fp8_mod
from cosmos_dist.models.fp8 import Fp8Linear, TeFp8Linear, convert_blocks_to_fp8, resolve_linear_kernel, set_fp8_enabled
from cosmos_dist.parallel.testing import rel_err

TE_GPU = torch.cuda.is_available() and te_support.available(torch.device("cuda"))


@pytest.fixture
def fake_te(monkeypatch):
    return FakeTransformerEngine().install(monkeypatch)


def _tiny_net(seed=0):
    cfg = get_preset("tiny_text2world")
    torch.manual_seed(seed)
    net = build_dit(cfg, device="cpu", dtype=torch.float32)
    x = torch.randn(1, cfg.latent_channels, 2, 8, 8)  # 2 x 4 x 4 = 32 tokens: FP8-sized
    emb = torch.randn(1, 16, cfg.crossattn_emb_channels)
    return net, (x, torch.tensor([0.3]), emb)


def _forward(net, inputs):
    with torch.no_grad():
        return net(*inputs, fps=torch.tensor([24.0]))


def test_te_linears_replace_the_same_layers_and_run_in_e4m3_current_scaling(fake_te):
    net, inputs = _tiny_net()
    ref = _forward(net, inputs)
    n = convert_blocks_to_fp8(net, kernel="te")
    assert n == 10 * net.config.num_blocks  # as for the cublas kernel: attention q/k/v/out x2, MLP x2
    te_layers = [m for m in net.modules() if isinstance(m, TeFp8Linear)]
    assert len(te_layers) == n and not any(isinstance(m, Fp8Linear) for m in net.modules())
    assert all(kw == {"bias": False, "params_dtype": torch.float32} for kind, kw in fake_te.built if kind == "Linear")
    out = _forward(net, inputs)
    # every layer ran in FP8, under one e4m3 current-scaling recipe without FP8 attention
    assert len(fake_te.calls) == n and fake_te.kinds() == {"Linear"}
    recipes = {id(r) for _, r, _ in fake_te.calls}
    r = fake_te.calls[0][1]
    assert type(r).__name__ == "Float8CurrentScaling" and r.fp8_format.name == "E4M3" and not r.fp8_dpa
    assert len(recipes) == n  # each layer holds its own (identical) recipe object
    assert 1e-4 < rel_err(out, ref) < 0.1
    set_fp8_enabled(net, False)  # the high-precision steps run TE's own (original) weight: exact
    fake_te.calls.clear()
    assert torch.equal(_forward(net, inputs), ref) and not fake_te.calls


def test_te_linear_takes_the_weight_and_pads_token_counts_to_tes_rule(fake_te):
    g = torch.Generator().manual_seed(1)
    lin = torch.nn.Linear(64, 40, bias=False)  # out % 8 is enough for TE (not % 16)
    torch.nn.init.normal_(lin.weight, std=0.05, generator=g)
    layer = TeFp8Linear(lin)
    assert torch.equal(layer.linear.weight, lin.weight) and not layer.linear.weight.requires_grad
    x = torch.randn(2, 4, 64, generator=g)  # 8 rows: FP8 as it is
    emu = (quantize_tensor(x.reshape(8, 64)) @ quantize_tensor(lin.weight).t()).reshape(2, 4, 40)
    assert torch.allclose(layer(x), emu, rtol=1e-6, atol=1e-6)
    # 21 rows: TE raises ValueError on them; padded with zero rows to 24, the real rows get exactly the FP8
    # result they would get alone (zero rows leave the per-tensor amax as it is), not a silent bf16 product
    x_odd = torch.randn(3, 7, 64, generator=g)
    fake_te.calls.clear()
    emu_odd = (quantize_tensor(x_odd.reshape(21, 64)) @ quantize_tensor(lin.weight).t()).reshape(3, 7, 40)
    assert torch.allclose(layer(x_odd), emu_odd, rtol=1e-6, atol=1e-6) and fake_te.kinds() == {"Linear"}
    te = fake_te.modules["transformer_engine.pytorch"]
    with pytest.raises(ValueError, match="divisible by 8"), te.autocast(recipe=layer.recipe):
        layer.linear(x_odd.reshape(21, 64))  # what the padding avoids: the stand-in refuses as TE 2.20.2 does
    with pytest.raises(ValueError, match="in_features % 16"):
        TeFp8Linear(torch.nn.Linear(24, 32, bias=False))


def test_layers_tes_gemm_refuses_stay_in_the_run_dtype_and_are_counted(fake_te, caplog):
    net, _ = _tiny_net()
    attn = net.blocks["block0"].blocks[0].block  # not run: only the conversion is looked at
    for name, (i, o) in {"attn.to_q.0": (128, 520), "attn.to_k.0": (120, 512)}.items():
        parent, _, leaf = name.rpartition(".")
        setattr(attn.get_submodule(parent), leaf, torch.nn.Linear(i, o, bias=False))  # 520: out % 8 is enough for TE
    with caplog.at_level("INFO", logger="cosmos_dist"):
        n = convert_blocks_to_fp8(net, kernel="te")
    assert fp8_mod.fp8_linear_counts(net) == {"fp8": n, "run_dtype": 1} and n == 10 * net.config.num_blocks - 1
    assert "1 stay in the run dtype" in caplog.text and "512x120" in caplog.text


def test_stand_in_refuses_what_te_2_20_refuses(monkeypatch):
    """The stand-in's own contract (TE 2.20.2): the Hopper FP8-attention failure, the linear shape rule, the
    default recipe and the deprecated fp8_autocast; so the tests above cannot pass where TE fails."""
    fake = FakeTransformerEngine(capability=(9, 0), fa3_installed=True).install(monkeypatch)
    te = fake.modules["transformer_engine.pytorch"]
    recipe = fake.modules["transformer_engine.common.recipe"]
    cs = recipe.Float8CurrentScaling(fp8_format=recipe.Format.E4M3, fp8_dpa=True)
    q = torch.randn(1, 16, 2, 64, dtype=torch.bfloat16)
    dpa = te.DotProductAttention(2, 64, qkv_format="bshd", attn_mask_type="no_mask")
    with te.autocast(recipe=cs), pytest.raises(ValueError, match="No dot product attention backend"):
        dpa(q, q, q)  # training mode (a fresh module's default) turns FlashAttention 3 off: nothing left on sm90
    with te.autocast(recipe=cs):
        dpa.eval()(q, q, q)
    assert fake.backends() == {"FlashAttention 3"}
    with pytest.raises(AssertionError, match="Float8BlockScaling"):
        recipe.Float8BlockScaling(fp8_dpa=True)
    with pytest.raises(TypeError):
        te.DotProductAttention(2, 64, fp8_dpa=True)  # keywords TE does not take
    with te.autocast():  # recipe=None: TE's default recipe (delayed scaling on Hopper), not current scaling
        assert type(fake.active_recipe()).__name__ == "DelayedScaling"
    with pytest.warns(DeprecationWarning, match="fp8_autocast is deprecated"), te.fp8_autocast(fp8_recipe=cs):
        pass
    lin = te.Linear(32, 12, bias=False, params_dtype=torch.float32, device="cpu")
    with te.autocast(recipe=cs), pytest.raises(ValueError, match="FP8 execution requires"):
        lin(torch.randn(8, 32))  # weight (12, 32): 12 % 8


def test_te_attention_kernel_is_te_dot_product_attention_in_fp8(fake_te):
    """On Hopper (the stand-in's default: sm90, FlashAttention 3 installed) TE 2.20.2 runs FP8 attention under
    current scaling only through FlashAttention 3, and only for a module in eval mode."""
    g = torch.Generator().manual_seed(2)
    b, l, h, d = 2, 48, 4, 32
    q, k, v = (torch.randn(b, l, h, d, generator=g) for _ in range(3))
    out = fp8_attention(q, k, v, kernel="te")
    ref = sdpa_attention(q, k, v)
    assert out.shape == (b, l, h, d) and out.dtype == q.dtype and 1e-4 < rel_err(out, ref) < 0.1
    assert fake_te.backends() == {"FlashAttention 3"}
    assert resolve_kernel("te", torch.device("cuda")) == "te"  # the preflight agrees: sm90 + FA3 can run it
    kind, kw = fake_te.built[-1]
    assert kind == "DotProductAttention" and kw == {
        "qkv_format": "bshd", "attn_mask_type": "no_mask", "attention_type": "self", "dropout": 0.0,
        "softmax_scale": 1.0 / math.sqrt(d)}
    assert fake_te.kinds() == {"DotProductAttention"} and fake_te.calls[0][1].fp8_dpa
    assert type(fake_te.calls[0][1]).__name__ == "Float8CurrentScaling"
    fp8_attention(q, k, v, kernel="te")
    assert sum(kind == "DotProductAttention" for kind, _ in fake_te.built) == 1  # built once per shape
    with pytest.raises(ConfigError, match="log-sum-exp.*cp_impl=ulysses"):
        fp8_attention_with_lse(q, k, v, kernel="te")


def test_older_te_uses_fp8_autocast_and_reports_missing_fp8_attention(monkeypatch):
    fake = FakeTransformerEngine(modern=False).install(monkeypatch)
    lin = torch.nn.Linear(32, 16, bias=False)
    layer = TeFp8Linear(lin)
    layer(torch.randn(16, 32))
    assert fake.kinds() == {"Linear"}  # through te.fp8_autocast(fp8_recipe=...): no te.autocast in this TE
    q = torch.randn(1, 16, 2, 16)
    with pytest.raises(RuntimeError, match=r"Transformer Engine \(2.1.0-fake\) has no FP8 attention"):
        fp8_attention(q, q, q, kernel="te")
    with pytest.raises(RuntimeError, match=r"Transformer Engine \(2.1.0-fake\) has no FP8 attention"):
        resolve_kernel("te", torch.device("cuda"))  # before any model loads


def test_modern_te_is_called_without_deprecated_api(fake_te):
    import warnings

    layer = TeFp8Linear(torch.nn.Linear(32, 16, bias=False))
    q = torch.randn(1, 16, 2, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        layer(torch.randn(16, 32))
        fp8_attention(q, q, q, kernel="te")
    assert fake_te.kinds() == {"Linear", "DotProductAttention"}


# (GPU, FA3 installed next to TE, TE's cuDNN, environment) -> the backend TE runs, or our refusal and whether TE
# itself would fail at the first forward (F16 would silently run BF16; DelayedScaling would run, badly scaled).
_GPU_CASES = [
    ((9, 0), True, (9, 10, 0), {}, "FlashAttention 3", None),
    ((9, 0), False, (9, 19, 0), {}, None, "flash-attn-3 package.*precision.fp8_attention_kernel=cudnn"),
    ((10, 0), False, (9, 14, 0), {}, "FusedAttention", None),
    ((10, 0), True, (9, 13, 0), {}, None, r"needs cuDNN >= 9.14, it has 9.13.0"),
    ((8, 9), True, (9, 19, 0), {}, None, "no FP8 attention on sm89"),
    ((12, 0), True, (9, 19, 0), {}, None, "no FP8 attention on sm120"),
    ((9, 0), True, (9, 19, 0), {"NVTE_FLASH_ATTN_V3": "0"}, None, "flash-attn-3"),
    ((9, 0), True, (9, 19, 0), {"NVTE_DPA_FP8_RECIPE": "F16"}, None, "NVTE_DPA_FP8_RECIPE=F16 makes"),
    ((9, 0), False, (9, 19, 0), {"NVTE_DPA_FP8_RECIPE": "DelayedScaling"}, None, "earlier calls' amax"),
    ((10, 0), False, (9, 21, 0), {"NVTE_DPA_FP8_RECIPE": "MXFP8BlockScaling"}, "FusedAttention", None),
    ((10, 0), False, (9, 23, 1), {"NVTE_DPA_FP8_RECIPE": "MXFP8BlockScaling"}, None, "needs cuDNN >= 9.21"),
    ((9, 0), False, (9, 19, 0), {"NVTE_UnfusedDPA_Emulate_FP8": "1"}, "UnfusedDotProductAttention", None),
]
_TE_RUNS_ANYWAY = ("F16", "DelayedScaling")


@pytest.mark.parametrize("capability,fa3,cudnn,env,backend,refusal", _GPU_CASES)
def test_te_fp8_attention_backend_by_gpu_and_install(monkeypatch, capability, fa3, cudnn, env, backend, refusal):
    """precision.fp8_attention_kernel=te is refused before any model loads, with what to install or choose,
    where TE 2.20.2 has no FP8 attention backend (the stand-in's filter, run on the real call, agrees)."""
    from cosmos_dist.config import PrecisionConfig
    from cosmos_dist.pipeline.plan import fp8_attention_kernel

    for name in ("NVTE_DPA_FP8_RECIPE", "NVTE_FLASH_ATTN_V3", "NVTE_UnfusedDPA_Emulate_FP8", "NVTE_FUSED_ATTN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fake = FakeTransformerEngine(capability=capability, fa3_installed=fa3, cudnn=cudnn).install(monkeypatch)
    gpu = torch.device("cuda")
    prec = PrecisionConfig(fp8_attention=True, fp8_attention_kernel="te")
    q = torch.randn(1, 16, 2, 64)
    if backend is None:
        with pytest.raises(ConfigError, match=r"^precision.fp8_attention_kernel: fp8_attention_kernel=te: .*"
                                              + refusal):
            fp8_attention_kernel(prec, gpu)
        if env.get("NVTE_DPA_FP8_RECIPE") not in _TE_RUNS_ANYWAY:
            with pytest.raises(ValueError, match="No dot product attention backend"):
                fp8_attention(q, q, q, kernel="te")  # what TE itself does at the first forward
        return
    assert fp8_attention_kernel(prec, gpu) == "te"
    assert te_support.require_attention(gpu).startswith(backend)
    out = fp8_attention(q, q, q, kernel="te")
    assert out.shape == q.shape and fake.backends() == {backend}


def test_te_context_parallel_head_rules():
    from cosmos_dist.parallel.context_parallel import check_te_heads

    check_te_heads(3, "p2p", 1)
    check_te_heads(4, "a2a", 4)
    with pytest.raises(ConfigError, match="num_heads % 2 == 0"):
        check_te_heads(3, "a2a", 2)
    with pytest.raises(ConfigError, match="even number of heads .*te_comm_type=p2p"):
        check_te_heads(3, "a2a", 3)
    with pytest.raises(ConfigError, match="even number of heads"):
        check_te_heads(9, "a2a+p2p", 3)
    check_te_heads(3, "a2a", 3, flash_attn_installed=True)  # TE's flash-attn backends take odd head counts


def test_kernel_choice_and_its_errors(monkeypatch):
    from cosmos_dist.config import PrecisionConfig
    from cosmos_dist.pipeline.plan import check_fp8_attention_parallel, fp8_linear_kernel

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_linear_kernel("auto", cpu) == "emulated" and resolve_linear_kernel("cublas", cpu) == "emulated"
    monkeypatch.setattr(fp8_mod, "_scaled_mm_supported", lambda device: device.type == "cuda")
    assert resolve_linear_kernel("auto", gpu) == "cublas" and resolve_linear_kernel("cublas", gpu) == "cublas"
    with pytest.raises(ValueError, match="one of"):
        resolve_linear_kernel("fbgemm", cpu)
    prec = PrecisionConfig(fp8_linear=True, fp8_linear_kernel="te")
    assert fp8_linear_kernel(PrecisionConfig(fp8_linear=False, fp8_linear_kernel="te"), gpu) is None
    if te_support._import()[0] is None:  # this machine has no TE: the error says how to get it
        with pytest.raises(ConfigError, match=r"precision.fp8_linear_kernel: Transformer Engine does not import.*"
                                              r"pip install cosmos-dist\[te\]"):
            fp8_linear_kernel(prec, gpu)
        with pytest.raises(RuntimeError, match=r"cosmos-dist\[te\]"):
            resolve_kernel("te", gpu)
    FakeTransformerEngine().install(monkeypatch)
    with pytest.raises(ConfigError, match="precision.fp8_linear_kernel: .*needs a CUDA GPU with FP8"):
        fp8_linear_kernel(prec, cpu)
    with pytest.raises(RuntimeError, match="fp8_attention_kernel=te needs a CUDA GPU"):
        resolve_kernel("te", cpu)
    monkeypatch.setattr(te_support, "available", lambda device: True)
    assert fp8_linear_kernel(prec, gpu) == "te" and resolve_kernel("te", gpu) == "te"
    assert resolve_kernel("auto", cpu) == "emulated"  # auto never picks te

    for kernel in ("te", "cudnn", "emulated", None):
        check_fp8_attention_parallel(kernel, "local")
        check_fp8_attention_parallel(kernel, "ulysses")
    for impl in ("ring", "usp"):
        check_fp8_attention_parallel("cudnn", impl)
        with pytest.raises(ConfigError, match=f"log-sum-exp.*cp_impl={impl}"):
            check_fp8_attention_parallel("te", impl)
    check_fp8_attention_parallel(None, "te")
    with pytest.raises(ConfigError, match="parallel.cp_impl=te runs Transformer Engine's own attention in BF16"):
        check_fp8_attention_parallel("cudnn", "te")


def test_pipeline_with_te_kernels_records_them_and_refuses_streaming(tmp_path, monkeypatch):
    """precision=fp8 with both TE kernels through the real pipeline (tiny model on the CPU, the stand-in TE
    told the CPU is an FP8 GPU): every FP8 layer and attention ran in TE, the sidecar says so, the latent
    is near the float32 one; the config errors come before any model loads."""
    from pipeline_helpers import Recorder, recording_pipeline, small_cfg

    from cosmos_dist.config import validate_config
    from cosmos_dist.pipeline.components import load_dit
    from cosmos_dist.pipeline.plan import PrecisionPlan
    from cosmos_dist.pipeline.runtime import SingleProcess

    fake = FakeTransformerEngine().install(monkeypatch)
    monkeypatch.setattr(te_support, "available", lambda device: True)
    ckpt = tmp_path / "ckpt"
    latents = {}
    runs = {"fp32": (), "te": ("precision=fp8", "precision.fp8_linear_kernel=te", "precision.fp8_attention_kernel=te")}
    for name, extra in runs.items():
        out = tmp_path / name
        cfg = small_cfg(ckpt, out, "prompt=a red ball", "name=s", "save_latents=true", "device=cpu",
                        "height=64", "width=64", *extra)  # 2 x 4 x 4 patches: FP8-sized token counts
        summary = recording_pipeline(cfg, Recorder(), monkeypatch).run()
        assert summary.done == ["s"] and not summary.failed
        latents[name] = torch.load(out / "s.latent.pt")
        if name == "te":
            fp8 = json.loads((out / "s.json").read_text())["precision"]["dit_fp8"]
            assert fp8["linear_kernel"] == "te" and fp8["attention_kernel"] == "te"
            assert fp8["linear_layers"] == {"fp8": 20, "run_dtype": 0}  # tiny: 2 blocks x 10, every shape fits
    assert fake.kinds() == {"Linear", "DotProductAttention"}
    assert 1e-4 < rel_err(latents["te"], latents["fp32"]) < 0.2

    bad = small_cfg(ckpt, tmp_path / "x", "prompt=x", "precision=fp8", "precision.fp8_linear_kernel=tensorrt")
    with pytest.raises(ConfigError, match="precision.fp8_linear_kernel"):
        validate_config(bad)
    streamed = small_cfg(ckpt, tmp_path / "y", "prompt=x", "precision=fp8", "precision.fp8_linear_kernel=te")
    with pytest.raises(ConfigError, match="fp8_linear_kernel=te.*offload=dit"):
        plan = PrecisionPlan.resolve(streamed, SingleProcess())
        plan.device = torch.device("cuda")  # as on a GPU, where offload=dit loads on the CPU to stream
        load_dit(ckpt / "never-read.pt", streamed, plan, "cpu")


@pytest.mark.skipif(not TE_GPU, reason="needs Transformer Engine and a GPU with FP8 tensor cores")
def test_real_te_linear_and_attention_on_gpu():
    g = torch.Generator().manual_seed(3)
    lin = torch.nn.Linear(512, 256, bias=False)
    torch.nn.init.normal_(lin.weight, std=0.05, generator=g)
    lin = lin.cuda().bfloat16()
    x = torch.randn(4, 64, 512, generator=g).cuda().bfloat16()
    layer = TeFp8Linear(lin)
    with torch.no_grad():
        out, ref = layer(x), lin(x)
        compiled = torch.compile(layer)(x)  # the TE call stays outside the compiled graph
    assert 1e-4 < rel_err(out.float(), ref.float()) < 6e-2
    assert rel_err(compiled.float(), out.float()) < 1e-2
    try:
        te_support.require_attention(torch.device("cuda"))
    except RuntimeError as exc:
        pytest.skip(f"no TE FP8 attention backend here: {exc}")
    q, k, v = (torch.randn(2, 1024, 8, 128, generator=g).cuda().bfloat16() for _ in range(3))
    att = fp8_attention(q, k, v, kernel="te")
    assert att.shape == q.shape and rel_err(att.float(), sdpa_attention(q, k, v).float()) < 0.1
