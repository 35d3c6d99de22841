"""Guardrails: the provider interface, the keyword provider, the cosmos-guardrail adapter's error rules, the
stage logic (text check first, blocked samples write nothing, provider errors fail, never pass) and the CLI."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from cosmos_dist.config import validate_config
from cosmos_dist.errors import ConfigError
from cosmos_dist.guardrails import GuardrailError, run_text_check, run_video_stage
from cosmos_dist.guardrails.keyword import KeywordGuardrail
from pipeline_helpers import prompt_ids, REPO, Recorder, compose, manifest_by_id, recording_pipeline, small_cfg, write_prompts


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tmp_path_factory.mktemp("guardrail-ckpt")


def frames(value=128, f=3):
    return np.full((f, 8, 8, 3), value, dtype=np.uint8)


# ---- providers ---------------------------------------------------------------------------------------------
def test_keyword_provider_words_phrases_case_and_empty():
    k = KeywordGuardrail(["bomb", "Red  Ball"])
    assert k.check_text("a cat sleeps").ok
    assert not k.check_text("A BOMB goes off").ok
    assert "'red ball'" in k.check_text("the red\tball bounces").reason
    assert k.check_text("a bombastic speech").ok and k.check_text("redball").ok  # whole words only
    assert not k.check_text("   ").ok
    k2 = KeywordGuardrail([], video_mean_range=[10, 200])
    assert k2.check_video(frames(128)).ok
    v = k2.check_video(frames(250))
    assert not v.ok and "outside [10, 200]" in v.reason
    assert np.array_equal(k2.blur_faces(frames(7)), frames(7))
    with pytest.raises(ValueError, match="uint8"):
        k2.check_video(np.zeros((2, 4, 4, 3), dtype=np.float32))


class Exploding(KeywordGuardrail):
    def __init__(self, on: str = "", where: str = "text"):
        super().__init__([])
        self.on, self.where = on, where

    def check_text(self, prompt):
        if self.where == "text" and self.on in prompt:
            raise RuntimeError("guard model crashed")
        return super().check_text(prompt)

    def check_video(self, f):
        if self.where == "video":
            raise RuntimeError("classifier crashed")
        return super().check_video(f)

    def blur_faces(self, f):
        if self.where == "blur":
            raise RuntimeError("face detector crashed")
        return f[:, ::-1].copy()  # a visible change, so the test sees the blur applied


def test_stage_wrappers_turn_errors_into_failures_never_passes():
    with pytest.raises(GuardrailError, match="text guardrail \\(keyword\\) failed: RuntimeError: guard model crashed"):
        run_text_check(Exploding("x"), "x marks the spot")
    blocked = run_text_check(KeywordGuardrail(["x"]), "x marks", "upsampled prompt")
    assert not blocked.ok and blocked.reason.startswith("text guardrail on the upsampled prompt: keyword:")
    for where, msg in (("video", "classifier crashed"), ("blur", "face detector crashed")):
        with pytest.raises(GuardrailError, match=msg):
            run_video_stage(Exploding(where=where), frames())
    v, out = run_video_stage(Exploding(where="none"), np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3))
    assert v.ok and out[0, 0, 0, 0] == 36  # blurred (here: flipped) frames come back
    v, out = run_video_stage(KeywordGuardrail([], [0, 1]), frames(100))
    assert not v.ok and out is None and v.reason.startswith("video guardrail: keyword:")

    class Bad(KeywordGuardrail):
        def check_text(self, prompt):
            return True  # not a Verdict: refused, not taken as a pass

    with pytest.raises(GuardrailError, match="not a Verdict"):
        run_text_check(Bad([]), "hello")


# ---- the cosmos-guardrail adapter against a stand-in with the package's structure ---------------------------------
def _fake_cosmos_package(monkeypatch, text_models, video_models=(), postprocessors=()):
    """A module named cosmos_guardrail with the attributes the adapter uses (as in cosmos-guardrail 0.3.2)."""
    pkg = types.ModuleType("cosmos_guardrail")

    class Runner:
        def __init__(self, safety_models, post=()):
            self.safety_models, self.postprocessors = list(safety_models), list(post)

        def postprocess(self, f):
            for p in self.postprocessors:
                f = p.postprocess(f)
            return f

    class CosmosSafetyChecker:
        def __init__(self, checkpoint_id="nvidia/Cosmos-1.0-Guardrail"):
            self.checkpoint_id = checkpoint_id
            self.text_guardrail = Runner(text_models)
            self.video_guardrail = Runner(video_models, postprocessors)
            self.nn_models = []

    pkg.CosmosSafetyChecker = CosmosSafetyChecker
    monkeypatch.setitem(sys.modules, "cosmos_guardrail", pkg)
    monkeypatch.setattr("cosmos_dist.guardrails.cosmos.package_available", lambda: True)
    from cosmos_dist.guardrails.cosmos import CosmosGuardrail

    return CosmosGuardrail.load()


class Blocklist:
    def is_safe(self, prompt):
        return ("bad" not in prompt, "Prompt blocked by exact match blocklist" if "bad" in prompt else "Input is safe")


class SwallowingGuard:
    """Like the package's LLM guards: logs an error and reports safe when its model raises."""

    def is_safe(self, prompt):
        if "crash" in prompt:
            logging.getLogger("cosmos_guardrail.cosmos_guardrail").error("Unexpected error occurred when running Qwen3Guard guardrail: CUDA OOM")
            return True, "Unexpected error occurred when running Qwen3Guard guardrail."
        return True, ""


class FrameFilter:
    def is_safe(self, f):
        if f.mean() > 200:
            logging.getLogger("cosmos_guardrail.cosmos_guardrail").warning("Warning: Failed to run safety classifier on frame_number 0. Exception: boom")
        return True, "safe frames detected"


class Pixelate:
    def postprocess(self, f):
        f[:, :2, :2] = 0
        return f


def test_cosmos_adapter_blocks_with_model_name_and_refuses_swallowed_errors(monkeypatch):
    g = _fake_cosmos_package(monkeypatch, [Blocklist(), SwallowingGuard()], [FrameFilter()], [Pixelate()])
    assert g.check_text("a cat").ok
    v = g.check_text("a bad cat")
    assert not v.ok and v.reason == "BLOCKLIST: Prompt blocked by exact match blocklist"
    with pytest.raises(GuardrailError, match="SWALLOWINGGUARD failed: Unexpected error occurred .* CUDA OOM"):
        g.check_text("crash now")
    assert g.check_video(frames(100)).ok
    with pytest.raises(GuardrailError, match="FRAMEFILTER failed: Warning: Failed to run safety classifier"):
        g.check_video(frames(250))
    src = frames(100)
    out = g.blur_faces(src)
    assert out[0, 0, 0, 0] == 0 and src[0, 0, 0, 0] == 100  # pixelated copy; the input is left alone
    d = g.describe()
    assert d["provider"] == "cosmos" and d["text_models"] == ["BLOCKLIST", "SWALLOWINGGUARD"]
    assert d["postprocessors"] == ["PIXELATE"] and d["face_blur"] is True


def test_missing_cosmos_package_fails_early_with_the_fix(monkeypatch):
    from cosmos_dist.guardrails import check_available

    monkeypatch.setattr("cosmos_dist.guardrails.cosmos.package_available", lambda: False)
    cfg = compose("model=tiny_text2world", "prompt=x", "guardrail=on")
    assert cfg.guardrail.provider == "cosmos" and cfg.guardrail.enabled
    with pytest.raises(ConfigError, match=r"pip install 'cosmos-dist\[guardrail\]'.*guardrail=off"):
        check_available(cfg)
    check_available(compose("model=tiny_text2world", "prompt=x", "guardrail=off"))
    check_available(compose("model=tiny_text2world", "prompt=x"))  # tiny presets: the keyword provider
    with pytest.raises(ConfigError, match="guardrail.provider"):
        validate_config(compose("model=tiny_text2world", "prompt=x", "guardrail.provider=mystery"))
    assert compose("model=7b_text2world").guardrail.provider == "cosmos"  # real models: NVIDIA's, on


# ---- the stages in a real (tiny) pipeline --------------------------------------------------------------------------
def test_blocked_prompt_writes_nothing_and_the_run_goes_on(ckpt, tmp_path, monkeypatch):
    prompts = write_prompts(tmp_path / "p.jsonl", [
        {"prompt": "a red ball rolls", "id": "a"}, {"prompt": "a bomb in a market", "id": "b"},
        {"prompt": "a cat sleeps", "id": "c"},
    ])
    out = tmp_path / "out"
    rec = Recorder()
    cfg = small_cfg(ckpt, out, f"prompts_file={prompts}", "guardrail.blocklist=[bomb]", "offload=text_encoder")
    summary = recording_pipeline(cfg, rec, monkeypatch).run()
    assert sorted(prompt_ids(summary.done)) == ["a", "c"] and prompt_ids(summary.blocked) == ["b"] and not summary.failed
    assert summary.exit_code == 0
    m = manifest_by_id(out)
    assert m["b"]["status"] == "blocked" and m["b"]["stage"] == "text"
    assert m["b"]["reason"] == "text guardrail on the prompt: keyword: the prompt contains the blocked word 'bomb'"
    assert not list(out.glob("b.*"))
    # the text check comes before anything else; the blocked prompt never reaches T5 or the DiT
    kinds = [e[0] for e in rec.events]
    assert kinds[:3] == ["guard_text"] * 3
    assert ("encode", "a bomb in a market") not in rec.events and ("sample", "b") not in rec.events
    side = json.loads(next(out.glob("a_s*.json")).read_text())["extra"]["guardrail"]
    assert side["enabled"] and side["provider"] == "keyword" and side["blocklist"] == ["bomb"]
    assert side["checks"] == {"text": ["prompt: passed"], "video": "passed"}


def test_video_block_and_provider_error_paths(ckpt, tmp_path, monkeypatch):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "one", "id": "one"}, {"prompt": "two", "id": "two"}])
    # every video outside the window: blocked after decoding, nothing written, exit code 0
    out = tmp_path / "vid"
    cfg = small_cfg(ckpt, out, f"prompts_file={prompts}", "guardrail.video_mean_range=[0,1]")
    summary = recording_pipeline(cfg, Recorder(), monkeypatch).run()
    assert sorted(prompt_ids(summary.blocked)) == ["one", "two"] and not summary.done and summary.exit_code == 0
    m = manifest_by_id(out)
    assert m["one"]["stage"] == "video" and "mean pixel value" in m["one"]["reason"]
    assert not list(out.glob("*.mp4")) and not list(out.glob("*.json"))
    # a provider that raises on one prompt: that sample fails (never passes), the other is made
    out = tmp_path / "err"
    cfg = small_cfg(ckpt, out, f"prompts_file={prompts}")
    summary = recording_pipeline(cfg, Recorder(), monkeypatch, provider_factory=lambda: Exploding("two")).run()
    assert prompt_ids(summary.done) == ["one"] and prompt_ids(summary.failed) == ["two"] and summary.exit_code == 1
    m = manifest_by_id(out)
    assert m["two"]["status"] == "failed" and "guard model crashed" in m["two"]["reason"]
    assert not any(out.glob("two_s*.mp4"))
    # guardrail=off: recorded in the sidecar
    out = tmp_path / "off"
    cfg = small_cfg(ckpt, out, "prompt=a bomb", "guardrail=off")
    summary = recording_pipeline(cfg, Recorder(), monkeypatch).run()
    assert len(prompt_ids(summary.done)) == 1
    side = json.loads(next(out.glob("*_s*.json")).read_text())
    assert side["extra"]["guardrail"]["enabled"] is False and "guardrail=off" in side["extra"]["guardrail"]["note"]


@pytest.mark.slow
def test_cli_prompts_file_with_one_blocked_prompt(ckpt, tmp_path):
    """The issue's scenario as a new user runs it: the other videos, a manifest line `blocked` with its reason, exit 0."""
    write_prompts(tmp_path / "prompts.jsonl", [
        {"prompt": "A robot arm sorts parcels in a warehouse.", "id": "robot"},
        {"prompt": "A bomb explodes in a crowded market.", "id": "market"},
        {"prompt": "Waves roll onto a quiet beach at dawn.", "id": "beach"},
    ])
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    argv = [sys.executable, str(REPO / "generate.py"), "model=tiny_text2world", "prompts_file=prompts.jsonl",
            "guardrail.blocklist=[bomb]", "num_steps=2", "progress=false", f"checkpoint_dir={ckpt}"]
    res = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "outputs"
    assert any(out.glob("robot_s*.mp4")) and any(out.glob("beach_s*.mp4"))
    assert not any(out.glob("market_s*.mp4")) and not any(out.glob("market_s*.json"))
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    blocked = [x for x in lines if x["status"] == "blocked"]
    assert len(blocked) == 1 and blocked[0]["sample_id"].startswith("market_s") and blocked[0]["line"] == 2
    assert "blocked word 'bomb'" in blocked[0]["reason"]
    assert "2 done, 0 skipped, 0 failed, 1 blocked" in res.stderr

    # guardrail=on without NVIDIA's package: refused before anything loads, naming the fix
    from cosmos_dist.guardrails.cosmos import package_available

    if not package_available():
        res = subprocess.run(argv + ["guardrail=on", "output_dir=on"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 2
        assert "pip install 'cosmos-dist[guardrail]'" in res.stderr and "guardrail=off" in res.stderr
        assert not (tmp_path / "on" / "manifest.jsonl").exists()
