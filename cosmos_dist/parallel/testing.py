"""Helpers for multi-process tests on the CPU (gloo): start N ranks of a function.

    def work(rank, world_size, *args): ...        # module-level, so that spawn can import it
    spawn_ranks(work, 4, *args)                    # raises if any rank raises

Each rank gets the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT) and one compute thread, so `init_layout` works as under torchrun.
"""
from __future__ import annotations

import os
import socket
from typing import Callable

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world_size: int, port: int, env: dict, args: tuple) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank % int(env.get("LOCAL_WORLD_SIZE", world_size))),
            "LOCAL_WORLD_SIZE": str(world_size),
            "OMP_NUM_THREADS": "1",
        }
    )
    os.environ.update({k: str(v) for k, v in env.items()})
    torch.set_num_threads(1)
    fn(rank, world_size, *args)


def spawn_ranks(fn: Callable, world_size: int, *args, env: dict | None = None) -> None:
    """Run fn(rank, world_size, *args) in `world_size` fresh processes; re-raises a rank's error."""
    mp.start_processes(
        _entry,
        args=(fn, world_size, free_port(), dict(env or {}), args),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )


def init_gloo(rank: int, world_size: int, timeout_s: float = 120) -> None:
    """Plain torch.distributed over gloo from the spawn_ranks environment (no megatron)."""
    from datetime import timedelta

    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
