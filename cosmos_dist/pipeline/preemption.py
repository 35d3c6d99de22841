"""Stop requests: a signal (Slurm's warning before the time limit, SIGTERM on preemption) asks the
run to stop between samples; the sample in progress is finished or abandoned cleanly."""
from __future__ import annotations

import logging
import signal

log = logging.getLogger("cosmos_dist")


class StopFlag:
    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None

    def _handler(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.warning("received %s: stopping after the current sample", self.signal_name)

    @classmethod
    def install(cls, signals=(signal.SIGUSR1, signal.SIGTERM)) -> "StopFlag":
        flag = cls()
        for sig in signals:
            try:
                signal.signal(sig, flag._handler)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        return flag
