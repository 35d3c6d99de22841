"""The background writer (pipeline/writer.py, `video.write_queue`): a bounded queue on a real thread, errors
that become their sample's failure, and a run that writes the same files whether it writes in the background
or inline."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cosmos_dist.pipeline.writer import SampleWriter

ROOT = Path(__file__).resolve().parents[1]
GENERATE = ROOT / "generate.py"
SMALL = ["model=tiny_text2world", "height=32", "width=48", "num_frames=9", "num_steps=2", "progress=false",
         "save_latents=true"]


def test_queue_is_bounded_and_results_come_in_order():
    """depth=2: two writes may be in the writer (one running, one waiting); a third submit waits for the oldest."""
    release = threading.Event()
    ran = []

    def write(i):
        def run():
            release.wait(10)
            ran.append(i)
            return Path(f"{i}.mp4")
        return run

    w = SampleWriter(depth=2)
    t0 = time.monotonic()
    w.submit("a", write(0))
    w.submit("b", write(1))
    assert time.monotonic() - t0 < 0.2 and w.pending() == 2  # both accepted at once
    assert w.finished() == []  # nothing ended yet, and finished() never waits
    threading.Timer(0.5, release.set).start()
    w.submit("c", write(2))  # the queue is full: waits until "a" is written
    assert time.monotonic() - t0 >= 0.45 and ran[:1] == [0]
    results = w.finished() + w.close()
    assert [(r.sample, r.path, r.error) for r in results] == [("a", Path("0.mp4"), None), ("b", Path("1.mp4"), None),
                                                             ("c", Path("2.mp4"), None)]
    assert ran == [0, 1, 2]


def test_a_failed_write_is_reported_with_its_sample_and_the_next_ones_go_on():
    def boom():
        raise OSError(28, "No space left on device")

    for depth in (0, 2):
        w = SampleWriter(depth)
        w.submit("x", boom)
        w.submit("y", lambda: Path("y.mp4"))
        results = w.close()
        assert [r.sample for r in results] == ["x", "y"]
        assert isinstance(results[0].error, OSError) and results[0].path is None
        assert results[1].error is None and results[1].path == Path("y.mp4")
    with pytest.raises(ValueError):
        SampleWriter(-1)


# ---- end to end --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


def _run(cwd: Path, ckpt: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    return subprocess.run([sys.executable, str(GENERATE), *SMALL, f"checkpoint_dir={ckpt}", *overrides], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def _files(out: Path) -> dict[str, bytes]:
    files = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if p.is_file() and p.name != "manifest.jsonl" and not any(part.startswith(".") for part in rel.parts):
            data = p.read_bytes()
            if p.suffix == ".json":
                side = json.loads(data)
                side.pop("timings_s", None)
                side.pop("created", None)
                side.get("extra", {}).get("config", {}).get("video", {}).pop("write_queue", None)
                side.get("extra", {}).get("config", {}).pop("output_dir", None)
                data = json.dumps(side, sort_keys=True).encode()
            files[str(rel)] = data
    return files


@pytest.mark.slow
def test_background_and_inline_writes_make_the_same_files_and_a_bad_write_fails_its_sample(tmp_path, ckpt):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"s{i}", "prompt": f"scene {i}"}) + "\n" for i in range(3)))
    inline = _run(tmp_path, ckpt, f"prompts_file={prompts}", "output_dir=inline", "video.write_queue=0")
    assert inline.returncode == 0, inline.stderr[-3000:]
    background = _run(tmp_path, ckpt, f"prompts_file={prompts}", "output_dir=background", "video.write_queue=2")
    assert background.returncode == 0, background.stderr[-3000:]
    a, b = _files(tmp_path / "inline"), _files(tmp_path / "background")
    assert len([n for n in a if n.endswith(".mp4")]) == 3 and a == b

    # A sample whose mp4 cannot be written (its final name is taken by a folder) fails with the writer's error;
    # the others are written and recorded done, and the run exits 1 (a sample failed).
    (bad_id,) = [p.name[: -len(".mp4")] for p in (tmp_path / "background").rglob("s1_*.mp4")]
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / f"{bad_id}.mp4").mkdir()
    proc = _run(tmp_path, ckpt, f"prompts_file={prompts}", "output_dir=blocked", "video.write_queue=2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    events = [json.loads(x) for x in (blocked / "manifest.jsonl").read_text().splitlines()]
    status = {e["sample_id"]: e["status"] for e in events if e.get("sample_id")}
    assert status[bad_id] == "failed" and sorted(status.values()) == ["done", "done", "failed"], events
    assert not (blocked / f"{bad_id}.json").exists()  # no sidecar: not done, made again by a rerun
    assert not [p for p in blocked.rglob("*") if ".tmp-" in p.name]  # no temporary left behind


SIGNAL_THE_GROUP = r'''
import os, signal, sys
import numpy as np
from cosmos_dist.io.video import write_mp4_atomic

got = []
signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))  # the job's graceful stop: a flag


def frames():
    for i in range(12):
        if i == 3:  # the encoder is running: signal the whole process group, as torchrun and Ctrl-C do
            os.killpg(os.getpgrp(), signal.SIGTERM)
        yield np.full((32, 48, 3), 20 * i, np.uint8)


count = write_mp4_atomic(sys.argv[1], frames(), fps=24, verify=True)
print("signals", got, "frames", count)
'''


def test_a_signal_to_the_jobs_process_group_does_not_cut_the_encoder_short(tmp_path):
    """The x264 encoder runs in its own process group (imageio-ffmpeg starts it so), so a signal sent to the job's
    group (Ctrl-C's SIGINT, a SIGTERM) reaches our process, which finishes the write it is doing, and not the
    encoder. (A Slurm cancel signals every process of the job step whatever its group, and a rank under torchrun
    exits at once on SIGTERM: that write is left as a hidden temporary and its sample made again.) Real process,
    real signal."""
    script = tmp_path / "signal_group.py"
    script.write_text(SIGNAL_THE_GROUP)
    out = tmp_path / "v.mp4"
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=120,
                          start_new_session=True)  # its own group: the signal reaches nothing of pytest's
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "signals [15] frames 12" in proc.stdout
    assert out.is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


TERM_WHILE_WRITING = r'''
import os, signal, sys, time
from pathlib import Path
from cosmos_dist.pipeline.preemption import StopFlag
from cosmos_dist.pipeline.writer import SampleWriter

out = Path(sys.argv[1])


def slow_write():
    time.sleep(1.5)  # x264 at work
    out.write_text("written")
    return out


writer = SampleWriter(2)
writer.submit("sample", slow_write)
StopFlag.install()
os.kill(os.getpid(), signal.SIGTERM)  # torchrun's teardown of this rank
time.sleep(60)  # the main thread stuck, as in a collective with a dead peer
print("the main thread was not stopped")
'''


@pytest.mark.parametrize("write_grace", ["20", "0"])
def test_a_rank_ended_by_sigterm_first_finishes_the_writes_already_submitted(tmp_path, write_grace):
    """Under torchrun a SIGTERM ends a rank at once (its main thread may be stuck in a collective), but the video
    writes already submitted get COSMOS_TERM_WRITE_GRACE_S (20 s from the signal) to finish, so a sample that was
    sampled and decoded is not made again. With a grace of 0 the write is abandoned. Real process, real signal."""
    script = tmp_path / "term_while_writing.py"
    script.write_text(TERM_WHILE_WRITING)
    out = tmp_path / "v.mp4"
    env = {**os.environ, "TORCHELASTIC_RUN_ID": "test", "COSMOS_TERM_WRITE_GRACE_S": write_grace,
           "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=60,
                          env=env)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 3, proc.stderr[-2000:]  # EXIT_INTERRUPTED
    assert "received TERM from the launcher" in proc.stderr and "not stopped" not in proc.stdout
    assert elapsed < 30  # not the main thread's 60 s
    if write_grace == "0":
        assert not out.exists() and "video write" not in proc.stderr
    else:
        assert out.read_text() == "written" and "finished 1 video write(s) before exiting" in proc.stderr
