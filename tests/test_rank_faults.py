"""Faults under torchrun (gloo, CPU, tiny presets), injected with real signals into real processes.

- a sample-level error of any type on the replica leader (a decompression-bomb PNG in Video2World) is that
  sample's `failed` record on every rank, and the run goes on to the next sample;
- a rank killed (SIGKILL) mid-sample: the sample is recorded `interrupted` and stays pending (shard progress
  and markers), the survivor exits with EXIT_INTERRUPTED, the `rank R failed` line names the dead rank, and
  the resubmitted run makes the sample;
- a rank stopped (SIGSTOP) mid-sample ends the job within parallel.timeout_s plus a small margin;
- in pure data parallelism a stopped peer is caught in the closing barrier with the same one-line report.

The fault is injected through sitecustomize (no test hook in the package): on the chosen rank, the Nth call
of denoiser.sample_latent sends the signal to its own process.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest

from cosmos_dist.errors import EXIT_INTERRUPTED

ROOT = Path(__file__).resolve().parents[1]
GENERATE = ROOT / "generate.py"
SMALL = ["height=32", "width=48", "num_frames=9", "num_steps=2", "progress=false"]

pytestmark = pytest.mark.slow

INJECT = textwrap.dedent(
    """
    import os, signal, time
    fault = os.environ.get("COSMOS_TEST_FAULT")  # SIGNAL:RANK:NTH_SAMPLE:STAMP_FILE
    if fault and os.environ.get("RANK") == fault.split(":")[1]:
        import cosmos_dist.pipeline.denoiser as denoiser
        sig, _, nth, stamp = fault.split(":", 3)
        real, calls = denoiser.sample_latent, []

        def sample_latent(*args, **kwargs):
            calls.append(1)
            if len(calls) == int(nth):
                with open(stamp, "w") as f:
                    f.write(repr(time.time()))
                os.kill(os.getpid(), getattr(signal, "SIG" + sig))
            return real(*args, **kwargs)

        denoiser.sample_latent = sample_latent

    swap = os.environ.get("COSMOS_TEST_SWAP")  # TARGET:SOURCE
    if swap and os.environ.get("RANK", "0") == "0":
        # The input file TARGET is replaced by SOURCE's bytes (another process rewriting it) after the run
        # checked it and just before the leader's condition stage reads it.
        import cosmos_dist.pipeline.video2world as video2world
        target, source = swap.split(":", 1)
        real_load = video2world.load_condition_frames

        def load_condition_frames(path, *args, **kwargs):
            if os.path.abspath(str(path)) == os.path.abspath(target):
                with open(source, "rb") as src, open(target, "wb") as dst:
                    dst.write(src.read())
            return real_load(path, *args, **kwargs)

        video2world.load_condition_frames = load_condition_frames
    """
)


def _env(tmp_path: Path, fault: str | None = None, swap: str | None = None) -> dict:
    inject = tmp_path / "inject"
    inject.mkdir(exist_ok=True)
    (inject / "sitecustomize.py").write_text(INJECT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    env["PYTHONPATH"] = f"{inject}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.pop("COSMOS_TEST_FAULT", None)
    env.pop("COSMOS_TEST_SWAP", None)
    if fault:
        env["COSMOS_TEST_FAULT"] = fault
    if swap:
        env["COSMOS_TEST_SWAP"] = swap
    return env


def _torchrun(tmp_path: Path, *overrides: str, fault: str | None = None, swap: str | None = None, timeout: int = 240):
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "--monitor_interval=0.5", str(GENERATE), *SMALL, *overrides]
    t0 = time.time()
    proc = subprocess.run(argv, cwd=tmp_path, env=_env(tmp_path, fault, swap), capture_output=True, text=True,
                          timeout=timeout)
    proc.ended = time.time()
    proc.started = t0
    proc.out = proc.stdout + proc.stderr
    return proc


def _prompts(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _manifest(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


def _bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A PNG whose header claims width x height (no pixel data needed: Pillow refuses it on open)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def test_any_leader_error_is_the_samples_failure_and_the_run_goes_on(tmp_path, ckpt):
    """A bomb PNG is refused when the run checks its inputs (before any model loads); a file that turns into one
    after that check raises Pillow's DecompressionBombError inside the leader's condition stage under cp=2: both
    are their sample's `failed` record, and the good sample after them is made."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    good, changing = tmp_path / "good.png", tmp_path / "changing.png"
    for path in (good, changing):
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(path)
    bomb = _bomb_png(tmp_path / "bomb.png")
    prompts = _prompts(tmp_path / "p.jsonl", [{"prompt": "a bomb", "input_path": str(bomb)},
                                               {"prompt": "a file that changes", "input_path": str(changing)},
                                               {"prompt": "a good one", "input_path": str(good)}])
    proc = _torchrun(tmp_path, "model=tiny_video2world", f"checkpoint_dir={ckpt}", f"prompts_file={prompts}",
                     "output_dir=out", "parallel.cp_size=2", "parallel.timeout_s=60", swap=f"{changing}:{bomb}")
    assert proc.returncode == 1, proc.out[-4000:]  # some sample failed; not a crash
    assert "rank 0 failed" not in proc.out and "rank 1 failed" not in proc.out, proc.out[-4000:]
    events = {e["sample_id"]: e for e in _manifest(tmp_path / "out") if e.get("sample_id")}
    assert len(events) == 3, events
    by_prompt = {}
    for line_number, prompt in ((1, "a bomb"), (2, "a file that changes"), (3, "a good one")):
        (by_prompt[prompt],) = [e for e in events.values() if e.get("line") == line_number]
    assert by_prompt["a good one"]["status"] == "done"
    for prompt in ("a bomb", "a file that changes"):
        assert by_prompt[prompt]["status"] == "failed", proc.out[-6000:]
        assert "DecompressionBombError" in by_prompt[prompt]["reason"]
    assert len([p for p in (tmp_path / "out").rglob("*.mp4")]) == 1


def test_killed_rank_leaves_its_sample_pending_and_resubmission_makes_it(tmp_path, ckpt):
    from cosmos_dist.pipeline.preemption import shard_progress

    prompts = _prompts(tmp_path / "p.jsonl", [{"prompt": "first scene"}, {"prompt": "second scene"}])
    common = ["model=tiny_text2world", f"checkpoint_dir={ckpt}", f"prompts_file={prompts}", "output_dir=out",
              "parallel.cp_size=2", "parallel.timeout_s=60"]
    proc = _torchrun(tmp_path, *common, fault=f"KILL:1:2:{tmp_path / 'stamp'}")
    assert proc.returncode != 0
    assert "rank 1 failed: its process" in proc.out and "is gone" in proc.out, proc.out[-4000:]
    assert "rank 0 failed" not in proc.out, proc.out[-4000:]
    assert f"exitcode  : {EXIT_INTERRUPTED}" in proc.out, proc.out[-3000:]  # the survivor: interrupted
    events = _manifest(tmp_path / "out")
    # line 1 was sampled and is written (the background writer finishes it while the job ends: its `done` line
    # may come after line 2's `interrupted`); line 2 stays pending
    # (or, when the job's ending kills its encoder first, `interrupted` too: pending, never failed)
    by_line = {e["line"]: e for e in events}
    assert len(events) == 2 and by_line[2]["status"] == "interrupted", events
    assert by_line[1]["status"] in ("done", "interrupted"), events
    progress = shard_progress(prompts, tmp_path / "out", 1, 0, [*SMALL, *common])  # the run's settings name its samples
    not_done = [by_line[n]["sample_id"] for n in (1, 2) if by_line[n]["status"] != "done"]
    assert not progress.finished and progress.pending == not_done and not progress.failed
    again = _torchrun(tmp_path, *common)
    assert again.returncode == 0, again.out[-4000:]
    assert shard_progress(prompts, tmp_path / "out", 1, 0, [*SMALL, *common]).finished
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 2


def test_stopped_rank_ends_the_job_within_the_timeout(tmp_path, ckpt):
    timeout_s = 8
    proc = _torchrun(tmp_path, "model=tiny_text2world", f"checkpoint_dir={ckpt}", "prompt=a quiet street",
                     "output_dir=out", "parallel.cp_size=2", f"parallel.timeout_s={timeout_s}",
                     fault=f"STOP:1:1:{tmp_path / 'stamp'}")
    stopped_at = float((tmp_path / "stamp").read_text())
    assert proc.returncode != 0
    assert proc.ended - stopped_at < timeout_s + 15, (proc.ended - stopped_at, proc.out[-3000:])
    assert "rank 1 failed: its process" in proc.out and "is stopped (SIGSTOP)" in proc.out, proc.out[-4000:]
    assert "rank 0 failed" not in proc.out
    events = _manifest(tmp_path / "out")
    assert [e["status"] for e in events] == ["interrupted"], events


def test_stopped_peer_in_pure_data_parallel_is_caught_in_the_closing_barrier(tmp_path, ckpt):
    timeout_s = 8
    prompts = _prompts(tmp_path / "p.jsonl", [{"prompt": f"scene {i}"} for i in range(2)])
    proc = _torchrun(tmp_path, "model=tiny_text2world", f"checkpoint_dir={ckpt}", f"prompts_file={prompts}",
                     "output_dir=out", f"parallel.timeout_s={timeout_s}", fault=f"STOP:1:1:{tmp_path / 'stamp'}")
    stopped_at = float((tmp_path / "stamp").read_text())
    assert proc.returncode != 0
    assert proc.ended - stopped_at < timeout_s + 15 + 20, (proc.ended - stopped_at, proc.out[-3000:])
    assert "rank 1 failed: its process" in proc.out and "is stopped (SIGSTOP)" in proc.out, proc.out[-4000:]
    assert "Traceback" not in proc.out.split("rank 1 failed")[0].split("ChildFailedError")[0], proc.out[-4000:]
    assert f"exitcode  : {EXIT_INTERRUPTED}" in proc.out, proc.out[-3000:]
    events = _manifest(tmp_path / "out")
    assert [e["status"] for e in events] == ["done"], events  # rank 0's sample; rank 1's stays pending
