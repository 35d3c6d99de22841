"""Checkpoint readers, strict validation, variant detection and loading (cosmos_dist.checkpoint).

The full-size key/shape table below is written from spec section 3.7 and appendix 13, not from the
model code, and checked against both the network built on the meta device and the plan of what
tools/make_checkpoint.py writes (without writing 14 GB).
"""
from __future__ import annotations

import io
import json
import math
import shutil
import zipfile

import pytest
import torch

from cosmos_dist.checkpoint import (
    checkpoint_identity,
    checkpoint_plan,
    convert_checkpoint,
    detect_checkpoint,
    detect_variant,
    inspect_checkpoint,
    load_dit,
    mismatch_message,
    plan_parameter_count,
    random_checkpoint,
    validate_shapes,
    write_random_checkpoint,
)
from cosmos_dist.errors import CheckpointError
from cosmos_dist.models import PRESET_NAMES, build_dit, get_preset

# ----------------------------------------------------------------------------------------------
# Spec 3.7 / 13, independent of the model code


def spec_network_shapes(d: int, n_blocks: int, v2w: bool) -> dict[str, tuple[int, ...]]:
    """`net.*` keys and shapes of the reference state dict (spec 3.7), including pos_embedder.seq."""
    hd, lora, ctx, hidden = 128, 256, 1024, 4 * d
    s = {
        "net.x_embedder.proj.1.weight": (d, 72 if v2w else 68),
        "net.pos_embedder.seq": (128,),
        "net.extra_pos_embedder.pos_emb_h": (120, d),
        "net.extra_pos_embedder.pos_emb_w": (120, d),
        "net.extra_pos_embedder.pos_emb_t": (128, d),
        "net.t_embedder.1.linear_1.weight": (d, d),
        "net.t_embedder.1.linear_2.weight": (3 * d, d),
        "net.final_layer.linear.weight": (64, d),
        "net.final_layer.adaLN_modulation.1.weight": (lora, d),
        "net.final_layer.adaLN_modulation.2.weight": (2 * d, lora),
        "net.affline_norm.weight": (d,),
    }
    for i in range(n_blocks):
        p = f"net.blocks.block{i}.blocks"
        for j, kv_in in ((0, d), (1, ctx)):  # FA (self), CA (cross to T5)
            a = f"{p}.{j}.block.attn"
            s[f"{a}.to_q.0.weight"] = (d, d)
            s[f"{a}.to_q.1.weight"] = (hd,)
            s[f"{a}.to_k.0.weight"] = (d, kv_in)
            s[f"{a}.to_k.1.weight"] = (hd,)
            s[f"{a}.to_v.0.weight"] = (d, kv_in)
            s[f"{a}.to_out.0.weight"] = (d, d)
        s[f"{p}.2.block.layer1.weight"] = (hidden, d)
        s[f"{p}.2.block.layer2.weight"] = (d, hidden)
        for j in range(3):
            s[f"{p}.{j}.adaLN_modulation.1.weight"] = (lora, d)
            s[f"{p}.{j}.adaLN_modulation.2.weight"] = (3 * d, lora)
    return s


def spec_file_keys(d: int, n_blocks: int, v2w: bool) -> set[str]:
    keys = set(spec_network_shapes(d, n_blocks, v2w))
    keys |= {f"net.blocks.block{i}.blocks.{j}.block.attn.attn_op._extra_state" for i in range(n_blocks) for j in (0, 1)}
    keys |= {"logvar.0.freqs", "logvar.0.phases", "logvar.1.weight"}
    return keys


FULL = {  # preset -> (D, blocks, v2w, spec parameter count, spec key count)
    "7b_text2world": (4096, 28, False, 7_236_192_256, 630),
    "7b_video2world": (4096, 28, True, 7_236_192_256 + 16_384, 630),
    "14b_text2world": (5120, 36, False, 14_267_149_312, 806),
    "14b_video2world": (5120, 36, True, 14_267_149_312 + 20_480, 806),
}


@pytest.mark.parametrize("preset", sorted(FULL))
def test_full_size_state_dict_matches_spec(preset):
    d, nb, v2w, n_params, n_keys = FULL[preset]
    want = spec_network_shapes(d, nb, v2w)
    # The spec's own arithmetic agrees with its published parameter count.
    assert sum(math.prod(s) for k, s in want.items() if k != "net.pos_embedder.seq") == n_params

    net = build_dit(get_preset(preset), device="meta")
    got = {"net." + k: tuple(t.shape) for k, t in net.state_dict().items()}
    assert got == want
    assert sum(p.numel() for p in net.parameters()) == n_params

    plan = checkpoint_plan(get_preset(preset))  # the default extra-state form: pickled None
    assert len(plan) == n_keys
    assert {e.key for e in plan} == spec_file_keys(d, nb, v2w)
    assert all(e.shape == want[e.key] for e in plan if e.key in want)
    assert plan_parameter_count(plan) == n_params
    assert [e.key for e in plan[-3:]] == ["logvar.0.freqs", "logvar.0.phases", "logvar.1.weight"]
    assert {e.shape for e in plan if e.key.startswith("logvar")} == {(128,), (1, 128)}

    # Variant detection from the shapes alone.
    cfg = detect_variant({e.key: e.shape for e in plan})
    assert cfg.name == preset
    assert cfg.rope_extrapolation == ((2.0, 2.0, 2.0) if d == 5120 else (2.0, 1.0, 1.0))
    assert validate_shapes({e.key: e.shape for e in plan}, get_preset(preset)).ok


def test_14b_video2world_shapes_against_7b_name_the_variant():
    plan = checkpoint_plan(get_preset("14b_video2world"))
    shapes = {e.key: e.shape for e in plan}
    report = validate_shapes(shapes, get_preset("7b_text2world"))
    assert not report.ok
    assert len(report.unexpected) == 8 * 20  # blocks 28..35
    msg = mismatch_message("model.pt", report, detect_variant(shapes))
    assert "This looks like a 14B Video2World checkpoint; use model=14b_video2world." in msg
    assert "net.x_embedder.proj.1.weight: file (5120, 72) vs model (4096, 68)" in msg
    assert "160 unexpected keys" in msg


def test_plan_extra_state_forms_and_layout():
    cfg = get_preset("tiny_text2world")
    assert len(checkpoint_plan(cfg, "none")) == len(checkpoint_plan(cfg)) - 2 * cfg.num_blocks
    assert len(checkpoint_plan(cfg, "pickled-none", include_logvar=False)) == len(checkpoint_plan(cfg)) - 3
    keys = [e.key for e in checkpoint_plan(cfg)]
    # The attention op's extra state follows that attention's projections.
    i = keys.index("net.blocks.block0.blocks.0.block.attn.attn_op._extra_state")
    assert keys[i - 1] == "net.blocks.block0.blocks.0.block.attn.to_out.0.weight"
    with pytest.raises(ValueError):
        checkpoint_plan(cfg, "bogus")


@pytest.mark.parametrize("preset", [p for p in PRESET_NAMES if p.startswith("tiny")])
def test_detect_tiny_presets(preset):
    cfg = get_preset(preset)
    assert detect_variant({e.key: e.shape for e in checkpoint_plan(cfg)}) == cfg


def test_detect_custom_shapes():
    cfg = get_preset("tiny_video2world").replace(
        model_channels=96, num_blocks=3, num_heads=3, mlp_ratio=2.5, crossattn_emb_channels=48,
        adaln_lora_dim=16, max_img_h=64, max_img_w=80, max_frames=32, name="x",
    )
    got = detect_variant({e.key: e.shape for e in checkpoint_plan(cfg)})
    assert got == cfg.replace(name="custom_video2world")


# ----------------------------------------------------------------------------------------------
# Round trips on tiny files

TINY = get_preset("tiny_text2world")


def _inputs(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, t, h, w = 1, 2, 4, 6
    kw = dict(
        x=torch.randn(b, 16, t, h, w, generator=g),
        timesteps=torch.tensor([0.25]),
        crossattn_emb=torch.randn(b, 7, cfg.crossattn_emb_channels, generator=g),
        fps=torch.tensor([24.0]),
        padding_mask=torch.zeros(1, 1, 8 * h, 8 * w),
    )
    if cfg.video2world:
        kw["condition_video_input_mask"] = torch.zeros(b, 1, t, h, w)
        kw["condition_video_input_mask"][:, :, :1] = 1
    return kw


def _forward(net, cfg):
    kw = _inputs(cfg)
    with torch.no_grad():
        return net(kw.pop("x"), kw.pop("timesteps"), kw.pop("crossattn_emb"), **kw)


def _reference_net(state: dict, cfg, dtype=torch.float32):
    """The network built the ordinary way with the file's weights put in by load_state_dict."""
    net = build_dit(cfg, device="cpu", dtype=dtype)
    net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.") and "_extra_state" not in k})
    return net


@pytest.mark.parametrize("form", ["none", "pickled-none", "empty", "bytesio", "safetensors"])
@pytest.mark.parametrize("preset", ["tiny_text2world", "tiny_video2world"])
def test_round_trip(tmp_path, form, preset):
    cfg = get_preset(preset)
    fmt = "safetensors" if form == "safetensors" else "pt"
    path = tmp_path / f"model.{fmt}"
    info = write_random_checkpoint(path, cfg, fmt=fmt, extra_state=None if fmt == "safetensors" else form,
                                   dtype=torch.float32, seed=3)
    written = random_checkpoint(cfg, "none", torch.float32, seed=3)
    assert info["parameters"] == sum(p.numel() for p in build_dit(cfg, "meta").parameters())

    unsafe = form == "bytesio"
    net = load_dit(path, dtype=torch.float32, allow_unsafe_pickle=unsafe)
    assert net.config == cfg
    sd = net.state_dict()
    for key, value in written.items():
        if key.startswith("net.") and key != "net.pos_embedder.seq":
            assert torch.equal(sd[key[4:]], value), key
    assert torch.equal(sd["pos_embedder.seq"], torch.arange(128, dtype=torch.float32))
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    assert all(t.device.type == "cpu" for t in [*net.parameters(), *net.buffers()])
    assert net.checkpoint_identity.size == path.stat().st_size
    assert net.checkpoint_format == fmt

    out = _forward(net, cfg)
    assert torch.isfinite(out).all() and out.abs().mean() > 0
    assert torch.equal(out, _forward(_reference_net(written, cfg), cfg))

    # With the preset named explicitly too.
    assert torch.equal(_forward(load_dit(path, cfg, dtype=torch.float32, allow_unsafe_pickle=unsafe), cfg), out)


def test_bfloat16_file_and_run_dtypes(tmp_path):
    path = tmp_path / "model.pt"
    write_random_checkpoint(path, TINY, dtype=torch.bfloat16, seed=1)
    written = random_checkpoint(TINY, "none", torch.bfloat16, seed=1)
    net = load_dit(path)  # default run dtype bfloat16
    assert net.dtype == torch.bfloat16
    layer1 = written["net.blocks.block1.blocks.2.block.layer1.weight"]
    assert torch.equal(net.blocks.block1.blocks[2].block.layer1.weight, layer1)
    assert net.pos_embedder.seq.dtype == torch.bfloat16
    out = _forward(net, TINY)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert torch.equal(out, _forward(_reference_net(written, TINY, torch.bfloat16), TINY))
    net32 = load_dit(path, dtype=torch.float32)
    assert net32.dtype == torch.float32
    assert torch.equal(net32.t_embedder[1].linear_1.weight, written["net.t_embedder.1.linear_1.weight"].float())


def test_ignored_entries_are_ignored(tmp_path):
    state = random_checkpoint(TINY, "pickled-none", torch.float32, seed=2)
    # Newer TE: RMSNorm extra state; a corrupted seq buffer is never trusted either.
    state["net.affline_norm._extra_state"] = torch.empty(0, dtype=torch.uint8)
    state["net.blocks.block0.blocks.0.block.attn.to_q.1._extra_state"] = torch.tensor([1, 2], dtype=torch.uint8)
    state["net.pos_embedder.seq"] = torch.full((128,), 7.0)
    state["logvar.2.extra"] = torch.ones(3)
    path = tmp_path / "model.pt"
    torch.save(state, path)
    net = load_dit(path, TINY, dtype=torch.float32)
    assert torch.equal(net.pos_embedder.seq, torch.arange(128, dtype=torch.float32))
    info = inspect_checkpoint(path)
    assert info["valid"] and info["keys"]["extra_state"] == 6 and info["keys"]["logvar"] == 4
    assert info["keys"]["ignored"] == 1 and info["variant"] == "tiny_text2world"


def test_legacy_torch_format_loads(tmp_path):
    state = random_checkpoint(TINY, "pickled-none", torch.float32, seed=4)
    path = tmp_path / "legacy.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    net = load_dit(path, dtype=torch.float32)
    assert torch.equal(net.affline_norm.weight, state["net.affline_norm.weight"])


def test_rope_override_is_kept(tmp_path):
    path = tmp_path / "model.pt"
    write_random_checkpoint(path, TINY, dtype=torch.float32)
    cfg = detect_checkpoint(path).replace(rope_extrapolation=(3.0, 2.0, 2.0))
    net = load_dit(path, cfg, dtype=torch.float32)
    assert net.config.rope_extrapolation == (3.0, 2.0, 2.0)


def test_convert_and_inspect(tmp_path):
    src = tmp_path / "model.pt"
    write_random_checkpoint(src, get_preset("tiny_video2world"), extra_state="bytesio", dtype=torch.float32, seed=5)
    dst = tmp_path / "out" / "model.safetensors"
    with pytest.raises(CheckpointError, match="BytesIO"):
        convert_checkpoint(src, dst)
    rec = convert_checkpoint(src, dst, allow_unsafe_pickle=True)
    assert rec["tensors"] == 51 and rec["dropped"] == {"extra_state": 4, "logvar": 3}
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["config"]["video2world"] is True and meta["variant"] == "tiny_video2world"
    assert meta["source"]["fingerprint"] == checkpoint_identity(src).fingerprint
    a = load_dit(src, dtype=torch.float32, allow_unsafe_pickle=True)
    b = load_dit(dst, dtype=torch.float32)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    info = inspect_checkpoint(dst)
    assert info["valid"] and info["format"] == "safetensors" and info["parameters"] == 732_544
    assert info["keys"] == {"total": 51, "network": 50, "extra_state": 0, "logvar": 0, "ignored": 1}
    assert info["dtypes"] == {"float32": 50}


def test_checkpoint_identity(tmp_path):
    path = tmp_path / "model.pt"
    write_random_checkpoint(path, TINY)
    ident = checkpoint_identity(path)
    assert ident.size == path.stat().st_size and ident.path == str(path.resolve())
    assert ident.fingerprint.startswith("sha256:") and json.dumps(ident.to_dict())
    copy = tmp_path / "copy.pt"
    shutil.copy(path, copy)
    assert checkpoint_identity(copy).fingerprint == ident.fingerprint
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    copy.write_bytes(bytes(data))
    assert checkpoint_identity(copy).fingerprint != ident.fingerprint


# ----------------------------------------------------------------------------------------------
# Error paths: always a CheckpointError naming the path, without a chained torch traceback


def _error(path, *args, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        load_dit(path, *args, **kwargs)
    assert str(path) in str(info.value)
    # No chained torch exception: nothing but our message is printed for an uncaught error.
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ or info.value.__context__ is None
    return str(info.value)


def test_wrong_variant_named(tmp_path):
    path = tmp_path / "v2w.pt"
    write_random_checkpoint(path, get_preset("tiny_video2world"))
    msg = _error(path, get_preset("tiny_text2world"))
    assert "does not match model tiny_text2world" in msg
    assert "This looks like a tiny Video2World checkpoint; use model=tiny_video2world." in msg
    assert "net.x_embedder.proj.1.weight: file (128, 72) vs model (128, 68)" in msg


def test_wider_file_loaded_as_narrower(tmp_path):
    # The 14B-file-as-7B situation in miniature: every width differs and there are extra blocks.
    wide = get_preset("tiny_video2world").replace(model_channels=192, num_heads=6, num_blocks=3, name="w")
    path = tmp_path / "wide.pt"
    write_random_checkpoint(path, wide)
    msg = _error(path, TINY)
    assert "matches no preset" in msg and "custom Video2World (D=192, 3 blocks, 6 heads" in msg
    assert "20 unexpected keys: net.blocks.block2." in msg
    assert "mis-shaped keys: net.x_embedder.proj.1.weight: file (192, 72) vs model (128, 68)" in msg
    net = load_dit(path)  # built from the file's shapes
    assert net.config == wide.replace(name="custom_video2world")
    # ... and the other way round: the tiny file against the wide config names the tiny preset.
    tiny = tmp_path / "tiny.pt"
    write_random_checkpoint(tiny, TINY)
    assert "use model=tiny_text2world" in _error(tiny, wide)


@pytest.fixture
def tiny_state():
    return random_checkpoint(TINY, "pickled-none", torch.float32, seed=6)


def test_missing_key(tmp_path, tiny_state):
    key = "net.blocks.block0.blocks.0.block.attn.to_q.1.weight"  # one detection reads
    del tiny_state[key]
    path = tmp_path / "m.pt"
    torch.save(tiny_state, path)
    for cfg in (TINY, None):
        msg = _error(path, cfg)
        assert f"1 missing key: {key}" in msg
        assert "incomplete or was modified" in msg


def test_reshaped_tensor(tmp_path, tiny_state):
    key = "net.blocks.block1.blocks.2.block.layer1.weight"
    tiny_state[key] = tiny_state[key].reshape(256, 256)
    path = tmp_path / "r.pt"
    torch.save(tiny_state, path)
    msg = _error(path, TINY)
    assert f"1 mis-shaped key: {key}: file (256, 256) vs model (512, 128)" in msg


def test_unexpected_key(tmp_path, tiny_state):
    tiny_state["net.blocks.block0.blocks.2.block.layer3.weight"] = torch.zeros(4, 4)
    path = tmp_path / "u.pt"
    torch.save(tiny_state, path)
    msg = _error(path)
    assert "1 unexpected key: net.blocks.block0.blocks.2.block.layer3.weight" in msg


def test_non_tensor_and_non_float_values(tmp_path, tiny_state):
    tiny_state["net.affline_norm.weight"] = "not a tensor"
    tiny_state["net.final_layer.linear.weight"] = torch.zeros(64, 128, dtype=torch.int64)
    path = tmp_path / "n.pt"
    torch.save(tiny_state, path)
    msg = _error(path, TINY)
    assert "net.affline_norm.weight: file a str, not a tensor" in msg
    assert "of dtype torch.int64, not floating point" in msg


def test_bytesio_needs_opt_in(tmp_path):
    path = tmp_path / "b.pt"
    write_random_checkpoint(path, TINY, extra_state="bytesio", dtype=torch.float32)
    msg = _error(path)
    for part in ("io.BytesIO", "Transformer Engine", "weights_only=True",
                 f"cosmos-dist convert {path} --output OUT.safetensors", "allow_unsafe_pickle=True",
                 "--allow-unsafe-pickle"):
        assert part in msg
    assert load_dit(path, dtype=torch.float32, allow_unsafe_pickle=True).config == TINY
    with pytest.raises(CheckpointError, match="BytesIO"):
        inspect_checkpoint(path)


def test_other_pickled_objects_refused(tmp_path, tiny_state):
    """Only io.BytesIO is ever accepted with allow_unsafe_pickle; anything else needs trust_file."""
    tiny_state["net.blocks.block0.blocks.0.block.attn.attn_op._extra_state"] = zipfile.ZipInfo("x")
    path = tmp_path / "o.pt"
    torch.save(tiny_state, path)
    for unsafe in (False, True):
        msg = _error(path, allow_unsafe_pickle=unsafe)
        assert "refusing to load" in msg and "zipfile.ZipInfo" in msg and "--trust-file" not in msg
    assert load_dit(path, trust_file=True).config == TINY


class _Payload:
    """Unpickling this calls os.system (posix.system), which creates `marker`: a stand-in for malware."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch '{self.marker}'",))


def _cosmos_dist(*argv):
    """`cosmos-dist SUBCOMMAND ARGS` in a fresh process (the entry point every tool shares)."""
    import subprocess
    import sys

    from cosmos_dist.commands import COMMANDS

    code = "import sys; from cosmos_dist.commands import run_command; sys.exit(run_command(sys.argv[1], sys.argv[2:]))"
    return subprocess.run([sys.executable, "-c", code, COMMANDS[argv[0]], *map(str, argv[1:])],
                          capture_output=True, text=True, timeout=120)


def test_malicious_pickle_is_named_and_the_hint_never_runs_it(tmp_path, tiny_state):
    marker = tmp_path / "payload-ran"
    tiny_state["net.blocks.block0.blocks.0.block.attn.attn_op._extra_state"] = _Payload(marker)
    path = tmp_path / "model.pt"
    torch.save(tiny_state, path)

    first = _cosmos_dist("inspect", path)
    assert first.returncode == 2 and not marker.exists(), first
    msg = first.stderr
    assert "posix.system" in msg and "refusing to load" in msg, msg
    assert "--trust-file" not in msg and "weights_only=False" not in msg  # nothing steers towards running it
    # Doing what an older message recommended (and the BytesIO message still does) must not run it either.
    for argv in (("inspect", path, "--allow-unsafe-pickle"),
                 ("convert", path, "--output", tmp_path / "OUT.safetensors", "--allow-unsafe-pickle")):
        res = _cosmos_dist(*argv)
        assert res.returncode == 2 and "posix.system" in res.stderr, res
        assert not marker.exists(), argv
        assert not (tmp_path / "OUT.safetensors").exists()
    with pytest.raises(CheckpointError, match="posix.system"):
        load_dit(path, allow_unsafe_pickle=True)
    assert not marker.exists()
    # The separate, explicit flag really does unpickle (so the payload above is live, and was refused).
    _cosmos_dist("inspect", path, "--trust-file")
    assert marker.exists()


def test_bytesio_form_loads_without_full_unpickling(tmp_path, monkeypatch):
    """allow_unsafe_pickle on the released files' BytesIO form never calls torch.load(weights_only=False)."""
    path = tmp_path / "b.pt"
    write_random_checkpoint(path, TINY, extra_state="bytesio", dtype=torch.float32)
    real = torch.load

    def load(*args, **kwargs):
        assert kwargs.get("weights_only") is True
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    info = inspect_checkpoint(path, allow_unsafe_pickle=True)
    assert info["valid"] and info["extra_state_forms"] == {"BytesIO": 4}


def test_truncated_files(tmp_path):
    for fmt in ("pt", "safetensors"):
        path = tmp_path / f"model.{fmt}"
        write_random_checkpoint(path, TINY, fmt=fmt)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        assert "truncated" in _error(path)
        path.write_bytes(data[:-100])
        assert "truncated" in _error(path)
    legacy = tmp_path / "legacy.pt"
    torch.save(random_checkpoint(TINY, "none"), legacy, _use_new_zipfile_serialization=False)
    data = legacy.read_bytes()
    legacy.write_bytes(data[: len(data) // 2])
    assert "the file is truncated" in _error(legacy)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("empty", "the file is empty"),
        ("text", "not a checkpoint"),
        ("zip", "zip archive, but not a PyTorch checkpoint"),
        ("tensor", "holds a single tensor of shape (3, 4)"),
        ("list", "holds a list, not a state dict"),
        ("wrapped", "wrapped training checkpoint"),
        ("no_prefix", "no `net.*` keys"),
        ("missing", "checkpoint file not found"),
        ("directory", "is a directory"),
    ],
)
def test_not_a_checkpoint(tmp_path, case, expected):
    path = tmp_path / "model.pt"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("hello, this is not a model\n")
    elif case == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "hi")
    elif case == "tensor":
        torch.save(torch.zeros(3, 4), path)
    elif case == "list":
        torch.save([torch.zeros(3)], path)
    elif case == "wrapped":
        torch.save({"model": {"net.x": torch.zeros(1)}, "step": 3}, path)
    elif case == "no_prefix":
        torch.save({k[4:]: v for k, v in random_checkpoint(TINY, "none").items() if k.startswith("net.")}, path)
    elif case == "directory":
        path.mkdir()
    msg = _error(path)
    assert expected in msg
    if case not in ("missing", "directory"):
        with pytest.raises(CheckpointError):
            inspect_checkpoint(path) if case != "no_prefix" else load_dit(path, TINY)


def test_no_prefix_with_cfg_mentions_prefix(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({k[4:]: v for k, v in random_checkpoint(TINY, "none").items() if k.startswith("net.")}, path)
    msg = _error(path, TINY)
    assert "lack the `net.` prefix" in msg and "Could not tell which network" in msg


def test_bytesio_payload_is_a_real_bytesio(tmp_path):
    state = random_checkpoint(TINY, "bytesio")
    values = [v for k, v in state.items() if "_extra_state" in k]
    assert len(values) == 2 * TINY.num_blocks and all(isinstance(v, io.BytesIO) for v in values)
    pickled = random_checkpoint(TINY, "pickled-none")
    value = pickled["net.blocks.block0.blocks.1.block.attn.attn_op._extra_state"]
    assert value.dtype == torch.uint8 and __import__("pickle").loads(value.numpy().tobytes()) is None
