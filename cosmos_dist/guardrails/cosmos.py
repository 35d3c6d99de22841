"""NVIDIA's guardrails through the `cosmos-guardrail` package (optional extra: pip install 'cosmos-dist[guardrail]').

UNVERIFIED AGAINST REAL WEIGHTS: this adapter was written from the source of cosmos-guardrail 0.3.2 (PyPI) and
of an earlier snapshot of the same project; it has not been run with the package installed (its models are
downloaded from the Hugging Face hub, which this project's machines cannot reach). What it relies on:

* `cosmos_guardrail.CosmosSafetyChecker(checkpoint_id=...)` builds everything (it calls
  `huggingface_hub.snapshot_download(checkpoint_id)`, default "nvidia/Cosmos-1.0-Guardrail"; set HF_HUB_OFFLINE=1
  to read a pre-filled Hugging Face cache), on the CPU.
* `checker.text_guardrail` and `checker.video_guardrail` are runners with `safety_models` (each with
  `is_safe(x) -> (bool, message)`) and `postprocessors` (each with `postprocess(frames) -> frames`); the runner's
  `postprocess(frames)` applies them in order. 0.3.2: text = Blocklist + Qwen3Guard, video = no classifier
  (the SigLIP filter is commented out upstream) + RetinaFace pixelation; earlier versions: Blocklist + Aegis
  (LlamaGuard-7B), SigLIP video filter + RetinaFace.
* `checker.nn_models` (0.3.x) lists the torch modules; for older versions they are collected from the runners.

The package swallows model errors and reports them as safe: its LLM guards return (True, "Unexpected error
occurred ...") after logging at ERROR level, and the video filter skips frames whose classification raised,
logging a warning. This adapter calls each safety model itself and turns such an error (an exception, an ERROR
record or a "Failed to run" warning from the package's loggers, or an "error" message on a pass) into a
GuardrailError: the sample fails, it is never passed unchecked.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from cosmos_dist.guardrails.base import (
    INSTALL_HINT,
    GuardrailError,
    GuardrailUnavailable,
    Verdict,
    check_frames,
)

PACKAGE = "cosmos_guardrail"
DISTRIBUTION = "cosmos-guardrail"


def package_available() -> bool:
    return importlib.util.find_spec(PACKAGE) is not None


class _ErrorRecords(logging.Handler):
    """Collects the package's log records that say a model failed."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        low = msg.lower()
        if record.levelno >= logging.ERROR or "failed to run" in low or "exception" in low:
            self.errors.append(msg)


@contextmanager
def _package_errors() -> Iterator[_ErrorRecords]:
    handler = _ErrorRecords()
    names = [PACKAGE] + [n for n in logging.root.manager.loggerDict if n.startswith(PACKAGE + ".")]
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def _model_name(model: Any) -> str:
    return type(model).__name__.upper()


class CosmosGuardrail:
    name = "cosmos"

    def __init__(self, checker: Any, checkpoint_id: str | None = None):
        self.checker = checker
        self.checkpoint_id = checkpoint_id

    @classmethod
    def load(cls, checkpoint_id: str | None = None) -> "CosmosGuardrail":
        if not package_available():
            raise GuardrailUnavailable(f"guardrail=on needs NVIDIA's cosmos-guardrail package, which is not installed: {INSTALL_HINT}")
        module = importlib.import_module(PACKAGE)
        kwargs = {"checkpoint_id": checkpoint_id} if checkpoint_id else {}
        try:
            checker = module.CosmosSafetyChecker(**kwargs)
        except Exception as exc:  # downloads, missing cache, incompatible versions: say which and how to fix
            raise GuardrailUnavailable(
                f"could not load the cosmos-guardrail models ({type(exc).__name__}: {exc}). They come from the "
                "Hugging Face hub (checkpoint nvidia/Cosmos-1.0-Guardrail and the models it names; accept their licences "
                "there); on a machine without network access fill the Hugging Face cache first and set HF_HUB_OFFLINE=1. "
                "Or pass guardrail=off (recorded in every sidecar)."
            ) from exc
        return cls(checker, checkpoint_id)

    # ---- the interface -------------------------------------------------------------------------
    def check_text(self, prompt: str) -> Verdict:
        return self._run_safety_models(self.checker.text_guardrail, prompt, "text")

    def check_video(self, frames: np.ndarray) -> Verdict:
        return self._run_safety_models(self.checker.video_guardrail, check_frames(frames), "video")

    def blur_faces(self, frames: np.ndarray) -> np.ndarray:
        arr = check_frames(frames).copy()  # the package pixelates in place
        with _package_errors() as errs:
            out = self.checker.video_guardrail.postprocess(arr)
        if errs.errors:
            raise GuardrailError(f"cosmos face blur: {errs.errors[0]}")
        return check_frames(out)

    def modules(self) -> list:
        import torch

        found = getattr(self.checker, "nn_models", None)
        if found is None:  # older package versions: collect them from the runners
            found = []
            for runner in (self.checker.text_guardrail, self.checker.video_guardrail):
                for m in [*(getattr(runner, "safety_models", None) or []), *(getattr(runner, "postprocessors", None) or [])]:
                    if isinstance(m, torch.nn.Module):
                        found.append(m)
        return list(found)

    def describe(self) -> dict[str, Any]:
        try:
            version = importlib.metadata.version(DISTRIBUTION)
        except Exception:
            version = None
        runners = {"text": self.checker.text_guardrail, "video": self.checker.video_guardrail}
        return {
            "provider": self.name,
            "package": f"{DISTRIBUTION} {version}" if version else DISTRIBUTION,
            "checkpoint_id": self.checkpoint_id,
            "face_blur": True,
            "text_models": [_model_name(m) for m in getattr(runners["text"], "safety_models", None) or []],
            "video_models": [_model_name(m) for m in getattr(runners["video"], "safety_models", None) or []],
            "postprocessors": [_model_name(m) for m in getattr(runners["video"], "postprocessors", None) or []],
        }

    # ---- helpers -----------------------------------------------------------------------------------
    def _run_safety_models(self, runner: Any, value: Any, what: str) -> Verdict:
        models = getattr(runner, "safety_models", None)
        if models is None:  # an unknown runner layout: use its own loop, still refusing logged errors
            with _package_errors() as errs:
                ok, message = runner.run_safety_check(value)
            return self._verdict("COSMOS", ok, message, errs.errors, what)
        for model in models:
            with _package_errors() as errs:
                ok, message = model.is_safe(value)
            verdict = self._verdict(_model_name(model), ok, message, errs.errors, what)
            if not verdict.ok:
                return verdict
        return Verdict.passed()

    @staticmethod
    def _verdict(name: str, ok: bool, message: Any, errors: list[str], what: str) -> Verdict:
        text = "" if message is None else str(message)
        if errors:
            raise GuardrailError(f"cosmos {what} guardrail {name} failed: {errors[0]}")
        if ok and "error" in text.lower():
            raise GuardrailError(f"cosmos {what} guardrail {name} failed: {text}")
        if not ok:
            return Verdict.blocked(f"{name}: {text}" if text else name)
        return Verdict.passed()
