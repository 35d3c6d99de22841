"""The checkpoint tools run as scripts (`python tools/NAME.py ...`) on tiny checkpoints."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from cosmos_dist.checkpoint import detect_checkpoint, load_dit, random_checkpoint
from cosmos_dist.models import get_preset

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"


def run(tool: str, *args, expect: int = 0) -> subprocess.CompletedProcess:
    """`python tools/TOOL.py ARGS...` in its own interpreter."""
    proc = subprocess.run(
        [sys.executable, str(TOOLS / f"{tool}.py"), *map(str, args)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == expect, f"{tool} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


# Runs several tool scripts as __main__ in ONE child interpreter (one torch import instead of one
# per run); each run's exit code, stdout and stderr are reported separately.
_BATCH = r"""
import contextlib, io, json, runpy, sys, traceback
results = []
for tool, args in json.loads(sys.argv[1]):
    out, err, code = io.StringIO(), io.StringIO(), 0
    sys.argv = [tool, *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(tool, run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 99
    results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(results))
"""


class Result:
    def __init__(self, d):
        self.returncode, self.stdout, self.stderr = d["code"], d["stdout"], d["stderr"]


def run_batch(*runs) -> list[Result]:
    """runs: (tool, [args...], expected exit code). Checks codes and that no traceback escaped."""
    spec = [(str(TOOLS / f"{tool}.py"), [str(a) for a in args]) for tool, args, _ in runs]
    proc = subprocess.run([sys.executable, "-c", _BATCH, json.dumps(spec)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = [Result(d) for d in json.loads(proc.stdout.strip().splitlines()[-1])]
    for (tool, args, expect), r in zip(runs, results):
        assert r.returncode == expect, f"{tool} {args} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
        assert "Traceback" not in r.stderr, r.stderr
    return results


def test_help_of_every_tool():
    names = ["make_checkpoint", "inspect_checkpoint", "convert_checkpoint", "dit_forward"]
    results = run_batch(*((n, ["--help"], 0) for n in names))
    for name, r in zip(names, results):
        assert f"usage: {name}.py" in r.stdout
    text = "".join(r.stdout for r in results)
    for phrase in ("--extra-state", "--allow-unsafe-pickle", "condition_video_input_mask", "--rope-scale", "OUT.json"):
        assert phrase in text


def _inputs(cfg, path: Path, **overrides) -> dict:
    g = torch.Generator().manual_seed(1)
    b, t, h, w = 2, 2, 4, 4
    d = {
        "x": torch.randn(b, 16, t, h, w, generator=g),
        "timesteps": torch.tensor([0.1, -0.4]),
        "crossattn_emb": torch.randn(b, 6, cfg.crossattn_emb_channels, generator=g),
        "fps": 12.0,
        "padding_mask": torch.zeros(1, 1, 8 * h, 8 * w),
    }
    if cfg.video2world:
        d["condition_video_input_mask"] = torch.zeros(b, 1, t, h, w)
        d["condition_video_input_mask"][:, :, 0] = 1
    d.update(overrides)
    d = {k: v for k, v in d.items() if v is not None}
    torch.save(d, path)
    return d


def _expected(ckpt, inputs, dtype, unsafe=False, rope=None):
    cfg = detect_checkpoint(ckpt, unsafe)
    if rope is not None:
        cfg = cfg.replace(rope_extrapolation=rope)
    net = load_dit(ckpt, cfg, dtype=dtype, allow_unsafe_pickle=unsafe)
    fps = torch.tensor([float(inputs["fps"])])
    with torch.no_grad():
        return net(inputs["x"].to(dtype), inputs["timesteps"].to(dtype), inputs["crossattn_emb"].to(dtype), fps=fps,
                   padding_mask=inputs["padding_mask"],
                   condition_video_input_mask=inputs.get("condition_video_input_mask")).float()


def test_video2world_bytesio_pipeline(tmp_path):
    cfg = get_preset("tiny_video2world")
    pt = tmp_path / "ckpt" / "model.pt"
    st = tmp_path / "conv" / "model.safetensors"
    res = tmp_path / "out.pt"
    inputs = _inputs(cfg, tmp_path / "in.pt")
    _inputs(cfg, tmp_path / "bad.pt", condition_video_input_mask=None)
    make, refuse, unsafe, conv_refuse, conv, as_json, wrong, forward, bad = run_batch(
        ("make_checkpoint", ["--preset", "tiny_video2world", "--output", pt, "--extra-state", "bytesio",
                             "--dtype", "float32", "--seed", "7"], 0),
        ("inspect_checkpoint", [pt], 2),  # weights_only refuses the BytesIO entries
        ("inspect_checkpoint", [pt, "--allow-unsafe-pickle"], 0),
        ("convert_checkpoint", [pt, "--output", st], 2),
        ("convert_checkpoint", [pt, "--output", st, "--allow-unsafe-pickle"], 0),
        ("inspect_checkpoint", [st, "--json"], 0),
        ("inspect_checkpoint", [st, "--model", "tiny_text2world"], 1),
        ("dit_forward", ["--checkpoint", st, "--inputs", tmp_path / "in.pt", "--output", res, "--dtype", "float32",
                         "--rope-scale", "2,2,2"], 0),
        ("dit_forward", ["--checkpoint", st, "--inputs", tmp_path / "bad.pt", "--output", res], 2),
    )
    assert "keys        58" in make.stdout and "parameters  732,544" in make.stdout and str(pt) in make.stdout
    assert refuse.stderr.startswith("error: ") and "io.BytesIO" in refuse.stderr
    assert "cosmos-dist convert" in refuse.stderr
    assert "tiny_video2world (tiny Video2World)" in unsafe.stdout and "validation   OK" in unsafe.stdout
    assert "58 = network 50 + extra_state 4 + logvar 3 + ignored 1" in unsafe.stdout and "4 x BytesIO" in unsafe.stdout
    assert "io.BytesIO" in conv_refuse.stderr
    assert "51 tensors" in conv.stdout and "dropped 4 extra_state and 3 logvar" in conv.stdout
    record = json.loads(st.with_suffix(".json").read_text())
    assert record["variant"] == "tiny_video2world" and record["config"]["crossattn_emb_channels"] == 64
    info = json.loads(as_json.stdout)
    assert info["valid"] and info["variant"] == "tiny_video2world" and info["parameters"] == 732_544
    assert info["keys"]["total"] == 51 and info["dtypes"] == {"float32": 50}
    assert "validation   FAILED" in wrong.stdout and "use model=tiny_video2world" in wrong.stdout
    # A Video2World input dict without its condition mask: one clear error naming key and shape.
    assert "condition_video_input_mask" in bad.stderr and "[2, 1, 2, 4, 4]" in bad.stderr

    # dit_forward on the converted file equals an in-process forward of the original file.
    got = torch.load(res, weights_only=True)
    assert set(got) == {"out"} and got["out"].dtype == torch.float32 and got["out"].shape == inputs["x"].shape
    want = _expected(pt, inputs, torch.float32, unsafe=True, rope=(2.0, 2.0, 2.0))
    assert torch.equal(got["out"], want)
    assert not torch.equal(got["out"], _expected(pt, inputs, torch.float32, unsafe=True))  # the rope flag acts


def test_text2world_tools(tmp_path):
    cfg = get_preset("tiny_text2world")
    pt = tmp_path / "model.pt"
    st = tmp_path / "model.safetensors"
    # One plain run of a script in its own interpreter.
    out = run("make_checkpoint", "--preset", "tiny_text2world", "--output", pt, "--extra-state", "empty", "--seed", "4")
    assert "keys        58" in out.stdout
    inputs = _inputs(cfg, tmp_path / "in.pt")
    torch.save({**inputs, "crossattn_emb": torch.zeros(2, 6, 1024)}, tmp_path / "bad.pt")
    torch.save({**inputs, "sigma": torch.zeros(2)}, tmp_path / "extra.pt")
    (tmp_path / "text.pt").write_text("not a model")
    res = tmp_path / "out.pt"
    missing = tmp_path / "nope.pt"
    fwd, bad, extra, make_st, no_file, not_ckpt, st_bytesio = run_batch(
        ("dit_forward", ["--checkpoint", pt, "--inputs", tmp_path / "in.pt", "--output", res], 0),
        ("dit_forward", ["--checkpoint", pt, "--inputs", tmp_path / "bad.pt", "--output", res], 2),
        ("dit_forward", ["--checkpoint", pt, "--inputs", tmp_path / "extra.pt", "--output", res], 2),
        ("make_checkpoint", ["--preset", "tiny_text2world", "--output", st, "--seed", "4"], 0),
        ("inspect_checkpoint", [missing], 2),
        ("convert_checkpoint", [tmp_path / "text.pt", "--output", tmp_path / "o.safetensors"], 2),
        ("make_checkpoint", ["--preset", "tiny_text2world", "--output", tmp_path / "m.safetensors",
                             "--extra-state", "bytesio"], 2),
    )
    assert "tiny_text2world" in fwd.stdout and "bfloat16" in fwd.stdout
    got = torch.load(res, weights_only=True)["out"]
    assert torch.isfinite(got).all()
    assert torch.equal(got, _expected(pt, inputs, torch.bfloat16))
    assert ("inputs['crossattn_emb'] must be a tensor of shape [B, L, C] = [2, L, 64]; got shape (2, 6, 1024)"
            in bad.stderr)
    assert "unknown inputs key(s) ['sigma']" in extra.stderr
    assert no_file.stderr == f"error: {missing}: checkpoint file not found\n"
    assert "not a checkpoint" in not_ckpt.stderr
    assert "safetensors cannot hold io.BytesIO" in st_bytesio.stderr

    # Both formats hold the same random weights for a seed; the .pt file has the real layout.
    state = random_checkpoint(cfg, "none", torch.bfloat16, seed=4)
    for path in (pt, st):
        net = load_dit(path)
        assert all(torch.equal(v, state["net." + k]) for k, v in net.state_dict().items() if k != "pos_embedder.seq")
    raw = torch.load(pt, weights_only=True, mmap=True)
    assert len(raw) == 58 and torch.equal(raw["net.pos_embedder.seq"], torch.arange(128).to(torch.bfloat16))
    assert raw["logvar.1.weight"].shape == (1, 128)
    assert raw["net.blocks.block1.blocks.1.block.attn.attn_op._extra_state"].numel() == 0
