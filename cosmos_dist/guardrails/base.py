"""The guardrail provider interface and the errors around it.

A provider answers three questions, on the replica leader only:

    check_text(prompt)      -> Verdict   before anything else touches the prompt (and again on an upsampled one)
    check_video(frames)     -> Verdict   on the decoded uint8 frames (F, H, W, 3)
    blur_faces(frames)      -> frames    the face pixelation applied to every video that passed

`Verdict(ok=False, reason=...)` blocks the sample: no video is written, the manifest gets `blocked` with the
reason, and the run goes on. An exception inside a provider is never a pass (the reference treats Aegis errors
and per-frame classifier errors as safe): the guardrail stage turns it into `GuardrailError`, the sample is
recorded as `failed` with the error, and the run goes on.

`modules()` lists the provider's torch modules, so the residency manager can keep them in pinned CPU memory
between stages (offload=guardrails and beyond). `describe()` goes into every sidecar.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cosmos_dist.errors import CosmosDistError

INSTALL_HINT = (
    "pip install 'cosmos-dist[guardrail]' (NVIDIA's cosmos-guardrail package), or pass guardrail=off "
    "(recorded in every sidecar)"
)


class GuardrailError(CosmosDistError):
    """A guardrail model failed on a sample (the sample fails; it is never passed unchecked)."""


class GuardrailUnavailable(CosmosDistError):
    """The configured provider cannot be loaded (missing package, missing weights)."""


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str | None = None

    @classmethod
    def passed(cls) -> "Verdict":
        return cls(True, None)

    @classmethod
    def blocked(cls, reason: str) -> "Verdict":
        return cls(False, reason or "blocked")


@runtime_checkable
class GuardrailProvider(Protocol):
    name: str

    def check_text(self, prompt: str) -> Verdict: ...

    def check_video(self, frames: np.ndarray) -> Verdict: ...

    def blur_faces(self, frames: np.ndarray) -> np.ndarray: ...

    def modules(self) -> list: ...

    def describe(self) -> dict[str, Any]: ...


def check_frames(frames: Any) -> np.ndarray:
    """The frames a provider receives: a uint8 numpy array (F, H, W, 3)."""
    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"guardrail frames must be uint8 (F, H, W, 3); got {arr.dtype} {tuple(arr.shape)}")
    return arr
