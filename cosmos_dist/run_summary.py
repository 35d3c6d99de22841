"""The run's closing summary over every data-parallel replica, printed once (by global rank 0).

Each rank's pipeline returns what it saw (its replica's samples); under torchrun the CLI gathers them
over the world with one `all_gather_object` after the run and before the process groups close, so
"3 done" counts the videos of every replica, not only rank 0's. Ranks of one replica report the same
samples: the union by sample id counts each once.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("cosmos_dist")

#: a failure reason's kind is its text before the first ": " when that is at most this long
REASON_KIND_LEN = 60


@dataclass
class JobSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # failed sample id (or "line N") -> reason
    stopped_by: str | None = None
    is_leader: bool = True  # this process prints the summary

    def failures_by_reason(self) -> list[tuple[str, int]]:
        counts = Counter(reason_kind(self.reasons.get(sid, "reason not recorded")) for sid in self.failed)
        return counts.most_common()


def reason_kind(reason: str) -> str:
    """`prompt is too long` from `prompt is too long: 612 words ...`: what groups failures in the summary."""
    head = str(reason).split(": ", 1)[0].strip()
    return head if len(head) <= REASON_KIND_LEN else head[:REASON_KIND_LEN] + "..."


def _as_dict(summary: Any) -> dict:
    return {
        "done": list(getattr(summary, "done", [])),
        "skipped": list(getattr(summary, "skipped", [])),
        "failed": list(getattr(summary, "failed", [])),
        "blocked": list(getattr(summary, "blocked", [])),
        "reasons": dict(getattr(summary, "reasons", None) or {}),
        "stopped_by": getattr(summary, "stopped_by", None),
    }


def _union(parts: list[list[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for part in parts:
        for sid in part:
            seen.setdefault(sid, None)
    return list(seen)


def merge(parts: list[dict], is_leader: bool = True) -> JobSummary:
    """One JobSummary from the per-rank dicts; a sample that is done anywhere is not also counted failed."""
    merged = JobSummary(is_leader=is_leader)
    for key in ("done", "skipped", "blocked", "failed"):
        setattr(merged, key, _union([p[key] for p in parts]))
    finished = set(merged.done) | set(merged.blocked)
    merged.failed = [sid for sid in merged.failed if sid not in finished]
    for p in parts:
        for sid, reason in p["reasons"].items():
            merged.reasons.setdefault(sid, reason)
    merged.stopped_by = next((p["stopped_by"] for p in parts if p["stopped_by"]), None)
    return merged


def gather_summary(summary: Any) -> JobSummary:
    """The pipeline's RunSummary of this rank merged with every other rank's (a collective under torchrun:
    every rank must call it)."""
    import torch.distributed as dist

    mine = _as_dict(summary)
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
