"""Who is running a shard: a lease file with a heartbeat, so a second copy refuses to start.

`{output_dir}/.shards/shard-XXXX-of-YYYY.lease` (or `{output_dir}/.{sample id}.lease` for a `prompt=` run) is
created with `O_CREAT | O_EXCL`, which every shared filesystem honours (NFS, Lustre, GPFS), unlike
`flock` (Lustre mounted `noflock` answers ENOSYS). Its holder touches it every `heartbeat_s`; it is
live while it was touched within `stale_after_s` (recorded in the file, so readers use the holder's
setting) and, on the holder's own host, while the holder's process exists. A lease that is not live
is taken over: renamed away (one contender wins the rename) and created anew.

A run takes the lease on its global leader before any model file is made or loaded
(`WorldPipeline.prepare`; `run` gives it back when it ends). The batch scripts take none themselves: a
requeued Slurm job finds its own earlier lease (same job id) and takes it over at once.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path

from cosmos_dist.errors import EXIT_SHARD_BUSY, CosmosDistError

log = logging.getLogger("cosmos_dist")

HEARTBEAT_ENV = "COSMOS_LEASE_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 20.0
STALE_FACTOR = 6  # a lease not touched for 6 heartbeats is a dead holder's


class ShardBusy(CosmosDistError):
    """The shard is being run by another live process; the message names it."""

    exit_code = EXIT_SHARD_BUSY


def heartbeat_seconds() -> float:
    try:
        value = float(os.environ.get(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S))
    except ValueError:
        value = DEFAULT_HEARTBEAT_S
    return max(value, 0.05)


def _job_ref() -> str | None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def read_lease(path: str | os.PathLike) -> dict | None:
    """The lease record with `age_s` (since the last heartbeat) and `live` added; None when there is none."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        age = time.time() - os.fstat(fd).st_mtime
        with os.fdopen(fd, "rb") as f:
            fd = -1
            raw = f.read(65536)
    finally:
        if fd >= 0:
            os.close(fd)
    try:
        rec = json.loads(raw)
    except ValueError:
        rec = None
    if not isinstance(rec, dict):  # a holder killed while writing it: judge by age alone
        rec = {}
    rec["age_s"] = round(age, 1)
    stale = float(rec.get("stale_after_s") or DEFAULT_HEARTBEAT_S * STALE_FACTOR)
    live = age <= stale
    if live and rec.get("host") == socket.gethostname() and isinstance(rec.get("pid"), int):
        live = _pid_alive(rec["pid"])
    rec["live"] = live
    return rec


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_holder(rec: dict) -> str:
    job = f", job {rec['job']}" if rec.get("job") else ""
    return f"{rec.get('host', '?')} pid {rec.get('pid', '?')}{job}, heartbeat {rec.get('age_s', '?')} s ago"


class ShardLease:
    """The lease at `path`. `acquire()` raises ShardBusy when a live holder has it; then the heartbeat keeps it."""

    def __init__(self, path: str | os.PathLike, *, what: str, heartbeat_s: float | None = None):
        self.path = Path(path)
        self.what = what
        self.heartbeat_s = heartbeat_s or heartbeat_seconds()
        self.token = secrets.token_hex(8)  # tells our own lease from a newer holder's
        self.pid = os.getpid()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def _record(self) -> bytes:
        rec = {"token": self.token, "host": socket.gethostname(), "pid": self.pid, "job": _job_ref(),
               "started": time.time(), "heartbeat_s": self.heartbeat_s,
               "stale_after_s": self.heartbeat_s * STALE_FACTOR, "what": self.what}
        return json.dumps(rec).encode("utf-8") + b"\n"

    def _create(self) -> bool:
        from cosmos_dist.io.safefiles import open_new, unlink_quietly, write_all

        try:
            fd = open_new(self.path)
        except FileExistsError:
            return False
        try:
            write_all(fd, self._record())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            unlink_quietly(self.path)
            raise
        os.close(fd)
        return True

    def _take_over(self, stale: dict) -> None:
        """Move a dead holder's lease aside; a contender that moved a live one by accident puts it back."""
        aside = self.path.with_name(f".{self.path.name}.stale-{secrets.token_hex(4)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another contender moved it first
        moved = read_lease(aside) or {}
        if moved.get("token") != stale.get("token") and moved.get("live"):
            try:
                os.link(aside, self.path)  # fails if a third contender created one meanwhile
            except OSError:
                pass
        os.unlink(aside)
        log.warning("%s: took over the lease of a holder that stopped (%s)", self.what, describe_holder(stale))

    def acquire(self) -> "ShardLease":
        """Take the lease and keep it with a heartbeat thread until `release` (also called at exit)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(8):
            if self._create() or (read_lease(self.path) or {}).get("token") == self.token:
                self.held = True
                self._start_heartbeat()
                atexit.register(self.release)
                return self
            rec = read_lease(self.path)
            if rec is None:
                continue  # removed between our create and our read: try again
            # A requeued Slurm job is the only instance of itself: its earlier run is over.
            same_job = rec.get("job") and rec.get("job") == _job_ref() and rec.get("pid") != self.pid
            if rec["live"] and not same_job:
                raise ShardBusy(
                    f"{self.what} is already running ({describe_holder(rec)}; lease {self.path}): a second copy would "
                    f"make the same samples. Wait for it, or if that process is gone, wait "
                    f"{rec.get('stale_after_s', '?')} s after its last heartbeat or delete the lease"
                )
            self._take_over(rec)
        raise ShardBusy(f"{self.what}: could not take the lease {self.path} (other processes keep taking it)")

    def _start_heartbeat(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._beat, name="shard-lease-heartbeat", daemon=True)
        self._thread.start()

    def beat_once(self) -> bool:
        """Touch the lease if it is still ours; False when it was taken (logged)."""
        rec = read_lease(self.path)
        if rec is None or rec.get("token") != self.token:
            log.error("%s: the lease %s was taken by %s; this run no longer holds it", self.what, self.path,
                      describe_holder(rec) if rec else "nobody (deleted)")
            return False
        try:
            os.utime(self.path, follow_symlinks=False)
        except OSError as exc:
            log.warning("%s: could not refresh the lease %s: %s", self.what, self.path, exc)
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.beat_once():
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self.held:
            self.held = False
            rec = read_lease(self.path)
            if rec is not None and rec.get("token") == self.token:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass

    def __enter__(self) -> "ShardLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---- where leases are, and the run's claim ------------------------------------------------------
def shard_lease_path(output_dir, shard_index: int, num_shards: int) -> Path:
    from cosmos_dist.pipeline.preemption import marker_dir, shard_tag

    return marker_dir(output_dir) / f"{shard_tag(shard_index, num_shards)}.lease"


def run_lease(cfg, sample_ids=()) -> ShardLease:
    """The lease of a run: its shard's for a prompts file, else its one sample's (a `prompt=` run)."""
    from cosmos_dist.pipeline.preemption import shard_tag

    if getattr(cfg, "prompts_file", None):
        tag = shard_tag(int(cfg.shard_index), int(cfg.num_shards))
        return ShardLease(shard_lease_path(cfg.output_dir, cfg.shard_index, cfg.num_shards),
                          what=f"{tag} of {cfg.output_dir}")
    sid = next(iter(sample_ids), "prompt")
    return ShardLease(prompt_lease_path(cfg.output_dir, sid), what=f"sample {sid} in {cfg.output_dir}")


def prompt_lease_path(output_dir, sample_id: str) -> Path:
    """A `prompt=` run's lease: hidden, next to its files, gone when the run ends (no `.shards` folder for it)."""
    return Path(output_dir) / f".{sample_id}.lease"


def claim_run(cfg, sample_ids=()) -> ShardLease:
    """On the global leader before any model loads: hold the run's lease, or raise ShardBusy."""
    return run_lease(cfg, sample_ids).acquire()
