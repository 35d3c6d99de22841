"""A sample's mp4 is the same bytes whatever the layout: x264 gets a fixed thread count, so two real
processes with different CPU sets and OMP_NUM_THREADS (a single process vs. one rank of torchrun under a
CPU binding) write identical files."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

ENCODE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from cosmos_dist.io.video import write_mp4_atomic

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (1, 96, 128, 3), dtype=np.uint8)
    frames = np.concatenate([np.roll(base, 3 * i, axis=2) for i in range(17)])  # motion, so threads matter
    write_mp4_atomic(sys.argv[1], frames, 24)
    """
)


def _encode(tmp_path, name: str, omp: str, cpus: set[int]) -> bytes:
    script = tmp_path / "encode.py"
    script.write_text(ENCODE)
    out = tmp_path / name
    env = dict(os.environ, OMP_NUM_THREADS=omp)
    subprocess.run([sys.executable, str(script), str(out)], env=env, check=True, timeout=120,
                   preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    return out.read_bytes()


def test_mp4_bytes_do_not_depend_on_threads_or_cpus(tmp_path):
    cpus = os.sched_getaffinity(0)
    one = _encode(tmp_path, "one.mp4", "1", {min(cpus)})
    many = _encode(tmp_path, "many.mp4", str(max(2, len(cpus))), cpus)
    assert hashlib.sha256(one).hexdigest() == hashlib.sha256(many).hexdigest()
