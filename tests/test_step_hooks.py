"""The step-level seam (cosmos_dist/pipeline/step_hooks.py): a registered hook sees every guided evaluation once
and every forward's block loop, with the step, sigma, guidance mode and branches, and can replace the block loop."""
from __future__ import annotations

import torch

from cosmos_dist.pipeline.step_hooks import StepHook
from pipeline_helpers import small_cfg


class CountingHook(StepHook):
    def __init__(self):
        self.denoise_calls: list[tuple[int, float, str, tuple]] = []
        self.block_calls: list[tuple[int, tuple]] = []
        self.samples: list[str] = []

    def begin_sample(self, sample_id, num_steps):
        self.samples.append(sample_id)

    def around_denoise(self, ctx, denoise):
        self.denoise_calls.append((ctx.step, ctx.sigma, ctx.mode, ctx.branches))
        return denoise()

    def around_blocks(self, ctx, x, stack):
        self.block_calls.append((ctx.step, ctx.branches))
        return stack.run(x)

    def record(self):
        return {"evaluations": len(self.denoise_calls)}


def _run(tmp_path, hook, *overrides):
    from cosmos_dist.config import validate_config
    from cosmos_dist.pipeline.runtime import SingleProcess
    from cosmos_dist.pipeline.text2world import Text2WorldPipeline

    cfg = small_cfg(tmp_path / "ckpt", tmp_path / "out", "prompt=a red ball", "num_steps=3", "save_latents=true",
                    *overrides)
    validate_config(cfg)
    pipe = Text2WorldPipeline(cfg, SingleProcess())
    pipe.step_hook = hook
    summary = pipe.run()
    assert len(summary.done) == 1
    return summary.done[0]


def test_hook_sees_each_step_once_batched(tmp_path):
    hook = CountingHook()
    sample_id = _run(tmp_path, hook)
    assert [c[0] for c in hook.denoise_calls] == [0, 1, 2]
    assert all(c[2] == "batch" and c[3] == (0, 1) for c in hook.denoise_calls)
    assert hook.block_calls == [(0, (0, 1)), (1, (0, 1)), (2, (0, 1))]
    sigmas = [c[1] for c in hook.denoise_calls]
    assert sigmas == sorted(sigmas, reverse=True) and sigmas[0] == 80.0
    assert hook.samples == [sample_id]
    import json

    side = json.loads((tmp_path / "out" / f"{sample_id}.json").read_text())
    assert side["extra"]["step_hook"] == {"evaluations": 3}


def test_hook_sequential_sees_each_branch(tmp_path):
    hook = CountingHook()
    _run(tmp_path, hook, "parallel.batch_cfg=false")
    assert [c[0] for c in hook.denoise_calls] == [0, 1, 2]
    assert hook.block_calls == [(s, (b,)) for s in range(3) for b in (0, 1)]


class ReuseHook(StepHook):
    """Reuses step 0's block residual at step 1: the output must change, and fewer blocks run."""

    def __init__(self):
        self.residual = None
        self.ran = 0

    def around_blocks(self, ctx, x, stack):
        if ctx.step == 1 and self.residual is not None:
            return x + self.residual
        self.ran += 1
        out = stack.run(x)
        self.residual = out - x
        return out


def test_hook_can_replace_the_block_loop(tmp_path):
    plain = _run(tmp_path / "a", StepHook())
    hook = ReuseHook()
    reused = _run(tmp_path / "b", hook)
    assert hook.ran == 2
    a = torch.load(tmp_path / "a" / "out" / f"{plain}.latent.pt")
    b = torch.load(tmp_path / "b" / "out" / f"{reused}.latent.pt")
    assert not torch.equal(a, b)
