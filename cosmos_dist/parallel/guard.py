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
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from datetime import timedelta
from typing import Any, Callable

import torch.distributed as dist

from cosmos_dist.errors import CosmosDistError

FAILURE_KEY = "cosmos_dist/first_failure"
COUNT_KEY = "cosmos_dist/failure_count"


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


class PeerWatchdog:
    """Background thread: exit this process when another rank has recorded a failure."""

    def __init__(self, rank: int, poll_s: float = 2.0, exit_code: int = 1):
        self.rank, self.poll_s, self.exit_code = rank, poll_s, exit_code
        self.store = _default_store()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cosmos-dist-peer-watchdog", daemon=True)

    def start(self) -> "PeerWatchdog":
        if self.store is not None:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.poll_s + 1)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                if not self.store.check([FAILURE_KEY]):
                    continue
                message = self.store.get(FAILURE_KEY).decode("utf-8", "replace")
            except Exception:
                return  # the store went away (job ending); collectives and timeouts take over
            if message.startswith(f"rank {self.rank} "):
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


def fail(exc: BaseException, layout: Any = None, exit_code: int = 1, linger_s: float = 0.0) -> None:
    """Report `exc` as this rank's failure and leave the process now (does not return).

    When another rank has already recorded a failure, this one is a consequence (a closed
    connection, a timeout): it says `rank R stopping: <the first failure>` instead."""
    rank = _rank_of(layout)
    timeout_s = getattr(layout, "timeout_s", None)
    cause = describe_exception(exc, timeout_s)
    earlier = read_failure()
    if earlier and not earlier.startswith(f"rank {rank} "):
        _emit(f"rank {rank} stopping: {earlier} (this rank then saw: {cause})")
        os._exit(exit_code)
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
            watchdog.stop()  # this thread reports from here on
        if isinstance(exc, KeyboardInterrupt):
            fail(exc, layout, 130)
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else exit_code
        fail(exc, layout, code, _linger(rank, poll_s))
    finally:
        if watchdog is not None:
            watchdog.stop()


def _linger(rank: int, poll_s: float) -> float:
    """Rank 0 hosts the c10d store outside torchrun; give peers time to read its failure."""
    if rank == 0 and "TORCHELASTIC_RUN_ID" not in os.environ and dist.is_available() and dist.is_initialized():
        return min(2 * poll_s + 0.5, 6.0)
    return 0.0
