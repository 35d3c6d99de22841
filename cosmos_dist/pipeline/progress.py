"""Progress where it is read: tqdm bars on a terminal, log lines in a redirected log (every Slurm job).

A bar in a log file is escape-code noise, and a silent log is minutes without a sign of life per 7B video. So on
a terminal the global leader shows bars (samples, and steps within a sample); elsewhere it logs one line per
sample every `progress_every_s` seconds (a config key, default 30; and at the last step): step, sigma, elapsed, ETA.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Optional

log = logging.getLogger("cosmos_dist")

#: seconds between two progress lines of one sample in a non-terminal log
PROGRESS_EVERY_S = 30.0


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def on_terminal() -> bool:
    return sys.stderr.isatty()


def progress_bar(total: int, unit: str, enabled: bool, leave: bool = True):
    if not enabled or not on_terminal():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit=unit.rstrip("s"), desc=unit, leave=leave, dynamic_ncols=True)


class StepReporter:
    """The sampler's per-step callback: a step bar (terminal) or periodic log lines (logs) on the global leader,
    and the API caller's `callback(sample_id, step, total, latent)` on every rank that has one."""

    def __init__(self, sample_id: str, cfg, is_global_leader: bool, callback: Optional[Callable] = None,
                 every_s: Optional[float] = None):
        from cosmos_dist.pipeline.denoiser import sampler_settings

        self.sample_id = sample_id
        self.callback = callback
        self.report = bool(cfg.progress) and is_global_leader
        self.sigmas = sampler_settings(cfg).sigmas().tolist()
        self.every_s = float(cfg.get("progress_every_s", PROGRESS_EVERY_S)) if every_s is None else every_s
        self.t0 = self.last = time.perf_counter()
        self.bar = progress_bar(len(self.sigmas) - 1, "steps", self.report, leave=False) if self.report else _NoBar()
        self.log_lines = self.report and not on_terminal()

    def __call__(self, step: int, total: int, latent) -> None:
        self.bar.update(1)
        if self.log_lines:
            now = time.perf_counter()
            if now - self.last >= self.every_s or step + 1 == total:
                self.last = now
                elapsed = now - self.t0
                eta = elapsed / (step + 1) * (total - step - 1)
                sigma = self.sigmas[min(step, len(self.sigmas) - 1)]
                log.info("sample %s: step %d/%d sigma %.4g, %.0f s elapsed, ETA %.0f s", self.sample_id, step + 1,
                         total, sigma, elapsed, eta)
        if self.callback is not None:
            self.callback(self.sample_id, step, total, latent)

    def close(self) -> None:
        self.bar.close()
