"""What a pipeline needs to know about the processes it runs in: the `Runtime` interface.

Two implementations sit behind it:
- `SingleProcess` (here): one process, the whole latent, both guidance branches;
- `DistributedRuntime` (cosmos_dist/parallel/runtime.py): a torchrun job laid out as dp x cfg x cp.

The pipeline talks to the runtime only through the methods of `Runtime`: which samples this replica makes, which
token shard this rank holds, how the guidance branches are split, and how shards come back together. It never
asks which implementation it has.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional, Protocol, Sequence, TypeVar, runtime_checkable

import torch

T = TypeVar("T")


@runtime_checkable
class Runtime(Protocol):
    #: rank 0 of the whole job: logs, shard markers, stand-in checkpoints
    is_global_leader: bool
    #: the rank of a replica that runs T5, decodes, checks and writes
    is_replica_leader: bool
    #: CUDA device index of this process
    local_device_index: int

    def my_items(self, items: Sequence[T]) -> list[T]:
        """This replica's share of the samples (every sample goes to exactly one replica)."""

    def token_range(self, num_tokens: int) -> Optional[tuple[int, int]]:
        """The contiguous token shard this rank holds (None: all of them)."""

    def barrier(self) -> None: ...

    def agree_stop(self, requested: bool) -> bool:
        """True on every rank of the replica when any of them was asked to stop."""

    def on_leader(self, fn: Callable[[], T]) -> T:
        """Run fn on the replica leader and hand its result to the whole replica."""

    def share_tensor(self, t: Optional[torch.Tensor]) -> torch.Tensor:
        """The replica leader's tensor on every rank of the replica."""

    def cp_impl_for(self, num_heads: int) -> str:
        """The context-parallel implementation self-attention will use: local, ulysses, ring, usp or te."""

    def denoiser_options(self, parallel_cfg, grid=None, num_heads=None, local=None, lse_kernel=None) -> dict:
        """GuidedDenoiser keywords: the self-attention callable and how the guidance branches run."""

    def gather_tokens(self, tokens: torch.Tensor) -> Optional[torch.Tensor]:
        """The full token sequence on the replica leader (None elsewhere)."""

    def sum_over_shards(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over the context-parallel ranks of this replica (a statistic of the token shards)."""

    def ends_job(self, exc: BaseException) -> bool:
        """Whether `exc`, raised while the replica works on a sample together, is a lost rank or collective
        (the job ends) rather than an error of the sample."""

    def interrupt(self, exc: BaseException, manifest, item) -> None:
        """End the job for `exc`: `item` is recorded `interrupted` (still pending), then `exc` is raised again."""

    def after_failure(self, exc: BaseException) -> None:
        """Called when a sample failed with `exc`: re-raises what may have hit one rank only."""

    def guarded(self, fn: Callable[[], T]) -> T:
        """fn(), so that a failing rank ends the whole job with one line naming the rank (no hang)."""

    def describe(self) -> dict:
        """The layout for the sidecar: world_size, dp, cfg, cp, cp_impl."""

    def close(self) -> None: ...


class SingleProcess:
    """The Runtime of a plain one-process run."""

    is_global_leader = True
    is_replica_leader = True
    local_device_index = 0

    def my_items(self, items):
        return list(items)

    def token_range(self, num_tokens: int):
        return None

    def barrier(self) -> None:
        pass

    def agree_stop(self, requested: bool) -> bool:
        return requested

    def on_leader(self, fn):
        return fn()

    def share_tensor(self, t):
        return t

    def cp_impl_for(self, num_heads: int) -> str:
        return "local"

    def denoiser_options(self, parallel_cfg, grid=None, num_heads=None, local=None, lse_kernel=None) -> dict:
        from cosmos_dist.attention import sdpa_attention

        return {"self_attention": local or sdpa_attention, "mode": "batch" if parallel_cfg.batch_cfg else "sequential"}

    def gather_tokens(self, tokens):
        return tokens

    def sum_over_shards(self, t):
        return t

    def ends_job(self, exc: BaseException) -> bool:
        return False  # one process waits for nobody: every error is the sample's

    def interrupt(self, exc: BaseException, manifest, item) -> None:
        raise exc

    def after_failure(self, exc: BaseException) -> None:
        pass

    def guarded(self, fn):
        return fn()

    def describe(self) -> dict:
        return {"world_size": 1, "dp": 1, "cfg": 1, "cp": 1, "cp_impl": None}

    def close(self) -> None:
        pass


def make_runtime(parallel_cfg: Any) -> Runtime:
    """SingleProcess for a one-process run without parallel settings, else the torchrun job's DistributedRuntime
    (which starts the process groups)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and int(parallel_cfg.cp_size) == 1 and not bool(parallel_cfg.cfg_parallel):
        return SingleProcess()
    from cosmos_dist.parallel.runtime import DistributedRuntime

    return DistributedRuntime.create(parallel_cfg)
