"""Layout sizing and the single-process layout (no torch.distributed)."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from cosmos_dist.parallel.context_parallel import self_attention_for_layout
from cosmos_dist.attention.local import sdpa_attention
from cosmos_dist.errors import ConfigError
from cosmos_dist.parallel import (
    ParallelConfig,
    broadcast_object,
    broadcast_tensor,
    destroy_layout,
    exchange_branch_outputs,
    gather_tokens,
    init_layout,
    plan_sizes,
    run_guarded,
)
from cosmos_dist.parallel.layout import apply_nccl_env_defaults, default_ulysses_size, global_rank_of


def test_plan_sizes():
    assert plan_sizes(4, ParallelConfig(cp_size=2, cfg_parallel=True)) == (1, 2, 2)
    assert plan_sizes(4, ParallelConfig(cp_size=1, cfg_parallel=True)) == (2, 2, 1)
    assert plan_sizes(16, ParallelConfig(cp_size=4, cfg_parallel=True)) == (2, 2, 4)
    assert plan_sizes(1, ParallelConfig()) == (1, 1, 1)
    with pytest.raises(ConfigError) as e:
        plan_sizes(3, ParallelConfig(cp_size=2))
    msg = str(e.value)
    assert "world size 3" in msg and "cfg=1" in msg and "cp=2" in msg and "dp" in msg
    with pytest.raises(ConfigError, match="world size 6 .* cfg=2 .* cp=2"):
        plan_sizes(6, ParallelConfig(cp_size=2, cfg_parallel=True))


def test_config_validation():
    with pytest.raises(ConfigError, match="cp_impl"):
        ParallelConfig(cp_impl="flash").validate()
    with pytest.raises(ConfigError, match="ulysses_size=3"):
        ParallelConfig(cp_size=4, ulysses_size=3).validate()
    with pytest.raises(ConfigError, match="cp_size"):
        ParallelConfig(cp_size=0).validate()
    with pytest.raises(ConfigError, match="timeout_s"):
        ParallelConfig(timeout_s=0).validate()


def test_rank_arrangement():
    # r = ((dp * cfg) + cfg_rank) * cp + cp_rank: cp innermost, then the cfg pair, then replicas.
    assert [global_rank_of(d, j, c, 2, 2) for d in range(2) for j in range(2) for c in range(2)] == list(range(8))
    assert default_ulysses_size(16, 8, 40) == 8
    assert default_ulysses_size(16, 8) == 8
    assert default_ulysses_size(8, 8, 12) == 4
    assert default_ulysses_size(4, 2) == 2
    assert default_ulysses_size(2, 1) == 1


def test_world_that_does_not_factor_fails_before_any_communication(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="world size 3 does not factor"):
        init_layout(ParallelConfig(cp_size=2))
    assert not dist.is_initialized()


def test_single_process_layout(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="world size 1"):
        init_layout(ParallelConfig(cp_size=2))
    lay = init_layout(ParallelConfig())
    try:
        assert not dist.is_initialized() and not lay.distributed
        assert (lay.world_size, lay.dp_size, lay.cfg_size, lay.cp_size) == (1, 1, 1, 1)
        assert lay.cp_group is lay.cfg_group is lay.dp_group is lay.replica_group is None
        assert lay.is_replica_leader and lay.replica_ranks == [0] and lay.cp_fits_in_node
        attn, ranges, _ = self_attention_for_layout(lay, (2, 3, 4), 4)
        assert attn is sdpa_attention and ranges == [(0, 24)]
        x = torch.randn(1, 24, 8)
        assert gather_tokens(x, lay.cp_group, ranges) is x
        assert broadcast_tensor(x, 0, lay.replica_group) is x
        assert broadcast_object({"a": 1}, 0, None) == {"a": 1}
        assert run_guarded(lambda a, b: a + b, lay, 2, 3) == 5
        with pytest.raises(ValueError, match="cfg_parallel"):
            exchange_branch_outputs(x, lay)
    finally:
        destroy_layout(lay)


def test_nccl_env_defaults(monkeypatch):
    for key in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
    applied = apply_nccl_env_defaults()
    import os

    assert os.environ["NCCL_NVLS_ENABLE"] == "0" and applied["NCCL_NVLS_ENABLE"] == "0"
    # multicast off for symmetric memory and NVSHMEM as well
    assert os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1" and os.environ["NVSHMEM_DISABLE_NVLS"] == "1"
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"  # the user's value stays
