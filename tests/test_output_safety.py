"""Files the run creates stay inside the output tree; failed writes leave no temporaries; the manifest survives a
torn line; flock is optional. Faults are real: planted symlinks, a real size limit or a real full tmpfs, real
truncation, a real flock that answers ENOSYS (an LD_PRELOAD shim)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cosmos_dist.errors import ConfigError
from cosmos_dist.io.records import Manifest, read_manifest, write_json_atomic
from cosmos_dist.io.safefiles import UnsafePathError, is_temp_name, temp_path_for
from cosmos_dist.pipeline.preemption import ShardProgress, check_run_files, marker_path, write_shard_marker
from cosmos_dist.pipeline.work import check_output_dir

REPO = Path(__file__).resolve().parent.parent


def run_py(code: str, *, env_extra: dict | None = None, limit_bytes: int | None = None, check=False):
    """Run `code` in a fresh interpreter (optionally under a real RLIMIT_FSIZE, SIGXFSZ ignored)."""
    pre = ""
    if limit_bytes is not None:
        pre = (f"import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes}))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", pre + textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=120, check=check)


# ---------------------------------------------------------------- symlinks


def test_planted_manifest_symlink_is_refused_and_its_target_untouched(tmp_path):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious\n")
    (out / "manifest.jsonl").symlink_to(victim)
    with pytest.raises(UnsafePathError, match="manifest .*manifest.jsonl is a symlink"):
        Manifest(out / "manifest.jsonl", rank_info={}).done("a")
    with pytest.raises(ConfigError, match="manifest.jsonl is a symlink") as err:
        check_output_dir(out)  # before any model loads (WorldPipeline.prepare runs both checks)
        check_run_files(out)
    assert "\n" not in str(err.value)
    assert victim.read_text() == "precious\n"


def test_write_probe_and_markers_never_follow_symlinks(tmp_path):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious\n")
    # the probe's old fixed name, planted: the probe now uses a fresh exclusive name
    (out / f".write-test-{os.getpid()}").symlink_to(victim)
    check_output_dir(out)
    assert victim.read_text() == "precious\n"

    progress = ShardProgress(0, 2, total=1, done=["a"])
    marker = marker_path(out, 0, 2, "done")
    marker.parent.mkdir()
    marker.symlink_to(victim)
    with pytest.raises(UnsafePathError, match="shard marker .*shard-0000-of-0002.done.json is a symlink"):
        write_shard_marker(out, progress)
    marker.unlink()
    shutil.rmtree(marker.parent)
    (out / ".shards").symlink_to(tmp_path, target_is_directory=True)  # a marker folder leading outside
    with pytest.raises(UnsafePathError, match="marker folder"):
        write_shard_marker(out, progress)
    with pytest.raises(ConfigError, match="marker folder"):
        check_run_files(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "victim.txt"]


def test_temporary_names_are_hidden_unique_and_never_an_id(tmp_path):
    a, b = temp_path_for(tmp_path / "x.tmp-1.json"), temp_path_for(tmp_path / "x.tmp-1.json")
    assert a != b and a.name.startswith(".") and is_temp_name(a.name)
    assert not is_temp_name("x.tmp-1.json") and not is_temp_name("x.tmp-1.mp4")  # a legal id's final files


# ---------------------------------------------------------------- failed writes clean up


def test_json_write_over_the_size_limit_leaves_nothing(tmp_path):
    # a real file size limit: the write fails with EFBIG part-way through, like a full disk
    r = run_py(f"""
        from cosmos_dist.io.records import write_json_atomic
        try:
            write_json_atomic({str(tmp_path / 'big.json')!r}, {{"x": "y" * 20000}})
        except OSError as exc:
            print("errno", exc.errno)
        """, limit_bytes=4096)
    assert "errno 27" in r.stdout, r.stderr  # EFBIG
    assert list(tmp_path.iterdir()) == []


def test_mp4_write_over_the_size_limit_leaves_nothing(tmp_path):
    r = run_py(f"""
        import numpy as np
        from cosmos_dist.io.video import write_mp4_atomic
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 255, (24, 64, 64, 3), dtype=np.uint8)  # noise: far over the limit
        try:
            write_mp4_atomic({str(tmp_path / 'v.mp4')!r}, frames, 24, crf=0)
        except Exception as exc:
            print("failed", type(exc).__name__)
        """, limit_bytes=8192)
    assert "failed" in r.stdout, (r.stdout, r.stderr)
    assert list(tmp_path.iterdir()) == []


def _mount_tiny_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_full_disk_leaves_no_temporaries(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tiny_tmpfs(disk):
        pytest.skip("needs root and mount to make a small tmpfs (the size-limit tests cover the same path)")
    try:
        import torch

        from cosmos_dist.io.safefiles import save_atomic
        from cosmos_dist.io.video import write_mp4_atomic

        with pytest.raises(OSError):
            write_json_atomic(disk / "s.json", {"x": "y" * 200_000})
        with pytest.raises((OSError, RuntimeError)):  # torch re-raises ENOSPC as a RuntimeError
            save_atomic(disk / "s.latent.pt", lambda f: torch.save(torch.zeros(100_000), f))
        frames = np.random.default_rng(0).integers(0, 255, (24, 64, 64, 3), dtype=np.uint8)
        with pytest.raises((OSError, RuntimeError)):
            write_mp4_atomic(disk / "s.mp4", frames, 24, crf=0)
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# ---------------------------------------------------------------- torn manifest lines


def test_record_after_a_really_torn_line_starts_on_a_fresh_line(tmp_path):
    path = tmp_path / "manifest.jsonl"
    m = Manifest(path, rank_info={})
    m.done("a")
    m.failed("b", "boom")
    size = path.stat().st_size
    # a writer that dies part-way through its line: here a real size limit cuts its write short
    r = run_py(f"""
        from cosmos_dist.io.records import Manifest
        try:
            Manifest({str(path)!r}, rank_info={{}}).done("c", note="x" * 500)
        except OSError as exc:
            print("errno", exc.errno)
        """, limit_bytes=size + 40)
    assert "errno 27" in r.stdout, r.stderr
    assert path.stat().st_size == size + 40 and not path.read_bytes().endswith(b"\n")
    m.done("d")
    m.skipped("e", "already done")
    assert [(e["status"], e["sample_id"]) for e in read_manifest(path)] == [
        ("done", "a"), ("failed", "b"), ("done", "d"), ("skipped", "e")]
    assert len(path.read_bytes().splitlines()) == 5  # a, b, the fragment, d, e


def test_reader_recovers_a_record_glued_to_a_truncated_line(tmp_path):
    # an older writer appended straight after a fragment: the record is still read
    path = tmp_path / "manifest.jsonl"
    m = Manifest(path, rank_info={})
    m.done("a")
    m.done("b")
    os.truncate(path, path.stat().st_size - 9)  # really truncated mid-line
    with open(path, "ab") as f:
        f.write(json.dumps({"time": "2030-01-01T00:00:00Z", "status": "done", "sample_id": "c"}).encode() + b"\n")
    assert [e["sample_id"] for e in read_manifest(path)] == ["a", "c"]


# ---------------------------------------------------------------- no flock (Lustre noflock)

SHIM = r"""
#include <errno.h>
int flock(int fd, int op) { (void)fd; (void)op; errno = ENOSYS; return -1; }
"""


@pytest.fixture(scope="module")
def noflock_shim(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler for the flock -> ENOSYS shim")
    d = tmp_path_factory.mktemp("shim")
    (d / "noflock.c").write_text(SHIM)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(d / "noflock.so"), str(d / "noflock.c")], check=True)
    return d / "noflock.so"


def test_manifest_works_where_flock_answers_enosys(tmp_path, noflock_shim):
    path = tmp_path / "manifest.jsonl"
    code = f"""
        import fcntl, os, sys
        from cosmos_dist.io.records import Manifest
        try:
            fcntl.flock(os.open({str(path)!r} + ".probe", os.O_CREAT | os.O_RDWR), fcntl.LOCK_EX)
            print("flock worked")
        except OSError as exc:
            print("flock errno", exc.errno)
        m = Manifest({str(path)!r}, rank_info={{}})
        for i in range(30):
            m.done(f"s-{{sys.argv[1]}}-{{i}}")
        """
    env = {**os.environ, "PYTHONPATH": str(REPO), "LD_PRELOAD": str(noflock_shim)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(w)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for w in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, se
        assert "flock errno 38" in so  # the shim is real: flock itself answers ENOSYS
        assert "flock is not supported here" in se  # said once, then the run goes on
    ids = [e["sample_id"] for e in read_manifest(path)]
    assert sorted(ids) == sorted(f"s-{w}-{i}" for w in range(3) for i in range(30))
