"""The seam for step-level work: a hook around each guided network evaluation and around its block loop.

The sampling loop calls the guided denoiser once per step (pipeline/denoiser.py). A `StepHook` given to the
pipeline sees every such call twice over:

- `around_denoise(ctx, denoise)`: the whole guided evaluation of one step (both guidance branches); return
  `denoise()` to run it, or a tensor of the same shape to skip it;
- `around_blocks(ctx, x, stack)`: the transformer block loop inside one network forward (after the embeddings,
  before the final layer); return `stack.run(x)` to run it, or reuse an earlier result. With batched guidance
  one forward holds both branches (`ctx.branches == (0, 1)`, batch order); sequentially or under cfg-parallel a
  forward holds one branch.

`ctx` (a StepContext) says which step, at which sigma, in which guidance mode, for which branches, and carries
the runtime, so a decision that depends on a statistic of the token shard can be agreed across the
context-parallel ranks (`runtime.sum_over_shards`) before it is taken; every rank of a cp group must take the
same decision, since the skipped blocks hold collectives. `begin_sample` is called before a sample's first step
and `record()` after its last; what it returns goes into the sample's sidecar under `step_hook`.

Step caching policies (TeaCache, First-Block-Cache) are StepHooks; `NoStepHook` changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

#: guidance mode of a step: both branches in one batch, one after the other, one per rank pair, or no guidance
GUIDANCE_MODES = ("batch", "sequential", "cfg_parallel", "unguided")


@dataclass(frozen=True)
class StepContext:
    step: int  # index of the guided network evaluation, from 0
    num_steps: int  # evaluations in this sample
    sigma: float
    mode: str  # one of GUIDANCE_MODES
    branches: tuple[int, ...]  # guidance branches this call computes: 0 conditional, 1 unconditional
    runtime: Any  # the pipeline's Runtime (cosmos_dist/pipeline/runtime.py)

    @property
    def is_first(self) -> bool:
        return self.step == 0

    @property
    def is_last(self) -> bool:
        return self.step == self.num_steps - 1


class StepHook:
    """Changes nothing; subclass and override what you need."""

    def begin_sample(self, sample_id: str, num_steps: int) -> None:
        pass

    def around_denoise(self, ctx: StepContext, denoise: Callable[[], torch.Tensor]) -> torch.Tensor:
        return denoise()

    def around_blocks(self, ctx: StepContext, x: torch.Tensor, stack) -> torch.Tensor:
        return stack.run(x)

    def record(self) -> Optional[dict]:
        """What the sidecar records of this hook for the sample that just ended (None: nothing)."""
        return None


class NoStepHook(StepHook):
    """The default: every step and every block runs."""
