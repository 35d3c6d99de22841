"""Step caching (cosmos_dist/pipeline/step_cache.py, `cache=teacache|fbcache`) on the tiny presets on the CPU.

- threshold 0 gives latents bit-identical to cache=none (both policies, batched and sequential guidance);
- a threshold that reuses runs fewer transformer blocks, counted by a forward hook on the real blocks, and the
  sidecar lists the computed and reused steps; batched and sequential guidance reuse on the same steps;
- branches of one batched forward that disagree: the reusing row gets exactly input + its cached residual;
- offload=dit (blocks streamed): same latent as resident, and the reused steps stream no blocks;
- Video2World: the condition-frame replacement still applies on reused steps;
- under torchrun (gloo), cp=4 and cp=2 x cfg-parallel reuse on the same steps as one process, same latent to
  float32 rounding.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline_helpers import small_cfg

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8
PROMPT = "a robot walks through a warehouse"
CKPT: Path
TEACACHE = ("cache=teacache", "cache.threshold=0.3")
FBCACHE = ("cache=fbcache", "cache.threshold=0.3")


class BlockCounter:
    """Counts calls of the real transformer blocks (a global forward pre-hook; the blocks are not replaced)."""

    def __enter__(self):
        from cosmos_dist.models.blocks import GeneralDITTransformerBlock

        self.calls = 0

        def count(module, args):
            if isinstance(module, GeneralDITTransformerBlock):
                self.calls += args[0].shape[0]  # one per batch row: a batch-2 forward is two branches' work

        self._handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
        return self

    def __exit__(self, *exc):
        self._handle.remove()


@pytest.fixture(scope="module", autouse=True)
def _shared_checkpoints(tmp_path_factory):
    """The tiny random checkpoints, built once for the module."""
    global CKPT
    CKPT = tmp_path_factory.mktemp("cache-checkpoints")


def _run(tmp_path, *overrides, steps=STEPS, prompt="a red ball"):
    """One sample in-process; returns (latent, sidecar, pipeline, block-row calls)."""
    from cosmos_dist.config import validate_config
    from cosmos_dist.pipeline.runtime import SingleProcess
    from cosmos_dist.pipeline.text2world import Text2WorldPipeline
    from cosmos_dist.pipeline.video2world import Video2WorldPipeline

    cfg = small_cfg(CKPT, tmp_path / "out", f"prompt={prompt}", f"num_steps={steps}",
                    "save_latents=true", *overrides)
    validate_config(cfg)
    kind = Video2WorldPipeline if str(cfg.model.preset).endswith("video2world") else Text2WorldPipeline
    pipe = kind(cfg, SingleProcess())
    with BlockCounter() as counter:
        summary = pipe.run()
    assert len(summary.done) == 1, summary
    sid = summary.done[0]
    latent = torch.load(tmp_path / "out" / f"{sid}.latent.pt")
    side = json.loads((tmp_path / "out" / f"{sid}.json").read_text())
    return latent, side, pipe, counter.calls


def _reused(side, branch="conditional"):
    return side["extra"]["step_hook"]["branches"][branch]["reused_steps"]


# ---- config and the policy's arithmetic ---------------------------------------------------------------------
def test_defaults_and_validation(tmp_path):
    from cosmos_dist.config import validate_config
    from cosmos_dist.errors import ConfigError
    from cosmos_dist.pipeline.step_cache import COSMOS_COEFFICIENTS, TeaCache, make_step_hook, polynomial
    from cosmos_dist.pipeline.step_hooks import NoStepHook

    cfg = small_cfg(tmp_path / "c", tmp_path / "o", "prompt=x")
    assert cfg.cache.policy == "none" and isinstance(make_step_hook(cfg.cache), NoStepHook)
    tea = small_cfg(tmp_path / "c", tmp_path / "o", "prompt=x", "cache=teacache")
    hook = make_step_hook(tea.cache)
    assert isinstance(hook, TeaCache) and hook.threshold == 0.3 and hook.coefficients == COSMOS_COEFFICIENTS
    for x in (0.0, 0.05, 0.2, 0.7):
        assert polynomial(COSMOS_COEFFICIENTS, x) == pytest.approx(np.poly1d(COSMOS_COEFFICIENTS)(x), rel=1e-12)
    for override, field in (("cache.threshold=-0.1", "cache.threshold"), ("cache.policy=magic", "cache.policy"),
                            ("cache.max_consecutive_reuse=-1", "cache.max_consecutive_reuse"),
                            ("cache.coefficients=[]", "cache.coefficients")):
        with pytest.raises(ConfigError, match=field):
            validate_config(small_cfg(tmp_path / "c", tmp_path / "o", "prompt=x", "cache=teacache", override))


@pytest.mark.parametrize("policy", ["teacache", "fbcache"])
@pytest.mark.parametrize("batched", [True, False])
def test_threshold_zero_is_bit_identical(tmp_path, policy, batched):
    layout = () if batched else ("parallel.batch_cfg=false",)
    plain, _, _, plain_calls = _run(tmp_path / "none", *layout, steps=4)
    cached, side, _, calls = _run(tmp_path / "zero", f"cache={policy}", "cache.threshold=0", *layout, steps=4)
    assert torch.equal(plain, cached)
    assert calls == plain_calls
    rec = side["extra"]["step_hook"]
    assert rec["policy"] == policy and rec["threshold"] == 0.0
    assert rec["branches"]["conditional"]["computed_steps"] == [0, 1, 2, 3] and _reused(side) == []


@pytest.mark.parametrize("policy", [TEACACHE, FBCACHE])
def test_reuse_runs_fewer_blocks_on_the_same_steps_batched_and_sequential(tmp_path, policy):
    plain, _, pipe, plain_calls = _run(tmp_path / "none")
    batched, side, _, calls = _run(tmp_path / "batched", *policy)
    rec = side["extra"]["step_hook"]
    reused = _reused(side)
    assert reused and 0 not in reused and STEPS - 1 not in reused  # first and last always run
    assert _reused(side, "unconditional") == reused
    assert sorted(rec["branches"]["conditional"]["computed_steps"] + reused) == list(range(STEPS))
    blocks = pipe.components.net.config.num_blocks
    per_reused = blocks if policy == TEACACHE else blocks - 1  # fbcache still runs block 0
    assert plain_calls == 2 * STEPS * blocks
    assert calls == plain_calls - 2 * len(reused) * per_reused  # counted on the real blocks
    assert rec["block_calls"] == (STEPS - len(reused)) * blocks + (len(reused) * (blocks - per_reused))
    assert not torch.equal(batched, plain)
    sequential, side_seq, _, _ = _run(tmp_path / "seq", *policy, "parallel.batch_cfg=false")
    assert _reused(side_seq) == reused and _reused(side_seq, "unconditional") == reused
    assert float((sequential - batched).norm() / batched.norm()) < 1e-5


def test_branches_that_disagree_in_one_batch(tmp_path):
    """A batched forward where the conditional row reuses and the unconditional one computes."""
    from cosmos_dist.models import build_dit, get_preset
    from cosmos_dist.pipeline.step_cache import TeaCache, _Branch

    cfg = get_preset("tiny_text2world")
    torch.manual_seed(0)
    net = build_dit(cfg)
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    tokens, grid = net.patchify(net.input_channels(torch.randn(1, cfg.latent_channels, 2, 6, 8)))
    context = torch.randn(2, 7, cfg.crossattn_emb_channels)
    captured = {}

    def hook(x, stack):
        captured["x"], captured["stack"] = x, stack
        return stack.run(x)

    full = net.forward_tokens(tokens.expand(2, -1, -1), torch.tensor([0.3]), context, grid, 24.0, block_hook=hook)
    x, stack = captured["x"], captured["stack"]
    tea = TeaCache(0.3)
    residual = torch.randn(1, *x.shape[1:])
    states = [_Branch(residual=residual), _Branch()]
    out = tea._finish(stack, x, [True, False], states, 0)
    assert torch.equal(out[0:1], x[0:1] + residual)
    whole = stack.run(x)
    assert torch.allclose(out[1:2], whole[1:2], rtol=1e-5, atol=1e-6)  # batch-1 forward of row 1 alone
    assert torch.allclose(states[1].residual, whole[1:2] - x[1:2], rtol=1e-5, atol=1e-6)
    assert tea.block_calls == cfg.num_blocks  # only the computing row went through the blocks
    assert full.shape[0] == 2


def test_offload_dit_streams_no_blocks_on_reused_steps(tmp_path):
    resident, side_r, _, _ = _run(tmp_path / "resident", *TEACACHE)
    plain, _, pipe_plain, _ = _run(tmp_path / "plain", "offload=dit")
    streamed, side_s, pipe, _ = _run(tmp_path / "streamed", "offload=dit", *TEACACHE)
    assert torch.equal(streamed, resident)
    reused = _reused(side_s)
    assert reused == _reused(side_r) and reused
    block_bytes = sum(p.numel() * p.element_size() for p in pipe.components.net.blocks.parameters())
    # uncached: every step streams all blocks; cached: the reused steps stream none (the prefetch of block 0 for
    # the next pass may land once more at most)
    assert pipe_plain.components.residency.streamed_bytes >= STEPS * block_bytes
    assert pipe.components.residency.streamed_bytes <= (STEPS - len(reused)) * block_bytes + block_bytes


def test_video2world_replacement_holds_on_reused_steps(tmp_path, monkeypatch):
    from PIL import Image

    from cosmos_dist.pipeline import video2world
    from cosmos_dist.sampling.edm import c_out, c_skip

    rng = np.random.default_rng(3)
    image = tmp_path / "input.png"
    Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(image)
    seen = []
    original = video2world.ConditionHooks.replace_output

    def recording(self, f, x_in, sigma, step):
        out = original(self, f, x_in, sigma, step)
        if self.active(sigma):
            s = video2world.hook_sigma(sigma, self.sigma_dtype)
            assert self.replacement == "intended"  # spec 2.6 as corrected: F = (gt - c_skip x) / c_out
            want = (self.gt - c_skip(s) * x_in.float()) / c_out(s)
            ind = self.indicator.expand_as(out)
            seen.append((step, bool(torch.equal(out[ind], want.expand_as(out)[ind]))))
        return out

    monkeypatch.setattr(video2world.ConditionHooks, "replace_output", recording)
    _, side, _, _ = _run(tmp_path, "model=tiny_video2world", f"input_path={image}", *TEACACHE)
    reused = _reused(side)
    assert reused, side["extra"]["step_hook"]
    active_steps = {s for s, _ in seen}
    assert set(reused) & active_steps  # some reused steps are in the replaced range
    assert all(ok for _, ok in seen)


# ---- the layouts, under torchrun (gloo) -------------------------------------------------------------------------
def _launch(cwd: Path, nproc: int, *overrides: str):
    generate = ROOT / "generate.py"
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     f"--nproc_per_node={nproc}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([*launcher, str(generate), *overrides], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_parallel_layouts_reuse_the_same_steps(tmp_path):
    common = ["model=tiny_text2world", f"checkpoint_dir={CKPT}", f"prompt={PROMPT}",
              "height=32", "width=48", "num_frames=9", f"num_steps={STEPS}", "progress=false", "save_latents=true",
              "parallel.timeout_s=120", *TEACACHE]
    layouts = {"cp4": (4, ["parallel.cp_size=4"]), "cp2_cfg": (4, ["parallel.cp_size=2", "parallel.cfg_parallel=true"])}
    got = {}
    for name, (nproc, extra) in layouts.items():
        _launch(tmp_path, nproc, *common, f"output_dir={name}", *extra)
        (latent,) = (tmp_path / name).glob("*.latent.pt")
        (sidecar,) = [p for p in (tmp_path / name).glob("*.json")]
        got[name] = (torch.load(latent), json.loads(sidecar.read_text())["extra"]["step_hook"])
    # the single-process reference, in this process (the same code path as generate.py without torchrun)
    latent, side, _, _ = _run(tmp_path / "single", *TEACACHE, prompt=PROMPT)
    got["single"] = (latent, side["extra"]["step_hook"])
    want_latent, want = got["single"]
    reused = want["branches"]["conditional"]["reused_steps"]
    assert reused
    for name in ("cp4", "cp2_cfg"):
        latent, rec = got[name]
        assert rec["branches"]["conditional"]["reused_steps"] == reused, name
        assert rec["branches"]["conditional"]["computed_steps"] == want["branches"]["conditional"]["computed_steps"]
        assert float((latent - want_latent).norm() / want_latent.norm()) < 1e-5, name
    # cfg-parallel: the sidecar's writer computed only the conditional branch
    assert list(got["cp2_cfg"][1]["branches"]) == ["conditional"]
    assert list(got["cp4"][1]["branches"]) == ["conditional", "unconditional"]


@pytest.mark.slow
def test_cache_sweep_tool(tmp_path):
    """tools/cache_sweep.py on the tiny preset: threshold 0 reproduces the uncached video exactly, a reusing one
    reports its reused steps and a finite PSNR."""
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "cache_sweep.py"), "--thresholds", "0,0.3", "--output-dir", str(out),
         "model=tiny_text2world", f"checkpoint_dir={CKPT}", "height=32", "width=48", "num_frames=9",
         f"num_steps={STEPS}", f"prompt={PROMPT}"],
        env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "sweep.json").read_text())
    zero, reusing = report["runs"]
    assert zero["threshold"] == 0 and zero["reused"] == 0 and zero["psnr_db"] == "inf" and zero["ssim"] == 1.0
    assert reusing["reused"] > 0 and reusing["evaluations"] == STEPS
    assert isinstance(reusing["psnr_db"], float) and reusing["ssim"] <= 1.0
    assert reusing["sampling_s"] > 0 and "PSNR dB" in proc.stdout


def test_sweep_metrics():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cache_sweep", ROOT / "tools" / "cache_sweep.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 24, 32, 3), dtype=np.uint8)
    assert tool.psnr(a, a) == float("inf") and tool.ssim(a, a) == pytest.approx(1.0)
    b = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
    assert 25 < tool.psnr(a, b) < 29  # MSE just under 100 -> ~28 dB
    assert tool.ssim(a, b) < 1.0 and tool.ssim(a, 255 - a) < 0
    with pytest.raises(SystemExit):
        tool.parse_args(["--thresholds", "-1", "--output-dir", "x", "prompt=a"])
    with pytest.raises(SystemExit):
        tool.parse_args(["--output-dir", "x", "prompt=a", "cache=fbcache"])
