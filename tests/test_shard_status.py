"""tools/shard_status.py and the shard markers / stop requests of cosmos_dist.pipeline.preemption."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from cosmos_dist.io.records import Manifest, write_json_atomic
from cosmos_dist.pipeline import preemption
from cosmos_dist.pipeline.preemption import StopFlag, marker_path, shard_progress, shard_tag, write_shard_marker
from cosmos_dist.pipeline.work import collect_work, compose_run_config

from cosmos_dist.commands import shard_status

REPO = Path(__file__).resolve().parent.parent


def make_run(tmp_path: Path, n: int = 20, bad_lines: int = 2, overrides=()) -> tuple[Path, Path, list[str]]:
    """A prompts file and the sample ids of the run that `overrides` describe (the ids depend on its settings)."""
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    lines = [json.dumps({"prompt": f"scene number {i}"}) for i in range(n)]
    for k in range(bad_lines):
        lines.insert(3 + 5 * k, "{not json")
    prompts.write_text("\n".join(lines) + "\n")
    out.mkdir()
    ids = [it.sample_id for it in collect_work(compose_run_config(list(overrides), str(prompts), str(out), 1)).items]
    return prompts, out, ids


def finish(out: Path, sid: str) -> None:
    (out / f"{sid}.mp4").write_bytes(b"video")
    write_json_atomic(out / f"{sid}.json", {"sample_id": sid})
    Manifest(out / "manifest.jsonl", rank_info={}).append("done", sid)


def test_compress_ranges():
    assert shard_status.compress_ranges([]) == ""
    assert shard_status.compress_ranges([3]) == "3"
    assert shard_status.compress_ranges([7, 0, 1, 2, 5, 8, 2]) == "0-2,5,7-8"


def test_collect_matches_the_run_loop_sharding(tmp_path):
    prompts, out, ids = make_run(tmp_path, n=30, bad_lines=3)
    shards = shard_status.collect(str(prompts), str(out), 4)
    for s in shards:
        work = collect_work(SimpleNamespace(prompt=None, prompts_file=str(prompts), num_shards=4, shard_index=s.shard_index))
        assert s.pending == [it.sample_id for it in work.items]
        assert s.bad_lines == [b.line_number for b in work.bad_lines]
    assert sum(s.total for s in shards) == 30 and sum(len(s.bad_lines) for s in shards) == 3


def test_states_and_the_resubmission_line(tmp_path, capsys):
    recorded = ["model=7b_text2world", "guidance=5"]
    prompts, out, ids = make_run(tmp_path, n=20, bad_lines=0)
    n = 3
    shards = shard_status.collect(str(prompts), str(out), n, compose_run_config(recorded, str(prompts), str(out), n))
    # shard 0 complete, shard 1 one failure and the rest done, shard 2 one sample done.
    for sid in shards[0].pending:
        finish(out, sid)
    first, *rest = shards[1].pending
    Manifest(out / "manifest.jsonl", rank_info={}).append("failed", first, reason="CUDA out of memory")
    for sid in rest:
        finish(out, sid)
    finish(out, shards[2].pending[0])
    # a writer killed mid-file leaves only a temporary name behind
    (out / f".{shards[2].pending[1]}.mp4.tmp-1234-0a1b2c3d.mp4").write_bytes(b"half")
    write_json_atomic(
        marker_path(out, 2, n, "stopped"),
        {"kind": "stopped", "shard_index": 2, "num_shards": n, "time": "2030-01-01T00:00:00Z", "reason": "USR1",
         "next_sample": shards[2].pending[1], "slurm": {"array_job_id": "77", "array_task_id": "2"},
         "overrides": ["model=7b_text2world", f"prompts_file={prompts}", "num_shards=3", "guidance=5"]},
    )

    assert shard_status.main(["--prompts-file", str(prompts), "--output-dir", str(out), "--num-shards", str(n), "--all"]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()[:1].isdigit() and "temporary" not in line}
    assert rows["0"][1] == "done" and rows["1"][1] == "failed" and rows["2"][1] == "pending"
    assert f"stopped (USR1) before {shards[2].pending[1]} [job 77_2]" in text
    assert "1 temporary file(s)" in text
    line = text.strip().splitlines()[-1]
    argv = shlex.split(line)
    assert argv[:2] == ["sbatch", "--array=2"]
    assert argv[3:] == [f"prompts_file={prompts}", f"output_dir={out}", "num_shards=3", "model=7b_text2world", "guidance=5"]

    # --retry-failed adds shard 1; overrides after -- replace the recorded ones (another model: other sample ids,
    # so every shard is unfinished for that run); --check fails while unfinished
    rc = shard_status.main(["--prompts-file", str(prompts), "--output-dir", str(out), "--num-shards", str(n),
                            "--retry-failed", "--max-parallel", "8", "--sbatch-option=--time=1:00:00", "--check", "--clean-temp",
                            "--", "model=14b_text2world"])
    assert rc == 3  # shard 2 has pending samples: errors.EXIT_INTERRUPTED
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert shlex.split(line)[:3] == ["sbatch", "--array=0-2%8", "--time=1:00:00"]
    assert shlex.split(line)[-1] == "model=14b_text2world"
    assert not list(out.glob(".*.tmp-*"))

    report = json.loads(subprocess.run(
        [sys.executable, str(REPO / "tools" / "shard_status.py"), "--prompts-file", str(prompts), "--output-dir", str(out),
         "--num-shards", str(n), "--json"], capture_output=True, text=True, check=True).stdout)
    assert report["unfinished"] == [2]
    assert [s["failed"] for s in report["shards"]] == [0, 1, 0]


def test_every_shard_finished(tmp_path, capsys):
    prompts, out, ids = make_run(tmp_path, n=5, bad_lines=0)
    for sid in ids:
        finish(out, sid)
    assert shard_status.main(["--prompts-file", str(prompts), "--output-dir", str(out), "--num-shards", "2", "--check"]) == 0
    assert "every shard is finished" in capsys.readouterr().out


def test_marker_kinds_replace_each_other(tmp_path):
    prompts, out, ids = make_run(tmp_path, n=6, bad_lines=1)
    p = shard_progress(prompts, out, 1, 0, [])
    assert p.counts() == {"total": 6, "done": 0, "failed": 0, "blocked": 0, "pending": 6, "bad_lines": 1}
    path = write_shard_marker(out, p, reason="USR1", prompts_file=prompts, overrides=["a=1"])
    assert path.name == "shard-0000-of-0001.stopped.json"
    rec = json.loads(path.read_text())
    assert rec["next_sample"] == ids[0] and rec["reason"] == "USR1" and rec["overrides"] == ["a=1"]
    for sid in ids[:-1]:
        finish(out, sid)
    Manifest(out / "manifest.jsonl", rank_info={}).append("blocked", ids[-1], reason="guardrail")
    p = shard_progress(prompts, out, 1, 0, [])
    assert p.finished and len(p.blocked) == 1
    path = write_shard_marker(out, p)
    assert path.name == "shard-0000-of-0001.done.json" and not marker_path(out, 0, 1, "stopped").exists()
    assert preemption.read_shard_markers(out, 1)[0]["kind"] == "done"


def test_mark_command_exit_codes(tmp_path):
    prompts, out, ids = make_run(tmp_path, n=3, bad_lines=0)
    cmd = [sys.executable, "-m", "cosmos_dist.pipeline.preemption", "mark", "--prompts-file", str(prompts),
           "--output-dir", str(out), "--num-shards", "1", "--shard-index", "0", "--reason", "TERM", "--", "model=7b_text2world"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 3 and f"next {ids[0]}" in r.stdout, r.stdout + r.stderr
    for sid in ids:
        finish(out, sid)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "3/3 done" in r.stdout


def test_finish_shard_helper(tmp_path):
    prompts, out, ids = make_run(tmp_path, n=4, bad_lines=0)
    cfg = compose_run_config([], str(prompts), str(out), 1)
    work = collect_work(cfg)
    assert preemption.finish_shard(cfg, work, "SIGUSR1").name == "shard-0000-of-0001.stopped.json"
    for sid in ids:
        finish(out, sid)
    assert preemption.finish_shard(cfg, work).name == "shard-0000-of-0001.done.json"
    assert preemption.finish_shard(SimpleNamespace(prompts_file=None), work) is None


def test_shard_tag():
    assert shard_tag(3, 12) == "shard-0003-of-0012"
    assert shard_tag(12345, 100000) == "shard-12345-of-100000"


def test_stop_flag_signal_and_stop_file(tmp_path, monkeypatch):
    stop_file = tmp_path / "x.stop"
    monkeypatch.setenv(preemption.STOP_FILE_ENV, str(stop_file))
    old = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)
    try:
        flag = StopFlag.install()
        assert not flag.requested
        stop_file.touch()
        assert flag.requested and flag.signal_name == "stop-file"

        stop_file.unlink()
        flag = StopFlag.install()
        assert not flag.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag.requested and flag.signal_name == "USR1"
    finally:
        signal.signal(signal.SIGUSR1, old[0])
        signal.signal(signal.SIGTERM, old[1])
    monkeypatch.delenv(preemption.STOP_FILE_ENV)
    assert StopFlag().stop_file is None


@pytest.mark.parametrize("bad", [["--num-shards", "0"], ["--prompts-file", "/nonexistent.jsonl"]])
def test_bad_arguments(tmp_path, bad):
    prompts, out, _ = make_run(tmp_path, n=1, bad_lines=0)
    args = {"--prompts-file": str(prompts), "--output-dir": str(out), "--num-shards": "2"}
    args[bad[0]] = bad[1]
    with pytest.raises(SystemExit) as exc:
        shard_status.main([x for kv in args.items() for x in kv])
    assert exc.value.code == 2


def test_missing_overrides_are_said_not_silently_dropped(tmp_path, capsys):
    """Before any element has written a marker, the resubmission line cannot know the run's overrides
    (model, checkpoint_dir, ...): the report says so instead of printing a line that would run defaults."""
    prompts, out, ids = make_run(tmp_path, n=6, bad_lines=0)
    finish(out, ids[0])
    args = ["--prompts-file", str(prompts), "--output-dir", str(out), "--num-shards", "2"]
    assert shard_status.main(args) == 0
    text = capsys.readouterr().out
    assert "no shard marker or start record holds this run's Hydra overrides" in text
    assert shlex.split(text.strip().splitlines()[-1])[0] == "sbatch"
    assert shard_status.main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["overrides_recorded"] is False
    assert shard_status.main([*args, "--", "model=tiny_text2world"]) == 0
    text = capsys.readouterr().out
    assert "no shard marker" not in text and text.strip().endswith("model=tiny_text2world")


def test_overrides_recorded_when_an_element_starts(tmp_path, capsys):
    """The sbatch scripts record the run's overrides before launching (`preemption started`), so while every
    element is still running (no end marker yet) the resubmission line already carries them; a newer end
    marker of another submission wins."""
    prompts, out, ids = make_run(tmp_path, n=6, bad_lines=0)
    finish(out, ids[0])
    overrides = [f"prompts_file={prompts}", f"output_dir={out}", "num_shards=2", "model=tiny_text2world"]
    r = subprocess.run([sys.executable, "-m", "cosmos_dist.pipeline.preemption", "started", "--output-dir", str(out),
                        "--num-shards", "2", "--", *overrides], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert preemption.read_run_record(out, 2)["overrides"] == overrides
    assert preemption.read_run_record(out, 3) is None  # another num_shards is another run
    args = ["--prompts-file", str(prompts), "--output-dir", str(out), "--num-shards", "2"]
    assert shard_status.main(args) == 0
    text = capsys.readouterr().out
    assert "no shard marker" not in text and text.strip().endswith("model=tiny_text2world")
    progress = shard_progress(prompts, out, 2, 1)
    write_shard_marker(out, progress, overrides=[*overrides[:3], "model=tiny_video2world"])
    assert shard_status.main(args) == 0
    assert capsys.readouterr().out.strip().endswith("model=tiny_video2world")
