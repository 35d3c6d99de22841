"""Stop requests and per-shard progress markers.

Stop requests: a signal (Slurm's warning before the time limit, SIGTERM on preemption) or a stop
file asks the run to stop between samples; the sample in progress is finished (or, if the job is
killed first, abandoned: every output is written under a temporary name and renamed, so nothing
partial ever carries a final name). The stop file (`COSMOS_STOP_FILE`, set by the sbatch scripts)
reaches every rank on every node through the shared output folder, without signalling processes
that have no handler yet (a model still loading) or helper processes (ffmpeg).

Markers: `{output_dir}/.shards/shard-XXXX-of-YYYY.done.json` when no sample of the shard is left
to try, `...stopped.json` when some are (with the next sample to generate and why the run ended).
They are summaries for people and for `cosmos-dist shard-status`; the truth stays the sidecars.

    python -m cosmos_dist.pipeline.preemption mark --prompts-file p.jsonl --output-dir out \
        --num-shards 1000 --shard-index 17 [--reason USR1] [-- hydra overrides...]

exits 0 when the shard is finished and 3 when samples are pending.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from cosmos_dist.errors import CosmosDistError

log = logging.getLogger("cosmos_dist")

MARKER_DIR = ".shards"
MARKER_SCHEMA = "cosmos-dist/shard/v1"
STOP_FILE_ENV = "COSMOS_STOP_FILE"
EXIT_PENDING = 3


# ---- stop requests -------------------------------------------------------------------------------------
#: Seconds a single-process run gets after SIGTERM to finish the sample in progress before it exits
#: (Slurm's default KillWait is 30 s before SIGKILL). Under torchrun SIGTERM is the launcher stopping its
#: workers, so a rank exits at once. Either way the exit code is EXIT_INTERRUPTED and the sample stays pending.
TERM_GRACE_ENV = "COSMOS_TERM_GRACE_S"
DEFAULT_TERM_GRACE_S = 20.0
#: Seconds after SIGTERM within which a process that must end waits for the video writes already submitted
#: (pipeline/writer.py) before it exits: under torchrun, whose launcher kills its workers 30 s after its SIGTERM,
#: a rank leaves at once but for these writes. Counted from the signal, so a single process whose grace ran out
#: waits no longer.
TERM_WRITE_GRACE_ENV = "COSMOS_TERM_WRITE_GRACE_S"
DEFAULT_TERM_WRITE_GRACE_S = 20.0


class StopFlag:
    """`requested` turns true on one of `signals`, or once `stop_file` exists (checked on each read).

    SIGUSR1 asks for a stop after the current sample. SIGTERM does too, and also arms a watcher thread that
    ends the process if it is still running after the grace (see TERM_GRACE_ENV): Python runs a signal handler
    only between bytecodes, so a rank blocked in a collective (waiting for a dead or stopped peer) would
    otherwise sit out torchrun's shutdown SIGTERM until the collective times out and be SIGKILLed."""

    def __init__(self, stop_file: str | os.PathLike | None = None):
        self._requested = False
        self.signal_name: str | None = None
        if stop_file is None:
            stop_file = os.environ.get(STOP_FILE_ENV) or None
        self.stop_file = Path(stop_file) if stop_file else None

    @property
    def requested(self) -> bool:
        if not self._requested and self.stop_file is not None and self.stop_file.exists():
            self._requested = True
            self.signal_name = "stop-file"
            log.warning("stop file %s exists: stopping before the next sample", self.stop_file)
        return self._requested

    @requested.setter
    def requested(self, value: bool) -> None:
        self._requested = bool(value)

    def _handler(self, signum, frame):
        self._requested = True
        # "USR1", "TERM": the names Slurm's --signal and the sbatch scripts' markers use.
        self.signal_name = signal.Signals(signum).name.removeprefix("SIG")
        log.warning("received %s: stopping after the current sample", self.signal_name)

    @classmethod
    def install(cls, signals=(signal.SIGUSR1, signal.SIGTERM), stop_file=None) -> "StopFlag":
        flag = cls(stop_file)
        for sig in signals:
            try:
                signal.signal(sig, flag._handler)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                return flag
        if signal.SIGTERM in signals:
            _watch_term(term_grace_s())
        return flag


def _env_seconds(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


def term_grace_s() -> float:
    return 0.0 if "TORCHELASTIC_RUN_ID" in os.environ else _env_seconds(TERM_GRACE_ENV, DEFAULT_TERM_GRACE_S)


_term_watcher = None  # the watcher thread, once started (threading is imported lazily)


def _watch_term(grace_s: float) -> None:
    """Start (once per process) the thread that sees SIGTERM at the C level, through signal.set_wakeup_fd, and
    ends the process `grace_s` later if it has not ended by itself. Not installed when another wakeup fd is
    in use (an asyncio loop)."""
    import threading

    global _term_watcher
    if _term_watcher is not None:
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread
        previous = None
    if previous != -1:
        if previous is not None:
            signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)
        return
    _term_watcher = threading.Thread(target=_term_watch, args=(read_fd, grace_s), name="cosmos-dist-term", daemon=True)
    _term_watcher.start()


def _finish_writes(signalled_at: float) -> None:
    """Wait (within the write grace, counted from the signal) for the video writes already submitted."""
    from cosmos_dist.pipeline.writer import finish_live_writes

    finished = finish_live_writes(signalled_at + _env_seconds(TERM_WRITE_GRACE_ENV, DEFAULT_TERM_WRITE_GRACE_S))
    if finished:
        print(f"[cosmos_dist] finished {finished} video write(s) before exiting", file=sys.stderr, flush=True)


def _term_watch(read_fd: int, grace_s: float) -> None:
    import time

    from cosmos_dist.errors import EXIT_INTERRUPTED

    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        if int(signal.SIGTERM) in data:
            break
    signalled_at = time.monotonic()
    time.sleep(grace_s)  # the main thread stops by itself meanwhile when it can (the process then ends)
    guard = sys.modules.get("cosmos_dist.parallel.guard")
    if guard is not None and guard.job_is_distributed():
        # names the rank that died or hung, if any (while the job's store is still there), then the writes; does
        # not return
        guard.stop_on_term(before_exit=lambda: _finish_writes(signalled_at))
    rank = os.environ.get("RANK")
    who = f"rank {rank}" if rank is not None and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else "the run"
    how = "from the launcher" if grace_s == 0 else f"and was still running {grace_s:g} s later"
    try:
        sys.stdout.flush()
        print(f"[cosmos_dist] {who} received TERM {how}: exiting now; the sample in progress stays pending",
              file=sys.stderr, flush=True)
        _finish_writes(signalled_at)
    finally:
        os._exit(EXIT_INTERRUPTED)


# ---- where things are ----------------------------------------------------------------------------
def _index_width(num_shards: int) -> int:
    return max(4, len(str(num_shards - 1)))


def shard_tag(shard_index: int, num_shards: int) -> str:
    width = _index_width(num_shards)
    return f"shard-{shard_index:0{width}d}-of-{num_shards:0{width}d}"


def marker_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / MARKER_DIR


def marker_path(output_dir, shard_index: int, num_shards: int, kind: str) -> Path:
    if kind not in ("done", "stopped"):
        raise ValueError(f"marker kind must be done or stopped, not {kind!r}")
    return marker_dir(output_dir) / f"{shard_tag(shard_index, num_shards)}.{kind}.json"


def stop_file_path(output_dir, shard_index: int, num_shards: int) -> Path:
    return marker_dir(output_dir) / f"{shard_tag(shard_index, num_shards)}.stop"


# ---- progress ------------------------------------------------------------------------------------
@dataclass
class ShardProgress:
    shard_index: int
    num_shards: int
    total: int = 0  # valid prompt items in the shard
    done: list[str] = field(default_factory=list)  # sidecar exists
    failed: list[str] = field(default_factory=list)  # no sidecar, last manifest event `failed`
    blocked: list[str] = field(default_factory=list)  # no sidecar, last manifest event `blocked` (guardrail)
    pending: list[str] = field(default_factory=list)  # never tried, or interrupted; file order
    bad_lines: list[int] = field(default_factory=list)  # unreadable lines of this shard

    @property
    def finished(self) -> bool:
        """Nothing left that a rerun would try for the first time."""
        return not self.pending

    def counts(self) -> dict[str, int]:
        return {
            "total": self.total, "done": len(self.done), "failed": len(self.failed),
            "blocked": len(self.blocked), "pending": len(self.pending), "bad_lines": len(self.bad_lines),
        }


def last_events(manifest_path: str | os.PathLike) -> dict[str, str]:
    """sample id -> status of its latest done / failed / blocked / interrupted event in the manifest (an
    `interrupted` sample, cut short by a lost rank, counts as pending even after an earlier failure)."""
    from cosmos_dist.io.records import read_manifest

    last: dict[str, str] = {}
    for entry in read_manifest(manifest_path):
        sid, status = entry.get("sample_id"), entry.get("status")
        if sid is not None and status in ("done", "failed", "blocked", "interrupted"):
            last[sid] = status
    return last


def check_run_files(output_dir: str | os.PathLike) -> None:
    """Refuse (UnsafePathError, one line naming it) a manifest, `.shards` folder or marker that is a symlink."""
    from cosmos_dist.io.safefiles import refuse_symlink, refuse_symlinked_dir

    out = Path(output_dir)
    refuse_symlink(out / "manifest.jsonl", "manifest")
    d = marker_dir(out)
    refuse_symlinked_dir(d, "shard marker folder")
    if d.is_dir():
        for path in d.iterdir():
            if path.name.endswith(".json") or path.name.endswith(".lease"):
                refuse_symlink(path, "shard marker")


def classify(progress: ShardProgress, items: Iterable, done_ids, events: Mapping[str, str]) -> ShardProgress:
    """Sort `items` (PromptItems of one shard) into done / failed / blocked / pending."""
    for item in items:
        sid = item.sample_id
        progress.total += 1
        if sid in done_ids:
            progress.done.append(sid)
        elif events.get(sid) == "failed":
            progress.failed.append(sid)
        elif events.get(sid) == "blocked":
            progress.blocked.append(sid)
        else:
            progress.pending.append(sid)
    return progress


def shard_progress(prompts_file, output_dir, num_shards: int, shard_index: int, overrides=None) -> ShardProgress:
    """Progress of one shard, read from the prompts file, the sidecars and the manifest. The sample ids depend on
    the run's settings: `overrides` (its Hydra overrides) give them; None: an empty settings set."""
    from types import SimpleNamespace

    from cosmos_dist.errors import ConfigError
    from cosmos_dist.pipeline.work import collect_work, compose_run_config

    cfg = SimpleNamespace(prompt=None, prompts_file=str(prompts_file), num_shards=num_shards, shard_index=shard_index,
                          output_dir=str(output_dir))
    if overrides is not None:
        try:
            cfg = compose_run_config(list(overrides), str(prompts_file), str(output_dir), num_shards)
            cfg.shard_index = shard_index
        except ConfigError as exc:
            log.warning("shard progress without the run's settings: %s", exc)
    work = collect_work(cfg)
    return progress_of_work(work, output_dir, num_shards, shard_index)


def progress_of_work(work, output_dir, num_shards: int, shard_index: int) -> ShardProgress:
    out = Path(output_dir)
    from cosmos_dist.pipeline.work import is_done

    done_ids = {it.sample_id for it in work.items if is_done(out, it.sample_id, getattr(work, "layout", "flat"))}
    progress = ShardProgress(shard_index, num_shards, bad_lines=[b.line_number for b in work.bad_lines])
    return classify(progress, work.items, done_ids, last_events(out / "manifest.jsonl"))


# ---- markers -------------------------------------------------------------------------------------
def slurm_job_info() -> dict[str, str]:
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_JOB_NODELIST")
    return {k[len("SLURM_"):].lower(): os.environ[k] for k in keys if k in os.environ}


def write_shard_marker(
    output_dir,
    progress: ShardProgress,
    *,
    reason: str | None = None,
    prompts_file: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    exit_code: int | None = None,
) -> Path:
    """Write `.done.json` (nothing pending) or `.stopped.json` (with the next sample), removing the other."""
    from cosmos_dist.io.records import utc_now, write_json_atomic

    kind = "done" if progress.finished else "stopped"
    record: dict = {
        "schema": MARKER_SCHEMA,
        "kind": kind,
        "shard_index": progress.shard_index,
        "num_shards": progress.num_shards,
        "counts": progress.counts(),
        "next_sample": progress.pending[0] if progress.pending else None,
        "pending_sample_ids": progress.pending[:50],
        "failed_sample_ids": progress.failed[:50],
        "reason": reason,
        "exit_code": exit_code,
        "time": utc_now(),
        "host": socket.gethostname(),
        "slurm": slurm_job_info(),
    }
    if prompts_file is not None:
        p = Path(prompts_file)
        try:
            st = p.stat()
            record["prompts_file"] = {"path": str(p.resolve()), "size": st.st_size, "mtime": st.st_mtime}
        except OSError:
            record["prompts_file"] = {"path": str(p)}
    if overrides is not None:
        record["overrides"] = list(overrides)
    path = marker_path(output_dir, progress.shard_index, progress.num_shards, kind)
    _check_marker(path)
    write_json_atomic(path, record)
    other = marker_path(output_dir, progress.shard_index, progress.num_shards, "stopped" if kind == "done" else "done")
    try:
        other.unlink()
    except FileNotFoundError:
        pass
    return path


def _check_marker(path: Path) -> None:
    from cosmos_dist.io.safefiles import refuse_symlink, refuse_symlinked_dir

    refuse_symlinked_dir(path.parent, "shard marker folder")
    refuse_symlink(path, "shard marker")


def run_record_path(output_dir, num_shards: int) -> Path:
    """One file per run (a `num_shards`): the Hydra overrides of its newest submission, written when an
    element starts, so `shard_status` knows them before any element has ended (markers come at the end)."""
    return marker_dir(output_dir) / f"run-of-{num_shards:0{_index_width(num_shards)}d}.started.json"


def write_run_record(output_dir, num_shards: int, overrides: list[str]) -> Path:
    from cosmos_dist.io.records import utc_now, write_json_atomic

    path = run_record_path(output_dir, num_shards)
    _check_marker(path)
    write_json_atomic(path, {"schema": MARKER_SCHEMA, "kind": "started", "num_shards": num_shards,
                             "overrides": list(overrides), "time": utc_now(), "host": socket.gethostname(),
                             "slurm": slurm_job_info()})
    return path


def read_run_record(output_dir, num_shards: int) -> dict | None:
    import json

    try:
        rec = json.loads(run_record_path(output_dir, num_shards).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("num_shards") == num_shards else None


def read_shard_markers(output_dir, num_shards: int) -> dict[int, dict]:
    """shard index -> its marker (done or stopped) for markers of this `num_shards`."""
    import json

    found: dict[int, dict] = {}
    d = marker_dir(output_dir)
    if not d.is_dir():
        return found
    for path in d.glob("shard-*-of-*.json"):
        if path.is_symlink():
            continue
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if rec.get("num_shards") == num_shards and isinstance(rec.get("shard_index"), int):
            prev = found.get(rec["shard_index"])
            if prev is None or str(rec.get("time", "")) > str(prev.get("time", "")):
                found[rec["shard_index"]] = rec
    return found


def finish_shard(cfg, work, stopped_by: str | None = None) -> Path | None:
    """For the run loop, on the global leader after the last sample: write this shard's marker.
    Only for prompts-file runs. Never raises (a marker is a convenience, not a result)."""
    if not getattr(cfg, "prompts_file", None):
        return None
    try:
        progress = progress_of_work(work, cfg.output_dir, cfg.num_shards, cfg.shard_index)
        return write_shard_marker(cfg.output_dir, progress, reason=stopped_by, prompts_file=cfg.prompts_file)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not write the shard marker: %s", exc)
        return None


# ---- command line (used by slurm/*.sbatch after the launcher exits) -----------------------------
def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cosmos_dist.pipeline.preemption", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    mark = sub.add_parser("mark", help="write the shard's done / stopped marker; exit 0 finished, 3 pending")
    mark.add_argument("--prompts-file", required=True)
    mark.add_argument("--output-dir", required=True)
    mark.add_argument("--num-shards", type=int, required=True)
    mark.add_argument("--shard-index", type=int, required=True)
    mark.add_argument("--reason", default=None, help="why the run ended early (USR1, TERM, exit code ...)")
    mark.add_argument("--exit-code", type=int, default=None, help="the launcher's exit status")
    mark.add_argument("overrides", nargs="*", help="the Hydra overrides of the run (recorded for resubmission)")
    started = sub.add_parser("started", help="record the run's Hydra overrides as an element starts")
    started.add_argument("--output-dir", required=True)
    started.add_argument("--num-shards", type=int, required=True)
    started.add_argument("overrides", nargs="*", help="the Hydra overrides of the run (recorded for resubmission)")
    args = parser.parse_args(argv)

    if args.command == "started":
        try:
            path = write_run_record(args.output_dir, args.num_shards, args.overrides)
        except CosmosDistError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"recorded the run's overrides -> {path}")
        return 0
    try:
        progress = shard_progress(args.prompts_file, args.output_dir, args.num_shards, args.shard_index,
                                  args.overrides)
        path = write_shard_marker(
            args.output_dir, progress, reason=args.reason or None, prompts_file=args.prompts_file,
            overrides=args.overrides, exit_code=args.exit_code,
        )
    except CosmosDistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = progress.counts()
    nxt = f", next {progress.pending[0]}" if progress.pending else ""
    print(
        f"{shard_tag(args.shard_index, args.num_shards)}: {c['done']}/{c['total']} done, {c['failed']} failed, "
        f"{c['blocked']} blocked, {c['pending']} pending{nxt} -> {path}"
    )
    return 0 if progress.finished else EXIT_PENDING


if __name__ == "__main__":
    sys.exit(_main())
