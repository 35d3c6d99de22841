"""Process groups and the collectives around them (megatron-core parallel_state underneath).

- `layout`: ParallelConfig, Layout, init_layout / destroy_layout (world = dp x cfg x cp).
- `sharding`: token ranges of the cp group, shard / gather helpers, validate_cp.
- `cfg_parallel`: CFG branch exchange in a cfg pair; broadcasts from the replica leader.
- `guard`: run_guarded -- a failing rank ends the job with a message naming it, never a hang.

Context-parallel self-attention lives in `cosmos_dist.parallel.context_parallel`.
megatron-core is imported only inside `init_layout` (it takes seconds to import).
"""
from cosmos_dist.parallel.cfg_parallel import (
    broadcast_object,
    broadcast_tensor,
    broadcast_tensors,
    exchange_branch_outputs,
)
from cosmos_dist.parallel.guard import run_guarded
from cosmos_dist.parallel.layout import (
    Layout,
    ParallelConfig,
    current_layout,
    destroy_layout,
    init_layout,
    plan_sizes,
)
from cosmos_dist.parallel.sharding import gather_tokens, shard_tokens, token_ranges, validate_cp

__all__ = [
    "Layout",
    "ParallelConfig",
    "broadcast_object",
    "broadcast_tensor",
    "broadcast_tensors",
    "current_layout",
    "destroy_layout",
    "exchange_branch_outputs",
    "gather_tokens",
    "init_layout",
    "plan_sizes",
    "run_guarded",
    "shard_tokens",
    "token_ranges",
    "validate_cp",
]
