"""Training-free step caching: StepHooks (pipeline/step_hooks.py) that reuse the transformer blocks' residual
(output minus input) of an earlier step instead of running the blocks, when the policy's statistic says the
step changed little. Opt-in with `cache=teacache` or `cache=fbcache` (conf/cache/*.yaml).

- `TeaCache`: the policy TeaCache publishes for Cosmos-1.0-Diffusion-7B (the same network as Predict1-7B;
  repository ali-vilab/TeaCache, file TeaCache4Cosmos/teacache_sample_video_t2v.py). Its signal is block 0's
  self-attention input after the adaLN modulation, computed from the blocks' input WITHOUT the learnable position
  embedding (which the block adds at its start), i.e. layer_norm(x) * (1 + scale) + shift. Each evaluation adds
  poly(mean|m - m_prev| / mean|m_prev|) to an accumulator, poly being the published 4th-order fit
  (COSMOS_COEFFICIENTS); while the accumulator is under the threshold the step reuses the residual, otherwise
  the blocks run and the accumulator restarts at 0. The previous signal is updated on every evaluation, computed
  or reused; the first and the last evaluation always run. Conditional and unconditional branches keep
  separate state, as the published code does (it alternates even/odd calls).
- `FirstBlockCache` (the First-Block-Cache idea of ParaAttention): block 0 always runs; when its residual changed
  by less than the threshold (relative L1) since the last COMPUTED step, blocks 1.. are skipped and their
  residual from that step is added. Comparing with the last computed step (not the previous one) keeps slow
  drift from chaining reuses forever. First and last evaluation always run.

Layouts. A forward holds one branch (sequential, cfg-parallel, unguided) or both (batched guidance: row 0
conditional, row 1 unconditional). State is kept per branch and every decision is taken per branch, so a branch
reuses on the same steps on every layout. When the two rows of a batched forward disagree, only the computing
row goes through the blocks (`BlockStack.select`) and the other row takes its cached residual: running both
would give the reusing branch a different output from the sequential / cfg-parallel layouts, and the batch-1
forward costs about half. Under context parallelism the statistic's numerator and denominator are summed over
the cp ranks (`runtime.sum_over_shards`) before the decision, so every rank of the group decides alike (the
skipped blocks hold the cp collectives). Under cfg-parallel each rank holds one branch: the partners only
exchange the guided output after the step, so differing decisions cannot hang. offload=dit: a reused step
calls no block, so it streams none (BlockStack.modulated_input reads block 0's adaLN weights from the host
while they are streamed). Video2World: the condition-frame replacement is applied by the sampler around the
denoiser, so it holds on reused steps too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from cosmos_dist.pipeline.step_hooks import NoStepHook, StepContext, StepHook

#: TeaCache's rescaling polynomial for Cosmos-1.0-Diffusion-7B, highest power first (ali-vilab/TeaCache,
#: TeaCache4Cosmos/teacache_sample_video_t2v.py; the Video2World script uses the same numbers).
COSMOS_COEFFICIENTS = (2.71156237e02, -9.19775607e01, 2.24437250e00, 2.08355751e00, 1.41776330e-01)

BRANCH_NAMES = {0: "conditional", 1: "unconditional"}


def make_step_hook(cache_cfg) -> StepHook:
    """The pipeline's StepHook for the `cache` config group (None or policy none: every step runs)."""
    policy = "none" if cache_cfg is None else str(cache_cfg.policy)
    if policy == "none":
        return NoStepHook()
    threshold = float(cache_cfg.threshold)
    max_reuse = int(getattr(cache_cfg, "max_consecutive_reuse", 0) or 0)
    if policy == "teacache":
        coefficients = tuple(float(c) for c in (getattr(cache_cfg, "coefficients", None) or COSMOS_COEFFICIENTS))
        return TeaCache(threshold, coefficients, max_reuse)
    if policy == "fbcache":
        return FirstBlockCache(threshold, max_reuse)
    raise ValueError(f"cache.policy: {policy!r}; choose none, teacache or fbcache")


def polynomial(coefficients, x: float) -> float:
    """coefficients[0] x^n + ... + coefficients[n] (numpy.poly1d order)."""
    value = 0.0
    for c in coefficients:
        value = value * x + c
    return value


@dataclass
class _Branch:
    """What one guidance branch carries from step to step."""

    reference: Optional[torch.Tensor] = None  # teacache: previous signal; fbcache: block-0 residual of the last computed step
    residual: Optional[torch.Tensor] = None  # residual to reuse (teacache: whole stack; fbcache: blocks 1..)
    accumulated: float = 0.0  # teacache's accumulated rescaled distance
    consecutive: int = 0  # reused evaluations in a row
    computed: list = field(default_factory=list)
    reused: list = field(default_factory=list)
    statistic: dict = field(default_factory=dict)  # step -> the value compared with the threshold


class _StepCache(StepHook):
    policy = "none"

    def __init__(self, threshold: float, max_consecutive_reuse: int = 0):
        if not math.isfinite(threshold) or threshold < 0:
            raise ValueError(f"cache.threshold: {threshold} must be a finite number >= 0")
        self.threshold = float(threshold)
        self.max_consecutive_reuse = int(max_consecutive_reuse)
        self.block_calls = 0  # blocks run (one per block per forward, whatever its batch), over the hook's life
        self.begin_sample("", 0)

    def begin_sample(self, sample_id: str, num_steps: int) -> None:
        self.sample_id, self.num_steps = sample_id, num_steps
        self.branches: dict[int, _Branch] = {}
        self.sample_block_calls = 0

    # ---- shared pieces ---------------------------------------------------------------------
    def _run(self, stack, x: torch.Tensor, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        n = len(range(*slice(start, stop).indices(stack.num_blocks)))
        self.block_calls += n
        self.sample_block_calls += n
        return stack.run(x, start, stop)

    def _relative_l1(self, ctx: StepContext, current: torch.Tensor, previous: list[torch.Tensor]) -> list[float]:
        """Per row: sum|current - previous| / sum|previous|, both sums taken over the whole latent (all cp shards),
        so that every cp rank gets the same numbers. float64 sums keep the shard split from moving them."""
        sums = []
        for row, prev in enumerate(previous):
            cur = current[row : row + 1]
            sums.append(torch.stack([(cur - prev).abs().sum(dtype=torch.float64), prev.abs().sum(dtype=torch.float64)]))
        total = torch.stack(sums)
        if ctx.runtime is not None:
            total = ctx.runtime.sum_over_shards(total)
        total = total.cpu()
        return [float(n / d) if d > 0 else math.inf for n, d in total.tolist()]

    def _forced(self, ctx: StepContext, branch: _Branch) -> bool:
        """Steps that always run: the first, the last, and any without a reference yet."""
        return ctx.is_first or ctx.is_last or branch.reference is None or branch.residual is None

    def _capped(self, branch: _Branch) -> bool:
        return 0 < self.max_consecutive_reuse <= branch.consecutive

    def _note(self, ctx: StepContext, branch: _Branch, reuse: bool) -> None:
        (branch.reused if reuse else branch.computed).append(ctx.step)
        branch.consecutive = branch.consecutive + 1 if reuse else 0

    def _state(self, ctx: StepContext) -> list[_Branch]:
        return [self.branches.setdefault(b, _Branch()) for b in ctx.branches]

    def _finish(self, stack, x_in: torch.Tensor, reuse: list[bool], states: list[_Branch], start: int,
                block0_out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Run blocks start.. for the rows that compute (all of them in one call when all compute), add the cached
        residual for the rows that reuse, and keep the new residuals. `x_in` is the input of block `start`."""
        rows = [i for i, r in enumerate(reuse) if not r]
        if len(rows) == len(reuse):
            out = self._run(stack, x_in, start)
            for i, state in enumerate(states):
                state.residual = out[i : i + 1] - x_in[i : i + 1]
            return out
        parts = []
        computed = None
        if rows:
            sub = stack.select(rows)
            computed = self._run(sub, x_in[rows], start)
        for i, state in enumerate(states):
            if reuse[i]:
                parts.append(x_in[i : i + 1] + state.residual)
            else:
                out_i = computed[rows.index(i)].unsqueeze(0)
                state.residual = out_i - x_in[i : i + 1]
                parts.append(out_i)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def record(self) -> Optional[dict]:
        rec = {"policy": self.policy, "threshold": self.threshold, "evaluations": self.num_steps,
               "block_calls": self.sample_block_calls, "branches": {}}
        if self.max_consecutive_reuse:
            rec["max_consecutive_reuse"] = self.max_consecutive_reuse
        for b in sorted(self.branches):
            st = self.branches[b]
            rec["branches"][BRANCH_NAMES.get(b, str(b))] = {
                "computed_steps": list(st.computed),
                "reused_steps": list(st.reused),
                "statistic": {str(k): round(v, 6) for k, v in sorted(st.statistic.items())},
            }
        return rec


class TeaCache(_StepCache):
    policy = "teacache"

    def __init__(self, threshold: float, coefficients=COSMOS_COEFFICIENTS, max_consecutive_reuse: int = 0):
        self.coefficients = tuple(float(c) for c in coefficients)
        super().__init__(threshold, max_consecutive_reuse)

    def around_blocks(self, ctx: StepContext, x: torch.Tensor, stack) -> torch.Tensor:
        states = self._state(ctx)
        signal = stack.modulated_input(x, position_embedding=False)
        forced = [self._forced(ctx, st) for st in states]
        distances = [None] * len(states)
        if not all(forced):
            distances = self._relative_l1(ctx, signal, [st.reference if st.reference is not None else signal[i:i + 1]
                                                        for i, st in enumerate(states)])
        reuse = []
        for i, st in enumerate(states):
            if forced[i]:
                r = False
            else:
                st.accumulated += polynomial(self.coefficients, distances[i])
                st.statistic[ctx.step] = st.accumulated
                r = self.threshold > 0 and st.accumulated < self.threshold and not self._capped(st)
            if not r:
                st.accumulated = 0.0
            st.reference = signal[i : i + 1].clone()  # every evaluation, computed or reused (as published)
            self._note(ctx, st, r)
            reuse.append(r)
        return self._finish(stack, x, reuse, states, 0)


class FirstBlockCache(_StepCache):
    policy = "fbcache"

    def around_blocks(self, ctx: StepContext, x: torch.Tensor, stack) -> torch.Tensor:
        states = self._state(ctx)
        h1 = self._run(stack, x, 0, 1)
        if stack.num_blocks == 1:
            for st in states:
                self._note(ctx, st, False)
            return h1
        first = h1 - x
        forced = [self._forced(ctx, st) for st in states]
        changes = [None] * len(states)
        if not all(forced):
            changes = self._relative_l1(ctx, first, [st.reference if st.reference is not None else first[i:i + 1]
                                                     for i, st in enumerate(states)])
        reuse = []
        for i, st in enumerate(states):
            r = False
            if not forced[i]:
                st.statistic[ctx.step] = changes[i]
                r = self.threshold > 0 and changes[i] < self.threshold and not self._capped(st)
            if not r:
                st.reference = first[i : i + 1].clone()  # compared against the last computed step
            self._note(ctx, st, r)
            reuse.append(r)
        return self._finish(stack, h1, reuse, states, 1)
