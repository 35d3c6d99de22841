"""What a pipeline needs to know about the processes it runs in.

`SingleProcess` is the plain one-process run. The distributed runtime (cosmos_dist.parallel) offers
the same methods: which samples this replica makes, which token shard this rank holds, how the
guidance branches are split, and how shards come back together.
"""
from __future__ import annotations

from cosmos_dist.attention import sdpa_attention


class SingleProcess:
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
        return {"self_attention": local or sdpa_attention, "mode": "batch" if parallel_cfg.batch_cfg else "sequential"}

    def gather_tokens(self, tokens):
        return tokens

    def sum_over_shards(self, t):
        """Sum a tensor over the context-parallel ranks of this replica (one rank here: itself)."""
        return t

    def after_failure(self, exc: BaseException) -> None:
        pass

    def describe(self) -> dict:
        return {"world_size": 1, "dp": 1, "cfg": 1, "cp": 1, "cp_impl": None}

    def close(self) -> None:
        pass
