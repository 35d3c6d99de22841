"""Process-group layout: world = dp x cfg x cp, built in one place (`init_layout`).

Rank arrangement (global rank r, all sizes fixed for the job):

    r = ((dp_rank * cfg_size) + cfg_rank) * cp_size + cp_rank

- **cp** groups are blocks of `cp_size` consecutive ranks. torchrun numbers ranks node by node,
  so a cp group that is not larger than a node stays inside one node (NVLink for ulysses).
  They come from megatron-core `parallel_state.initialize_model_parallel(context_parallel_size=cp)`
  (TP = PP = 1, order tp-cp-ep-dp-pp: cp varies fastest), checked against the formula above.
- megatron's data-parallel group is everything else with the same cp rank: `dp_size * cfg_size`
  ranks (strided by cp). We carve it into:
  - **cfg pairs** (`cfg_group`): the two adjacent cp blocks of one replica with the same cp rank,
    `[cond, uncond]` = cfg rank 0 and 1. Adjacent blocks keep a pair on one node when 2*cp fits.
  - **dp** (`dp_group`): the same (cfg rank, cp rank) in every replica, `dp_size` ranks.
- **replica** (`replica_group`): the `cfg_size * cp_size` consecutive ranks of one replica; its
  first rank (cfg 0, cp 0) is the replica leader (runs the text encoder, decodes, writes files).
- **usp sub-groups** of the cp group (`cp_ulysses_group`, `cp_ring_group`), when a ulysses size u
  with 1 < u < cp is known: megatron's hierarchical cp groups `[u, cp/u]`, i.e. ulysses over u
  consecutive cp ranks (inside a node) and ring over the cp ranks with the same index modulo u
  (across nodes). A cp rank c is (ring index c // u, ulysses index c % u).

A job that runs as one process (no torchrun, no WORLD_SIZE > 1) gets a Layout with no process
groups at all; every helper in `cosmos_dist.parallel` treats a `None` group as "just me".

Every group is created with the configured timeout, so a collective waiting on a dead or hung
peer raises (gloo) or aborts the process (NCCL, with TORCH_NCCL_ASYNC_ERROR_HANDLING) instead of
hanging; `cosmos_dist.parallel.guard.run_guarded` turns that into a clear non-zero exit.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from cosmos_dist import choices
from cosmos_dist.config import ParallelConfig  # the one schema of the `parallel.*` keys
from cosmos_dist.errors import ConfigError

# The choice lists of parallel.cp_impl / parallel.te_comm_type, under the names this module has always had.
CP_IMPLS = choices.CP_IMPLS
TE_COMM_TYPES = choices.TE_COMM_TYPES

# NCCL settings that are safe for inference jobs; only applied where the user has not set them.
NCCL_ENV_DEFAULTS = {
    # NVLink SHARP (NVLS) multicast buffers cost GPU memory and are not reliable on every system.
    "NCCL_NVLS_ENABLE": "0",
    # The same for PyTorch's symmetric memory and NVSHMEM (multicast stays off on the lent machines too).
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
    # A timed-out or failed NCCL collective tears the process down instead of hanging forever.
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
}


def plan_sizes(world_size: int, pcfg: ParallelConfig) -> tuple[int, int, int]:
    """(dp, cfg, cp) for this world size; ConfigError when world != dp * cfg * cp."""
    pcfg.validate()
    cfg, cp = pcfg.cfg_size, pcfg.cp_size
    if world_size < 1 or world_size % (cfg * cp):
        raise ConfigError(
            f"world size {world_size} does not factor as dp x cfg x cp with cfg={cfg} "
            f"(cfg_parallel={pcfg.cfg_parallel}) and cp={cp}: the number of processes must be a "
            f"multiple of cfg*cp = {cfg * cp} (dp = world / (cfg*cp))"
        )
    return world_size // (cfg * cp), cfg, cp


def global_rank_of(dp_rank: int, cfg_rank: int, cp_rank: int, cfg_size: int, cp_size: int) -> int:
    return (dp_rank * cfg_size + cfg_rank) * cp_size + cp_rank


def default_ulysses_size(cp_size: int, local_world_size: int, num_heads: int | None = None) -> int:
    """The largest divisor u of cp that fits in one node (u <= GPUs per node, dividing them) and,
    when the head count is known, divides it. 1 means no ulysses part."""
    best = 1
    for u in range(1, cp_size + 1):
        if cp_size % u or u > local_world_size or local_world_size % u:
            continue
        if num_heads is not None and num_heads % u:
            continue
        best = u
    return best


@dataclass
class Layout:
    """This process's place in the job, with the process groups it belongs to (None when the
    group would hold this rank alone or torch.distributed is not used)."""

    world_size: int = 1
    rank: int = 0
    dp_size: int = 1
    cfg_size: int = 1
    cp_size: int = 1
    dp_rank: int = 0  # which replica
    cfg_rank: int = 0  # 0 = conditional branch, 1 = unconditional
    cp_rank: int = 0
    cp_group: Any = None
    cp_ranks: list[int] = field(default_factory=lambda: [0])
    cfg_group: Any = None  # [cond, uncond] with the same dp and cp rank
    cfg_ranks: list[int] = field(default_factory=lambda: [0])
    dp_group: Any = None  # this (cfg rank, cp rank) in every replica
    dp_ranks: list[int] = field(default_factory=lambda: [0])
    dp_cfg_group: Any = None  # megatron's data-parallel group: dp x cfg ranks with this cp rank
    replica_group: Any = None  # cfg x cp ranks of this replica
    replica_ranks: list[int] = field(default_factory=lambda: [0])
    ulysses_size: int = 1  # of the usp sub-groups below (1: none built)
    cp_ulysses_group: Any = None
    cp_ring_group: Any = None
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    num_nodes: int = 1
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    timeout_s: float = 600
    config: ParallelConfig = field(default_factory=ParallelConfig)
    distributed: bool = False  # torch.distributed is initialised for this job
    owns_process_group: bool = False  # init_layout initialised it (destroy_layout tears it down)
    uses_megatron: bool = False
    _subgroup_cache: dict = field(default_factory=dict, repr=False)

    @property
    def replica_leader(self) -> int:
        return self.replica_ranks[0]

    @property
    def is_replica_leader(self) -> bool:
        return self.rank == self.replica_ranks[0]

    @property
    def is_cond(self) -> bool:
        return self.cfg_rank == 0

    @property
    def cp_fits_in_node(self) -> bool:
        """True when the whole cp group sits on this node (consecutive ranks, node-major)."""
        lo, hi = self.cp_ranks[0], self.cp_ranks[-1]
        n = self.local_world_size
        return self.cp_size <= n and lo // n == hi // n

    @property
    def timeout(self) -> timedelta:
        return timedelta(seconds=self.timeout_s)

    def describe(self) -> str:
        return (
            f"rank {self.rank}/{self.world_size}: dp {self.dp_rank}/{self.dp_size}, "
            f"cfg {self.cfg_rank}/{self.cfg_size}, cp {self.cp_rank}/{self.cp_size}, "
            f"node {self.node_rank}/{self.num_nodes} local {self.local_rank}/{self.local_world_size}"
        )

    def as_dict(self) -> dict:
        """JSON-friendly summary (for sidecars and logs)."""
        return {
            "world_size": self.world_size,
            "dp": self.dp_size,
            "cfg": self.cfg_size,
            "cp": self.cp_size,
            "cp_impl": self.config.cp_impl,
            "ulysses_size": self.ulysses_size,
            "num_nodes": self.num_nodes,
            "backend": self.backend,
        }

    def cp_subgroups(self, ulysses_size: int) -> tuple[Any, Any]:
        """(ulysses group, ring group) splitting the cp group as u x (cp/u); see module docstring.

        Reuses the groups built at init when u matches; otherwise creates them, which is a
        collective over the whole world: every rank must call this with the same u, in the same
        order relative to other group creations."""
        u = ulysses_size
        if self.cp_size % u:
            raise ConfigError(f"ulysses size {u} does not divide cp_size {self.cp_size}")
        if u == self.ulysses_size and (self.cp_ulysses_group is not None or self.cp_ring_group is not None):
            return self.cp_ulysses_group, self.cp_ring_group
        if u in self._subgroup_cache:
            return self._subgroup_cache[u]
        if not self.distributed or self.cp_size == 1:
            return None, None
        ul_mine = ring_mine = None
        n_blocks = self.world_size // self.cp_size
        for block in range(n_blocks):
            base = block * self.cp_size
            for i in range(self.cp_size // u):
                ranks = [base + i * u + j for j in range(u)]
                g = dist.new_group(ranks, timeout=self.timeout)
                if self.rank in ranks:
                    ul_mine = g
            for j in range(u):
                ranks = [base + i * u + j for i in range(self.cp_size // u)]
                g = dist.new_group(ranks, timeout=self.timeout)
                if self.rank in ranks:
                    ring_mine = g
        self._subgroup_cache[u] = (ul_mine, ring_mine)
        return ul_mine, ring_mine


_CURRENT: Layout | None = None


def current_layout() -> Layout | None:
    """The layout made by the last `init_layout` (None before). Library code takes a Layout as an
    argument; this is for entry points and error reporting only."""
    return _CURRENT


def apply_nccl_env_defaults() -> dict[str, str]:
    """Set the NCCL_ENV_DEFAULTS that are not set yet; returns what was set."""
    applied = {}
    for key, value in NCCL_ENV_DEFAULTS.items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    return applied


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def _local_world_size(world_size: int) -> int:
    """Ranks per node: torchrun's LOCAL_WORLD_SIZE, else Slurm's tasks per node, else the GPUs
    of this host, else the whole world (one node). Ranks are assumed to be numbered node by node."""
    if world_size == 1:
        return 1
    n = _env_int("LOCAL_WORLD_SIZE", 0)
    if n <= 0:
        slurm = os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0].split(",")[0]
        n = int(slurm) if slurm.isdigit() else 0
    if n <= 0 and torch.cuda.is_available():
        n = torch.cuda.device_count()
    if n <= 0 or n > world_size:
        n = world_size
    if world_size % n:
        n = math.gcd(world_size, n)
    return n


def init_layout(
    pcfg: ParallelConfig | None = None,
    backend: str | None = None,
    device: torch.device | str | None = None,
    *,
    num_heads: int | None = None,
) -> Layout:
    """Build this process's Layout.

    Initialises torch.distributed from the torchrun environment (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT, LOCAL_RANK, LOCAL_WORLD_SIZE) when WORLD_SIZE > 1 and it is not initialised yet,
    with the configured timeout; then megatron-core parallel_state for the cp and dp groups, then
    the cfg-pair, dp, replica (and usp) groups. backend: None = nccl when CUDA is available, else
    gloo. device: None = cuda:LOCAL_RANK with nccl, cpu otherwise. num_heads (optional) refines the
    default ulysses size of the usp sub-groups so that it divides the head count.

    Raises ConfigError before any communication when the world size does not factor.
    """
    global _CURRENT
    pcfg = pcfg or ParallelConfig()
    pcfg.validate()

    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
    else:
        world_size, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    dp, cfg, cp = plan_sizes(world_size, pcfg)

    local_world_size = _local_world_size(world_size)
    local_rank = _env_int("LOCAL_RANK", _env_int("SLURM_LOCALID", rank % local_world_size))
    node_rank = _env_int("GROUP_RANK", rank // local_world_size)
    num_nodes = max(1, world_size // local_world_size)

    if backend is None:
        if dist.is_available() and dist.is_initialized():
            backend = str(dist.get_backend())
        else:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
    if device is None:
        device = torch.device(f"cuda:{local_rank % max(torch.cuda.device_count(), 1)}") if "nccl" in backend else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)

    layout = Layout(
        world_size=world_size,
        rank=rank,
        dp_size=dp,
        cfg_size=cfg,
        cp_size=cp,
        local_rank=local_rank,
        local_world_size=local_world_size,
        node_rank=node_rank,
        num_nodes=num_nodes,
        backend=backend,
        device=device,
        timeout_s=pcfg.timeout_s,
        config=pcfg,
    )
    block = rank // cp
    layout.cp_rank = rank % cp
    layout.cfg_rank = block % cfg
    layout.dp_rank = block // cfg
    layout.cp_ranks = [block * cp + i for i in range(cp)]
    layout.cfg_ranks = [global_rank_of(layout.dp_rank, j, layout.cp_rank, cfg, cp) for j in range(cfg)]
    layout.dp_ranks = [global_rank_of(d, layout.cfg_rank, layout.cp_rank, cfg, cp) for d in range(dp)]
    first = layout.dp_rank * cfg * cp
    layout.replica_ranks = list(range(first, first + cfg * cp))

    if world_size == 1:
        _CURRENT = layout
        return layout

    if "nccl" in backend:
        apply_nccl_env_defaults()
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=layout.timeout, world_size=world_size, rank=rank)
        layout.owns_process_group = True
    layout.distributed = True

    u = pcfg.ulysses_size or default_ulysses_size(cp, local_world_size, num_heads)
    hierarchical = [u, cp // u] if 1 < u < cp else None

    with warnings.catch_warnings():  # "TE / Apex not installed" notes, once per rank
        warnings.simplefilter("ignore")
        from megatron.core import parallel_state as ps  # heavy import (seconds); only for real jobs

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=1,
        pipeline_model_parallel_size=1,
        context_parallel_size=cp,
        hierarchical_context_parallel_sizes=hierarchical,
        distributed_timeout_minutes=pcfg.timeout_s / 60.0,
        create_gloo_process_groups=False,
    )
    layout.uses_megatron = True
    cp_ranks = list(ps.get_context_parallel_global_ranks())
    if cp_ranks != layout.cp_ranks:
        raise RuntimeError(f"megatron-core built cp group {cp_ranks}, expected {layout.cp_ranks} (rank order changed?)")
    layout.cp_group = ps.get_context_parallel_group() if cp > 1 else None
    megatron_dp_group = ps.get_data_parallel_group()
    layout.dp_cfg_group = megatron_dp_group if dp * cfg > 1 else None
    megatron_dp = list(dist.get_process_group_ranks(megatron_dp_group))
    expected_dp = sorted(global_rank_of(d, j, layout.cp_rank, cfg, cp) for d in range(dp) for j in range(cfg))
    if sorted(megatron_dp) != expected_dp:
        raise RuntimeError(f"megatron-core built dp group {megatron_dp}, expected {expected_dp}")
    if hierarchical:
        groups = ps.get_hierarchical_context_parallel_groups()
        layout.ulysses_size = u
        layout.cp_ulysses_group, layout.cp_ring_group = groups[0], groups[1]

    # Carve cfg pairs and dp replicas out of megatron's dp group. Every rank creates every group,
    # in the same order (new_group is collective over the world).
    timeout = layout.timeout
    if cfg > 1:
        for d in range(dp):
            for c in range(cp):
                ranks = [global_rank_of(d, j, c, cfg, cp) for j in range(cfg)]
                g = dist.new_group(ranks, timeout=timeout)
                if rank in ranks:
                    layout.cfg_group = g
    if dp > 1:
        if cfg == 1:
            layout.dp_group = layout.dp_cfg_group  # the same ranks
        else:
            for j in range(cfg):
                for c in range(cp):
                    ranks = [global_rank_of(d, j, c, cfg, cp) for d in range(dp)]
                    g = dist.new_group(ranks, timeout=timeout)
                    if rank in ranks:
                        layout.dp_group = g
    if cfg * cp > 1:
        if cfg == 1:
            layout.replica_group = layout.cp_group
        else:
            for d in range(dp):
                ranks = list(range(d * cfg * cp, (d + 1) * cfg * cp))
                g = dist.new_group(ranks, timeout=timeout)
                if rank in ranks:
                    layout.replica_group = g
    _CURRENT = layout
    return layout


def destroy_layout(layout: Layout | None = None) -> None:
    """Forget megatron's groups and, when init_layout initialised torch.distributed, tear it down."""
    global _CURRENT
    layout = layout or _CURRENT
    if layout is not None and layout.uses_megatron:
        from megatron.core import parallel_state as ps

        ps.destroy_model_parallel()
    if layout is not None and layout.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()
    if layout is None or layout is _CURRENT:
        _CURRENT = None
