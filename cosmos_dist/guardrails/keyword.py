"""A small, real guardrail provider: a word list for prompts and a brightness window for videos.

It implements the provider interface with no model at all, so the guardrail stages (ordering, blocking, the
manifest, offloading) run for real in tests and on the tiny random models. It is NOT a safety filter: use
NVIDIA's (guardrail=on, provider cosmos) for real generation.

Text: blocked when a blocklist entry occurs as whole words, case-insensitive, whitespace-normalised ("red ball"
matches "A RED  ball!" but not "redball"); an empty prompt is blocked too (as the reference's blocklist does).
Video: with `video_mean_range=(lo, hi)`, blocked when the mean pixel value of the whole clip is outside it.
Face blur: none (it detects no faces); the frames are returned unchanged.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

import numpy as np

from cosmos_dist.guardrails.base import Verdict, check_frames


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


class KeywordGuardrail:
    name = "keyword"

    def __init__(self, blocklist: Iterable[str] = (), video_mean_range: Sequence[float] | None = None):
        words = [_normalise(str(w)) for w in blocklist]
        self.blocklist = [w for w in words if w]
        self._patterns = [(w, re.compile(r"(?<!\w)" + re.escape(w).replace(r"\ ", r"\s+") + r"(?!\w)", re.I))
                          for w in self.blocklist]
        self.video_mean_range = None if video_mean_range is None else (float(video_mean_range[0]), float(video_mean_range[1]))

    def check_text(self, prompt: str) -> Verdict:
        if not isinstance(prompt, str) or not prompt.strip():
            return Verdict.blocked("keyword: the prompt is empty")
        for word, pattern in self._patterns:
            if pattern.search(prompt):
                return Verdict.blocked(f"keyword: the prompt contains the blocked word {word!r}")
        return Verdict.passed()

    def check_video(self, frames: np.ndarray) -> Verdict:
        arr = check_frames(frames)
        if self.video_mean_range is not None:
            lo, hi = self.video_mean_range
            mean = float(arr.mean(dtype=np.float64))
            if not lo <= mean <= hi:
                return Verdict.blocked(f"keyword: the video's mean pixel value {mean:.1f} is outside [{lo:g}, {hi:g}]")
        return Verdict.passed()

    def blur_faces(self, frames: np.ndarray) -> np.ndarray:
        return check_frames(frames)

    def modules(self) -> list:
        return []

    def describe(self) -> dict[str, Any]:
        return {"provider": self.name, "face_blur": False, "blocklist": list(self.blocklist),
                "video_mean_range": None if self.video_mean_range is None else list(self.video_mean_range)}
