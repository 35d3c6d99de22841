"""launch/*.sh size OMP threads per rank from the machine (CPUs / ranks on the node, at least 1)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script", ["single_node.sh", "multi_node.sh"])
@pytest.mark.parametrize("nproc", [1, 2, 1000])
def test_threads_per_rank(tmp_path, script, nproc):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "torchrun").write_text('#!/bin/sh\necho "threads=$OMP_NUM_THREADS"\n')
    (fake / "torchrun").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(PATH=f"{fake}:{env['PATH']}", NPROC=str(nproc), MASTER_ADDR="localhost", NNODES="1")
    r = subprocess.run(["bash", str(REPO / "launch" / script)], env=env, capture_output=True, text=True, check=True)
    cpus = len(os.sched_getaffinity(0))
    assert r.stdout.strip() == f"threads={max(cpus // nproc, 1)}"
    env["OMP_NUM_THREADS"] = "3"  # a user's setting wins
    r = subprocess.run(["bash", str(REPO / "launch" / script)], env=env, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "threads=3"
