"""Guardrails: a text check before anything else and a video check + face blur after decoding.

Providers (cfg.guardrail.provider): `cosmos` (NVIDIA's cosmos-guardrail package, the default with guardrail=on)
and `keyword` (a word list; tests and the tiny models). See base.py for the interface and the failure rules.
"""
from cosmos_dist.guardrails.base import (
    INSTALL_HINT,
    GuardrailError,
    GuardrailProvider,
    GuardrailUnavailable,
    Verdict,
)
from cosmos_dist.guardrails.stage import (
    check_available,
    guardrail_record,
    load_provider,
    run_text_check,
    run_video_stage,
)

__all__ = [
    "INSTALL_HINT",
    "GuardrailError",
    "GuardrailProvider",
    "GuardrailUnavailable",
    "Verdict",
    "check_available",
    "guardrail_record",
    "load_provider",
    "run_text_check",
    "run_video_stage",
]
