"""The run's closing summary over every data-parallel replica, printed once (by global rank 0).

Each rank's pipeline returns what it saw (pipeline/results.py: RunSummary, its replica's samples); under
torchrun the CLI gathers them over the world with one `all_gather_object` after the run and before the
process groups close, so "3 done" counts the videos of every replica, not only rank 0's. The replica
leaders' reports are the ones merged: a leader writes its replica's files and manifest lines, so its word
on a sample is final, and each sample belongs to exactly one replica (bad prompts-file lines, which every
rank reads, are counted by the global leader only: pipeline/base.py).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("cosmos_dist")


@dataclass
class JobSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)  # failures by kind of reason (RunSummary.reasons)
    stopped_by: str | None = None
    is_leader: bool = True  # this process prints the summary

    def failures_by_reason(self) -> list[tuple[str, int]]:
        counts = Counter(self.reasons)
        unaccounted = len(self.failed) - sum(counts.values())
        if unaccounted > 0:
            counts["reason not recorded"] += unaccounted
        return counts.most_common()


def _as_dict(summary: Any, is_replica_leader: bool) -> dict:
    return {
        "replica_leader": bool(is_replica_leader),
        "done": list(getattr(summary, "done", [])),
        "skipped": list(getattr(summary, "skipped", [])),
        "failed": list(getattr(summary, "failed", [])),
        "blocked": list(getattr(summary, "blocked", [])),
        "reasons": dict(getattr(summary, "reasons", None) or {}),  # kind -> count
        "stopped_by": getattr(summary, "stopped_by", None),
    }


def _union(parts: list[list[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for part in parts:
        for sid in part:
            seen.setdefault(sid, None)
    return list(seen)


def merge(parts: list[dict], is_leader: bool = True) -> JobSummary:
    """One JobSummary from the per-rank dicts: the replica leaders' reports (the union of their sample ids,
    the sum of their reason counts); a stop seen by any rank counts."""
    merged = JobSummary(is_leader=is_leader)
    leaders = [p for p in parts if p["replica_leader"]] or parts
    for key in ("done", "skipped", "blocked", "failed"):
        setattr(merged, key, _union([p[key] for p in leaders]))
    for p in leaders:
        merged.reasons.update(p["reasons"])
    merged.stopped_by = next((p["stopped_by"] for p in parts if p["stopped_by"]), None)
    return merged


def gather_summary(summary: Any, is_replica_leader: bool = True) -> JobSummary:
    """The pipeline's RunSummary of this rank merged with every other rank's (a collective under torchrun:
    every rank must call it). `is_replica_leader`: the runtime's, whether this rank's report is final."""
    import torch.distributed as dist

    mine = _as_dict(summary, is_replica_leader)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, mine)
        return merge(parts, is_leader=dist.get_rank() == 0)
    return merge([mine])


def log_summary(summary: JobSummary, output_dir: Any) -> None:
    blocked = f", {len(summary.blocked)} blocked by the guardrails (no video; not a failure)" if summary.blocked else ""
    stopped = f"; stopped early ({summary.stopped_by}): a rerun continues" if summary.stopped_by else ""
    log.info("%d done, %d skipped, %d failed%s -> %s%s", len(summary.done), len(summary.skipped),
             len(summary.failed), blocked, output_dir, stopped)
    if summary.failed:
        by_reason = "; ".join(f"{n} x {kind}" for kind, n in summary.failures_by_reason())
        log.error("failed: %s (%s; every reason in %s/manifest.jsonl)", ", ".join(summary.failed[:10])
                  + (", ..." if len(summary.failed) > 10 else ""), by_reason, output_dir)
