"""Shared helpers for the offload / guardrail / upsampler tests: compose the real config, run the real
pipeline in-process on the tiny random models, and record the order in which stages touch models."""
from __future__ import annotations

import json
from pathlib import Path

from cosmos_dist.config import register_configs, validate_config
from cosmos_dist.pipeline.runtime import SingleProcess
from cosmos_dist.pipeline.text2world import Text2WorldPipeline

REPO = Path(__file__).resolve().parents[1]
SMALL = ("model=tiny_text2world", "height=32", "width=48", "num_frames=9", "num_steps=2", "progress=false")


def compose(*overrides: str):
    from hydra import compose as hydra_compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="generate", overrides=list(overrides))


def small_cfg(ckpt: Path, out: Path, *overrides: str):
    return compose(*SMALL, f"checkpoint_dir={ckpt}", f"output_dir={out}", *overrides)


def write_prompts(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def manifest_by_id(out: Path) -> dict[str, dict]:
    from cosmos_dist.io.records import read_manifest

    return {e["sample_id"]: e for e in read_manifest(out / "manifest.jsonl") if e.get("sample_id")}


class Recorder:
    """Records stage events of a pipeline: ("guard_text", prompt), ("encode", prompt), ("sample", id),
    ("decode", -), ("guard_video", -), plus the residency moves, in order."""

    def __init__(self):
        self.events: list[tuple] = []


def recording_pipeline(cfg, recorder: Recorder, monkeypatch, provider_factory=None):
    """A Text2WorldPipeline whose models report each use to `recorder` (the real models still run)."""
    from cosmos_dist.pipeline import denoiser

    real_sample = getattr(denoiser.sample_latent, "_unrecorded", denoiser.sample_latent)

    def sample(**kw):
        recorder.events.append(("sample", kw["sample_id"]))
        return real_sample(**kw)

    sample._unrecorded = real_sample
    monkeypatch.setattr(denoiser, "sample_latent", sample)

    class Recording(Text2WorldPipeline):
        def load(self, assets=None):
            if self.components is not None:
                return
            super().load(assets)
            comps = self.components
            if provider_factory is not None:
                comps.guardrail = provider_factory()
            g = comps.guardrail
            if g is not None:
                check_text, check_video = g.check_text, g.check_video

                def t(prompt):
                    recorder.events.append(("guard_text", prompt))
                    return check_text(prompt)

                def v(frames):
                    recorder.events.append(("guard_video",))
                    return check_video(frames)

                g.check_text, g.check_video = t, v
            decode = comps.tokenizer.decode_to_uint8

            def d(latent):
                recorder.events.append(("decode",))
                return decode(latent)

            comps.tokenizer.decode_to_uint8 = d
            res = comps.residency
            move_in, move_out = res._move_in, res._move_out

            def mi(comp, skip=None):
                recorder.events.append(("in", comp.name))
                return move_in(comp, skip)

            def mo(comp):
                recorder.events.append(("out", comp.name))
                return move_out(comp)

            res._move_in, res._move_out = mi, mo

        def encode(self, prompt, negative):
            recorder.events.append(("encode", prompt))
            return super().encode(prompt, negative)

    validate_config(cfg)
    return Recording(cfg, SingleProcess())
