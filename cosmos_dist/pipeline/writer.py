"""Writing a finished sample's files (mp4 encode, latent, sidecar) on a background thread, so the GPU goes on to
the next sample while x264 encodes this one.

One worker thread, a bounded queue: `submit` blocks while `depth` writes are already waiting, so at most
`depth` decoded videos (about 330 MB each at 121 x 704 x 1280) are held in memory beside the one being sampled.
`depth=0` writes inline, in `submit` itself (the order of events is then exactly that of the loop).

The writes keep their guarantees because the worker only calls `outputs.write_sample_files` (hidden temporaries,
renames, the sidecar last): a killed process leaves nothing under a final name, and the sample is made again
by the next run. The `done` manifest line is appended by the write itself, right after the sidecar (a locked
append of one whole line), so a job killed later never leaves a written sample without it. The run summary and
the failures are the pipeline's own thread's: it collects finished writes with `finished()` (between samples)
and `drain()` (before the run ends), and records each as done, or as `failed` with the writer's error.
"""
from __future__ import annotations

import time
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional


_LIVE: "weakref.WeakSet[SampleWriter]" = weakref.WeakSet()  # background writers of this process


@dataclass
class WriteResult:
    sample: Any  # results.Sample
    path: Optional[Path]  # the mp4, when the write succeeded
    error: Optional[BaseException]  # why it did not


class SampleWriter:
    """Runs `submit`ted writes on one background thread (`depth` > 0) or inline (`depth` == 0)."""

    def __init__(self, depth: int):
        if depth < 0:
            raise ValueError(f"writer queue depth must be >= 0; got {depth}")
        self.depth = int(depth)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cosmos-writer") if self.depth else None
        self._queued: deque[tuple[Any, Future]] = deque()
        self._done: list[WriteResult] = []
        if self._pool is not None:
            _LIVE.add(self)

    def submit(self, sample, write: Callable[[], Path]) -> None:
        """Write `sample`'s files with `write()` (which returns the mp4 path). Blocks while the queue is full."""
        if self._pool is None:
            self._done.append(_run(sample, write))
            return
        while len(self._queued) >= self.depth:  # back-pressure: wait for the oldest queued write
            self._collect(self._queued.popleft())
        self._queued.append((sample, self._pool.submit(write)))

    def finished(self) -> list[WriteResult]:
        """The writes that ended since the last call, in submission order; never waits."""
        while self._queued and self._queued[0][1].done():
            self._collect(self._queued.popleft())
        out, self._done = self._done, []
        return out

    def drain(self) -> list[WriteResult]:
        """Wait for every queued write; returns those not yet returned by `finished`."""
        while self._queued:
            self._collect(self._queued.popleft())
        return self.finished()

    def pending(self) -> int:
        return len(self._queued)

    def close(self) -> list[WriteResult]:
        """Drain, then stop the worker thread."""
        results = self.drain()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        return results

    def _collect(self, entry: tuple[Any, Future]) -> None:
        sample, future = entry
        try:
            self._done.append(WriteResult(sample, future.result(), None))
        except BaseException as exc:  # noqa: BLE001 - a write's error is its sample's failure
            self._done.append(WriteResult(sample, None, exc))


def _run(sample, write: Callable[[], Path]) -> WriteResult:
    try:
        return WriteResult(sample, write(), None)
    except Exception as exc:  # noqa: BLE001 - a write's error is its sample's failure
        return WriteResult(sample, None, exc)


def finish_live_writes(deadline: float) -> int:
    """For a process about to end on SIGTERM (preemption's watcher thread, while the main thread may be stuck in a
    collective): wait until `deadline` (time.monotonic()) for the writes already submitted, so a sample that was
    sampled and decoded is not made again. Each write appends its own `done` line; this only waits. Returns how
    many of the writes still running at the call finished."""
    # list() of a deque runs under the GIL in one C call, so the main thread cannot change it midway
    running = [future for writer in list(_LIVE) for _, future in list(writer._queued) if not future.done()]
    if not running:
        return 0
    finished, _ = wait(running, timeout=max(0.0, deadline - time.monotonic()))
    return len(finished)
