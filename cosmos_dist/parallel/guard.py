"""No hangs: a failing rank ends the whole job with a message that names it.

`run_guarded(fn, layout, ...)` runs a rank's work. When it raises:

1. the rank prints its traceback (not for `CosmosDistError`, which is the user's to fix) and one
   line `rank R failed: <cause>` on stderr;
2. it records that line in the job's c10d store (first failure wins), best effort;
3. it leaves with `os._exit(exit_code)`: no process-group teardown, which could itself block on
   a dead peer.

Its peers stop in one of three ways, whichever comes first:
- a watchdog thread started by `run_guarded` polls the store and exits the rank with
  `rank P stopping: rank R failed: <cause>` (a few seconds; also reaches ranks stuck in NCCL);
- a collective with the dead rank fails (gloo: connection closed) and `run_guarded` reports it;
- a collective reaches the process-group timeout (the layout's `timeout_s`): the message names
  the timeout. Under NCCL, TORCH_NCCL_ASYNC_ERROR_HANDLING=1 (set by init_layout) aborts.
Under torchrun, the agent also stops the remaining workers once one exits non-zero.

Who failed: every rank's watchdog thread also beats a heartbeat counter in the store and records its host
and pid there. A rank whose collective broke (a closed connection, a timeout) checks the heartbeats before
reporting: a peer whose counter has stopped is the one that died or hung, and the line names it
(`rank 1 failed: its process 4242 on node7 is stopped (SIGSTOP) ...`), not the survivor. A stopped or hung
peer on the same host is then killed, so the job ends now instead of after torchrun's 30 s SIGKILL grace
(a stopped process never handles SIGTERM). A rank stopped because of a peer exits with EXIT_INTERRUPTED:
its sample was not at fault and stays pending.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import traceback
from datetime import timedelta
from typing import Any, Callable

import torch.distributed as dist

from cosmos_dist.errors import EXIT_INTERRUPTED, CosmosDistError

FAILURE_KEY = "cosmos_dist/first_failure"
COUNT_KEY = "cosmos_dist/failure_count"
HEARTBEAT_KEY = "cosmos_dist/heartbeat/{rank}"  # a counter each rank's watchdog adds 1 to every poll
PROCESS_KEY = "cosmos_dist/process/{rank}"  # "host pid" of each rank


def _default_store():
    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


def read_failure(store=None) -> str | None:
    """The first failure recorded by any rank of this job, or None."""
    store = store or _default_store()
    if store is None:
        return None
    try:
        if store.check([FAILURE_KEY]):
            return store.get(FAILURE_KEY).decode("utf-8", "replace")
    except Exception:
        return None
    return None


def record_failure(message: str, store=None) -> bool:
    """Record `message` as the job's first failure unless one is there; True when recorded."""
    store = store or _default_store()
    if store is None:
        return False
    try:
        store.set_timeout(timedelta(seconds=10))  # never block a dying rank for long
    except Exception:
        pass
    try:
        if store.add(COUNT_KEY, 1) == 1:
            store.set(FAILURE_KEY, message)
            return True
    except Exception:
        pass
    return False


def _first_line(text: str, limit: int = 600) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe_exception(exc: BaseException, timeout_s: float | None = None) -> str:
    """`Type: first line of the message`, with a hint when it is a timeout or a lost peer."""
    text = f"{type(exc).__name__}: {_first_line(str(exc))}" if str(exc) else type(exc).__name__
    low = str(exc).lower()
    if "timed out" in low or "timeout" in low or "watchdog" in low:
        limit = f" of {timeout_s:g} s" if timeout_s else ""
        text += (
            f" [a collective waited past the process-group timeout{limit}: a peer rank probably died or "
            f"hung; raise parallel.timeout_s only if the work is just slow]"
        )
    elif "connection closed" in low or "connection reset" in low or "broken pipe" in low or "peer" in low:
        text += " [a peer rank's connection closed: that rank probably failed]"
    return text


def is_peer_symptom(exc: BaseException) -> bool:
    """Whether `exc` looks like a collective that lost a peer (a closed connection, a timeout, a backend error)
    rather than this rank's own failure."""
    if isinstance(exc, dist.DistError):
        return True
    low = str(exc).lower()
    return any(w in low for w in ("timed out", "timeout", "connection closed", "connection reset", "broken pipe",
                                  "peer", "gloo", "nccl"))


def _store_int(store, key: str) -> int | None:
    try:
        return int(store.add(key, 0))
    except Exception:
        return None


def unresponsive_peers(store, world_size: int, me: int, wait_s: float) -> list[int] | None:
    """Ranks whose heartbeat does not move within `wait_s` (dead, stopped or hung); None if the store is gone."""
    keys = {r: HEARTBEAT_KEY.format(rank=r) for r in range(world_size) if r != me}
    first = {r: _store_int(store, k) for r, k in keys.items()}
    if any(v is None for v in first.values()):
        return None
    waiting = set(keys)
    deadline = time.monotonic() + wait_s
    while waiting and time.monotonic() < deadline:
        time.sleep(0.25)
        for r in list(waiting):
            now = _store_int(store, keys[r])
            if now is None:
                return None
            if now != first[r]:
                waiting.discard(r)
    return sorted(waiting)


def _process_of(store, rank: int) -> tuple[str, int] | None:
    try:
        host, pid = store.get(PROCESS_KEY.format(rank=rank)).decode().split()
        return host, int(pid)
    except Exception:
        return None


def _process_state(pid: int) -> str | None:
    """`gone`, `stopped`, or `running` for a process of this host (None when unknown)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"
    except Exception:
        return None
    return {"T": "stopped", "t": "stopped", "Z": "gone", "X": "gone"}.get(state, "running")


def blame_peer(store, rank: int, wait_s: float) -> str:
    """What happened to `rank` (whose heartbeat stopped), as the tail of `rank R failed: ...`; a stopped or hung
    process on this host is killed (see the module doc)."""
    where = _process_of(store, rank)
    if where is None:
        return f"its heartbeat stopped for {wait_s:g} s (the rank died, hung or lost its node)"
    host, pid = where
    if host != socket.gethostname():
        return (f"its heartbeat stopped for {wait_s:g} s (process {pid} on {host} died, hung or lost its node)")
    state = _process_state(pid)
    if state == "gone":
        return f"its process {pid} on {host} is gone (killed or crashed)"
    what = "is stopped (SIGSTOP)" if state == "stopped" else f"stopped responding for {wait_s:g} s (hung)"
    try:
        os.kill(pid, signal.SIGKILL)  # it cannot handle SIGTERM while stopped; the job is ending anyway
        killed = "; killed it so the job ends now"
    except OSError:
        killed = ""
    return f"its process {pid} on {host} {what}{killed}"


class PeerWatchdog:
    """Background thread: exit this process when another rank has recorded a failure."""

    def __init__(self, rank: int, poll_s: float = 2.0, exit_code: int = 1):
        self.rank, self.poll_s, self.exit_code = rank, poll_s, exit_code
        self.store = _default_store()
        self._stop = threading.Event()
        self.reporting = False  # this rank is reporting its own failure: keep beating, never exit it
        self._thread = threading.Thread(target=self._run, name="cosmos-dist-peer-watchdog", daemon=True)

    def start(self) -> "PeerWatchdog":
        if self.store is not None:
            try:
                self.store.set(PROCESS_KEY.format(rank=self.rank), f"{socket.gethostname()} {os.getpid()}")
                self.store.add(HEARTBEAT_KEY.format(rank=self.rank), 1)
            except Exception:
                pass
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.poll_s + 1)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.store.add(HEARTBEAT_KEY.format(rank=self.rank), 1)  # "alive" (see blame_peer)
                if not self.store.check([FAILURE_KEY]):
                    continue
                message = self.store.get(FAILURE_KEY).decode("utf-8", "replace")
            except Exception:
                return  # the store went away (job ending); collectives and timeouts take over
            if self.reporting or message.startswith(f"rank {self.rank} "):
                continue  # our own failure; the main thread is exiting
            _emit(f"rank {self.rank} stopping: {message}")
            os._exit(self.exit_code)


def _emit(line: str) -> None:
    try:
        sys.stdout.flush()
    except Exception:
        pass
    try:
        print(f"[cosmos_dist] {line}", file=sys.stderr, flush=True)
    except Exception:
        pass


def _rank_of(layout: Any) -> int:
    if layout is not None:
        return int(layout.rank)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def fail(exc: BaseException, layout: Any = None, exit_code: int = 1, linger_s: float = 0.0, poll_s: float = 2.0) -> None:
    """Report `exc` as this rank's failure and leave the process now (does not return).

    When another rank has already recorded a failure, this one is a consequence (a closed
    connection, a timeout): it says `rank R stopping: <the first failure>` instead. When `exc` looks
    like a lost peer, the heartbeats name the peer that died or hung (see the module doc)."""
    rank = _rank_of(layout)
    timeout_s = getattr(layout, "timeout_s", None)
    cause = describe_exception(exc, timeout_s)
    earlier = read_failure()
    if earlier and not earlier.startswith(f"rank {rank} "):
        _emit(f"rank {rank} stopping: {earlier} (this rank then saw: {cause})")
        os._exit(EXIT_INTERRUPTED)
    if is_peer_symptom(exc) and _world_size(layout) > 1:
        message = _blame(rank, _world_size(layout), cause, 3 * poll_s + 0.5)
        if message is not None:
            _emit(message if record_failure(message) else f"rank {rank} stopping: {read_failure() or message}")
            if linger_s > 0:
                time.sleep(linger_s)
            os._exit(EXIT_INTERRUPTED)
    if not isinstance(exc, CosmosDistError):
        try:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        except Exception:
            pass
    message = f"rank {rank} failed: {cause}"
    _emit(message)
    record_failure(message)
    if linger_s > 0:
        time.sleep(linger_s)  # let peers read the store before a store-hosting rank goes away
    os._exit(exit_code)


def _world_size(layout: Any) -> int:
    if layout is not None and getattr(layout, "world_size", None):
        return int(layout.world_size)
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _blame(rank: int, world_size: int, cause: str, wait_s: float) -> str | None:
    """`rank P failed: ... (rank R saw: cause)` for the peer(s) whose heartbeat stopped, or None when every
    peer is alive (then this rank's own error is the news)."""
    store = _default_store()
    peers = unresponsive_peers(store, world_size, rank, wait_s) if store is not None else None
    if peers is None:
        # The store is gone. Outside torchrun rank 0 hosts it, so rank 0 is the one that went away.
        if rank != 0 and "TORCHELASTIC_RUN_ID" not in os.environ:
            return f"rank 0 failed: its process is gone (the job's store, which it hosted, is unreachable) (rank {rank} saw: {cause})"
        return None
    if not peers:
        return None
    parts = [f"rank {p} failed: {blame_peer(store, p, wait_s)}" for p in peers[:4]]
    return "; ".join(parts) + f" (rank {rank} saw: {cause})"


def run_guarded(
    fn: Callable,
    layout: Any = None,
    *args,
    exit_code: int = 1,
    watch_peers: bool = True,
    poll_s: float = 2.0,
    **kwargs,
) -> Any:
    """Run `fn(*args, **kwargs)` on this rank; any exception ends the process (see module doc).

    Returns fn's result on success. A `SystemExit` with code 0/None passes through."""
    rank = _rank_of(layout)
    watchdog = PeerWatchdog(rank, poll_s, exit_code).start() if watch_peers else None
    try:
        return fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - every failure must end the job, not hang it
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        if watchdog is not None:
            # This thread reports from here on; the heartbeat goes on, so that peers judging who died while
            # this rank is reporting do not count it.
            watchdog.reporting = True
        REPORTING.set()
        if isinstance(exc, KeyboardInterrupt):
            fail(exc, layout, EXIT_INTERRUPTED)
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else exit_code
        if isinstance(getattr(exc, "exit_code", None), int):  # an error with its own code (ShardBusy: 4)
            code = exc.exit_code
        fail(exc, layout, code, _linger(rank, poll_s), poll_s)
    finally:
        if watchdog is not None:
            watchdog.stop()


#: Set while this rank reports its own failure (run_guarded), so a SIGTERM does not cut the report short.
REPORTING = threading.Event()


def job_is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def stop_on_term(poll_s: float = 2.0, before_exit=None) -> None:
    """SIGTERM from the launcher (see preemption.StopFlag): leave now with one line, naming a peer that died or
    hung when there is one (torchrun sends SIGTERM because a worker ended), after `before_exit()` (the pipeline
    waits there for its video writes). Does not return."""
    if REPORTING.is_set():  # the main thread is reporting already and exits when done
        time.sleep(60)
        os._exit(EXIT_INTERRUPTED)
    REPORTING.set()
    rank = _rank_of(None)
    earlier = read_failure()
    message = None if earlier else _blame(rank, _world_size(None), "SIGTERM from the launcher", 3 * poll_s + 0.5)
    if earlier:
        _emit(f"rank {rank} stopping: {earlier} (then SIGTERM from the launcher)")
    elif message:
        _emit(message if record_failure(message) else f"rank {rank} stopping: {read_failure() or message}")
    else:
        _emit(f"rank {rank} stopping: SIGTERM from the launcher; the sample in progress stays pending")
    try:
        if before_exit is not None:
            before_exit()
    finally:
        os._exit(EXIT_INTERRUPTED)


def _linger(rank: int, poll_s: float) -> float:
    """Rank 0 hosts the c10d store outside torchrun; give peers time to read its failure."""
    if rank == 0 and "TORCHELASTIC_RUN_ID" not in os.environ and dist.is_available() and dist.is_initialized():
        return min(2 * poll_s + 0.5, 6.0)
    return 0.0
