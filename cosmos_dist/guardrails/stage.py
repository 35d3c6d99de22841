"""The guardrail stages as the pipeline calls them (replica leader only).

* `check_available(cfg)`: before any model loads, on every rank: the configured provider can be built
  (for `cosmos`, the package is importable), else a ConfigError that says how to fix it.
* `load_provider(cfg)`: the provider object, or None with guardrail=off.
* `run_text_check(provider, prompt, what)`: a Verdict; any exception in the provider becomes GuardrailError.
* `run_video_stage(provider, frames)`: (Verdict, frames): the content check, then (if it passed) the face blur.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from cosmos_dist.errors import ConfigError
from cosmos_dist.guardrails.base import INSTALL_HINT, GuardrailError, GuardrailUnavailable, Verdict


def _gcfg(cfg):
    return cfg.get("guardrail") if hasattr(cfg, "get") else getattr(cfg, "guardrail", None)


def enabled(cfg) -> bool:
    g = _gcfg(cfg)
    return bool(g is not None and g.enabled)


def check_available(cfg) -> None:
    if not enabled(cfg):
        return
    g = _gcfg(cfg)
    if g.provider == "cosmos":
        from cosmos_dist.guardrails.cosmos import package_available

        if not package_available():
            raise ConfigError(
                "guardrail: guardrails are on (the default) with NVIDIA's provider, but the cosmos-guardrail package "
                f"is not installed: {INSTALL_HINT}"
            )


def load_provider(cfg):
    if not enabled(cfg):
        return None
    g = _gcfg(cfg)
    if g.provider == "keyword":
        from cosmos_dist.guardrails.keyword import KeywordGuardrail

        rng = g.get("video_mean_range") if hasattr(g, "get") else getattr(g, "video_mean_range", None)
        return KeywordGuardrail(list(g.blocklist or []), None if rng is None else list(rng))
    if g.provider == "cosmos":
        from cosmos_dist.guardrails.cosmos import CosmosGuardrail

        try:
            return CosmosGuardrail.load(g.get("checkpoint_id") if hasattr(g, "get") else g.checkpoint_id)
        except GuardrailUnavailable as exc:
            raise ConfigError(f"guardrail: {exc}") from None
    raise ConfigError(f"guardrail.provider: {g.provider!r}; choose cosmos or keyword, or guardrail=off")


def guardrail_record(cfg, provider) -> dict[str, Any]:
    """What the sidecar says about the guardrails of a run."""
    if provider is None:
        return {"enabled": False, "note": "guardrail=off: no text or video check, no face blur"}
    return {"enabled": True, **provider.describe()}


def _fail(provider, what: str, exc: BaseException) -> GuardrailError:
    if isinstance(exc, GuardrailError):
        return exc
    return GuardrailError(f"{what} guardrail ({getattr(provider, 'name', provider)}) failed: {type(exc).__name__}: {exc}")


def run_text_check(provider, prompt: str, what: str = "prompt") -> Verdict:
    try:
        verdict = provider.check_text(prompt)
    except Exception as exc:  # never a pass: the sample fails
        raise _fail(provider, "text", exc) from exc
    if not isinstance(verdict, Verdict):
        raise GuardrailError(f"text guardrail ({provider.name}) returned {type(verdict).__name__}, not a Verdict")
    if not verdict.ok:
        return Verdict.blocked(f"text guardrail on the {what}: {verdict.reason}")
    return verdict


def run_video_stage(provider, frames: np.ndarray) -> tuple[Verdict, np.ndarray | None]:
    try:
        verdict = provider.check_video(frames)
    except Exception as exc:
        raise _fail(provider, "video", exc) from exc
    if not isinstance(verdict, Verdict):
        raise GuardrailError(f"video guardrail ({provider.name}) returned {type(verdict).__name__}, not a Verdict")
    if not verdict.ok:
        return Verdict.blocked(f"video guardrail: {verdict.reason}"), None
    try:
        out = provider.blur_faces(frames)
    except Exception as exc:
        raise _fail(provider, "face blur", exc) from exc
    out = np.asarray(out)
    if out.shape != np.asarray(frames).shape or out.dtype != np.uint8:
        raise GuardrailError(f"face blur ({provider.name}) returned {out.dtype} {out.shape}; expected uint8 {frames.shape}")
    return verdict, out
