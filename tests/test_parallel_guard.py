"""A failing or hung rank ends the whole job with a message, never a hang (2 real processes)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from cosmos_dist.parallel.testing import free_port

WORKER = textwrap.dedent(
    """
    import sys, time
    import torch, torch.distributed as dist
    from cosmos_dist.parallel import ParallelConfig, init_layout, run_guarded

    mode, timeout_s = sys.argv[1], float(sys.argv[2])
    layout = init_layout(ParallelConfig(timeout_s=timeout_s))

    def work():
        if layout.rank == 1:
            if mode == "raise":
                raise RuntimeError("boom: the prompt file is unreadable")
            time.sleep(300)  # hang: never reaches the collective
        x = torch.ones(1)
        dist.all_reduce(x)
        print("UNREACHABLE", flush=True)

    run_guarded(work, layout)
    """
)


def _env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
    return env


def _launch_plain(tmp_path, mode: str, timeout_s: float, limit_s: float):
    """Two ranks started by hand (no torchrun agent to kill the survivor)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    procs = []
    for rank in range(2):
        env = _env()
        env.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(script), mode, str(timeout_s)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    start = time.monotonic()
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, limit_s - (time.monotonic() - start)))
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [p.returncode for p in procs], outs, time.monotonic() - start


def test_rank_raising_before_a_collective_ends_the_job(tmp_path):
    codes, outs, elapsed = _launch_plain(tmp_path, "raise", timeout_s=60, limit_s=150)
    assert codes[0] != 0 and codes[1] != 0, (codes, outs)
    assert "rank 1 failed: RuntimeError: boom: the prompt file is unreadable" in outs[1]
    assert "rank 1 failed" in outs[0], outs[0]  # the survivor names the failed rank
    assert "UNREACHABLE" not in "".join(outs)


def test_hung_peer_hits_the_timeout_and_everyone_exits(tmp_path):
    codes, outs, elapsed = _launch_plain(tmp_path, "hang", timeout_s=5, limit_s=150)
    assert codes[0] != 0 and codes[1] != 0, (codes, outs)
    assert "rank 0 failed:" in outs[0] and "process-group timeout of 5 s" in outs[0], outs[0]
    assert "rank 1 stopping: rank 0 failed" in outs[1], outs[1]


def test_torchrun_launch_exits_nonzero_naming_the_rank(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           f"--master_port={free_port()}", "--monitor_interval=0.5", str(script), "raise", "60"]
    res = subprocess.run(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=150)
    assert res.returncode != 0
    assert "rank 1 failed: RuntimeError: boom" in res.stdout
