"""Residency levels: cumulative levels, moves in and out of host copies, block streaming of the DiT, the chunked
stage order (each offloaded model moves once per chunk) and identical sampling numbers whatever the level."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cosmos_dist.config import OFFLOAD_LEVELS, validate_config
from cosmos_dist.errors import ConfigError
from cosmos_dist.pipeline.residency import Residency, offloaded_components
from pipeline_helpers import prompt_id, prompt_ids, Recorder, compose, manifest_by_id, recording_pipeline, small_cfg, write_prompts


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tmp_path_factory.mktemp("offload-ckpt")


def test_levels_are_cumulative_and_named():
    assert OFFLOAD_LEVELS == ("none", "upsampler", "guardrails", "text_encoder", "tokenizer", "dit")
    assert offloaded_components("none") == []
    assert offloaded_components("upsampler") == ["upsampler"]
    assert offloaded_components("text_encoder") == ["upsampler", "guardrails", "text_encoder"]
    assert offloaded_components("dit") == ["upsampler", "guardrails", "text_encoder", "tokenizer", "dit"]
    res = Residency("tokenizer")
    assert res.offloads("tokenizer") and res.offloads("guardrails") and not res.offloads("dit")
    assert res.load_device("text_encoder") == torch.device("cpu")
    with pytest.raises(ConfigError, match="choose one of none, upsampler, guardrails, text_encoder, tokenizer, dit"):
        Residency("everything")


def test_config_groups_and_validation(tmp_path):
    for level in OFFLOAD_LEVELS:
        cfg = compose("model=tiny_text2world", "prompt=x", f"offload={level}")
        assert cfg.offload.level == level
        validate_config(cfg)
    cfg = compose("model=tiny_text2world", "prompt=x", "offload.level=all")
    with pytest.raises(ConfigError, match=r"offload: 'all' is not a residency level"):
        validate_config(cfg)
    cfg = compose("model=tiny_text2world", "prompt=x", "offload.chunk=0")
    with pytest.raises(ConfigError, match="offload.chunk"):
        validate_config(cfg)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)).eval()


def test_offloaded_component_moves_in_for_its_stage_only():
    m = _mlp()
    x = torch.randn(3, 8)
    want = m(x)
    res = Residency("text_encoder", "cpu")
    res.register("text_encoder", [m])
    comp = res.components["text_encoder"]
    assert comp.offloaded and not comp.resident and len(comp.host) == 4
    # host copies hold the weights; the module's tensors point at them between stages
    assert all(t.data_ptr() == h.data_ptr() for t, h in zip(comp.tensors, comp.host))
    with res.stage("text_encoder", "dit"):  # dit is not registered: ignored
        assert comp.resident
        got = m(x)
    assert not comp.resident
    assert torch.equal(got, want)
    with res.stage("text_encoder"):
        pass
    assert res.moves == [("text_encoder", "in"), ("text_encoder", "out"), ("text_encoder", "in"), ("text_encoder", "out")]
    # a resident component is never moved
    res2 = Residency("upsampler", "cpu")
    res2.register("text_encoder", [_mlp()])
    with res2.stage("text_encoder"):
        pass
    assert res2.moves == [] and not res2.any_offloaded() and res2.chunk_size() == 1


def test_compiled_module_survives_moves():
    m = _mlp(1)
    x = torch.randn(4, 8)
    want = m(x)
    m.compile(backend="eager", dynamic=False)  # Dynamo traces it (the pipeline compiles blocks in place alike)
    res = Residency("dit", "cpu", dit_stream=False)
    res.register("dit", [m])
    for _ in range(2):
        with res.stage("dit"):
            assert torch.equal(m(x), want)
    assert [name for name, _ in m.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_dit_streams_block_by_block_with_identical_numbers():
    from cosmos_dist.models import build_dit, get_preset

    cfg = get_preset("tiny_text2world")
    torch.manual_seed(0)
    net = build_dit(cfg, device="cpu", dtype=torch.float32)
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    x = torch.randn(1, cfg.latent_channels, 2, 4, 6)
    t = torch.tensor([0.3])
    emb = torch.randn(1, 7, cfg.crossattn_emb_channels)
    want = net(x, t, emb, fps=24.0)
    names = [n for n, _ in net.named_parameters()]

    res = Residency("dit", "cpu", dit_stream=True)
    res.register("dit", [net], stream_blocks=net.blocks)
    with res.stage("dit"):
        assert all(type(b).__name__ == "_Streamed" for b in net.blocks.values())
        got = net(x, t, emb, fps=24.0)
        got2 = net(x, t, emb, fps=24.0)
    assert torch.equal(got, want) and torch.equal(got2, want)
    assert [n for n, _ in net.named_parameters()] == names  # blocks restored after the stage
    block_bytes = sum(p.numel() * p.element_size() for p in net.blocks.parameters())
    assert res.streamed_bytes >= 2 * block_bytes
    assert res.moves == [("dit", "in"), ("dit", "out")]


def _latents(out):
    return {prompt_ids([p.name.split(".")[0]])[0]: torch.load(p) for p in sorted(out.glob("*.latent.pt"))}


def test_stage_order_moves_each_model_once_per_chunk_and_same_latents(ckpt, tmp_path, monkeypatch):
    prompts = write_prompts(tmp_path / "p.jsonl", [
        {"prompt": "a red ball rolls", "id": "a"}, {"prompt": "a cat sleeps", "id": "b"},
        {"prompt": "rain on a window", "id": "c"},
    ])
    runs = {}
    for level, chunk in (("none", 16), ("dit", 16), ("dit", 2)):
        rec = Recorder()
        out = tmp_path / f"out-{level}-{chunk}"
        cfg = small_cfg(ckpt, out, f"prompts_file={prompts}", f"offload={level}", f"offload.chunk={chunk}",
                        "save_latents=true", "guardrail.blocklist=[bomb]")
        summary = recording_pipeline(cfg, rec, monkeypatch).run()
        assert sorted(prompt_ids(summary.done)) == ["a", "b", "c"] and not summary.failed
        runs[(level, chunk)] = (rec.events, _latents(out))

    # Sampling does not depend on the residency level: the same latents, bit for bit.
    base = runs[("none", 16)][1]
    assert set(base) == {"a", "b", "c"}
    for key in (("dit", 16), ("dit", 2)):
        for sid in base:
            assert torch.equal(runs[key][1][sid], base[sid]), (key, sid)

    # offload=none: nothing moves, and each sample goes through all stages before the next one starts.
    events = runs[("none", 16)][0]
    assert not [e for e in events if e[0] in ("in", "out")]
    kinds = [e[0] for e in events]
    assert kinds == ["guard_text", "encode", "sample", "decode", "guard_video"] * 3

    # offload=dit, one chunk of 3: every prompt checked and encoded before the DiT comes in; each model moves once.
    events = runs[("dit", 16)][0]
    kinds = [e[0] if e[0] not in ("in", "out") else f"{e[0]}:{e[1]}" for e in events]
    assert kinds == (
        ["guard_text"] * 3 + ["in:text_encoder"] + ["encode"] * 3 + ["out:text_encoder"]
        + ["in:dit"] + ["sample"] * 3 + ["out:dit"]
        + ["in:tokenizer"] + ["decode"] * 3 + ["out:tokenizer"] + ["guard_video"] * 3
    )
    # chunks of 2: two chunks, so each offloaded model moves twice
    events = runs[("dit", 2)][0]
    assert events.count(("in", "dit")) == 2 and events.count(("in", "text_encoder")) == 2
    assert events.count(("in", "tokenizer")) == 2


def test_failure_in_one_sample_does_not_stop_the_chunk(ckpt, tmp_path, monkeypatch):
    from cosmos_dist.pipeline import denoiser

    prompts = write_prompts(tmp_path / "p.jsonl", [
        {"prompt": "one", "id": "one"}, {"prompt": "two", "id": "two"}, {"prompt": "three", "id": "three"},
    ])
    out = tmp_path / "out"
    cfg = small_cfg(ckpt, out, f"prompts_file={prompts}", "offload=dit")
    real = denoiser.sample_latent

    def flaky(**kw):
        if prompt_id(kw["sample_id"]) == "two":
            raise RuntimeError("simulated device error")
        return real(**kw)

    monkeypatch.setattr(denoiser, "sample_latent", flaky)
    summary = recording_pipeline(cfg, Recorder(), monkeypatch).run()
    assert sorted(prompt_ids(summary.done)) == ["one", "three"] and prompt_ids(summary.failed) == ["two"] and summary.exit_code == 1
    m = manifest_by_id(out)
    assert m["two"]["status"] == "failed" and "simulated device error" in m["two"]["reason"]
    assert any(out.glob("one_s*.mp4")) and any(out.glob("three_s*.mp4")) and not any(out.glob("two_s*.mp4"))
    sidecar = __import__("json").loads(next(out.glob("one_s*.json")).read_text())
    assert sidecar["extra"]["offload"]["level"] == "dit"
    assert sidecar["extra"]["offload"]["offloaded"] == ["text_encoder", "tokenizer", "dit"]


def _measure_memory_tool():
    import importlib.util

    from pipeline_helpers import REPO

    spec = importlib.util.spec_from_file_location("measure_memory", REPO / "tools" / "measure_memory.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


TINY_MEASURE = ["--tiny", "--steps", "1", "--guard-prompt-tokens", "16", "--upsampler-tokens", "2"]


def test_measure_memory_tool_runs_tiny_on_the_cpu(tmp_path):
    """tools/measure_memory.py (item 2's GPU table) in its tiny CPU mode: every level, both kinds, JSON out; each
    sample is the pipeline's own run (its stage methods measured, its sidecar's timings, its mp4 and manifest)."""
    import json
    from pathlib import Path

    tool = _measure_memory_tool()
    out = tmp_path / "m.json"
    assert tool.main([*TINY_MEASURE, "--kinds", "t2w,v2w", "--levels", "none,text_encoder,dit", "--encode-chunk", "1",
                      "--write-video", str(tmp_path / "videos"), "--output", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["tokenizer_encode_chunk"] == 1 and "encode 1 latent frames' worth per chunk" in rep["tokenizer"]
    for kind in ("t2w", "v2w"):
        levels = rep["kinds"][kind]["levels"]
        assert set(levels) == {"none", "text_encoder", "dit"}
        assert levels["none"]["offloaded"] == [] and not levels["none"]["oom"]
        assert sorted(levels["dit"]["offloaded"]) == ["dit", "guardrails", "text_encoder", "tokenizer", "upsampler"]
        assert levels["dit"]["streamed_bytes"] > 0  # the DiT streamed block by block
        for level, r in levels.items():
            assert list(r["stages"]) == ["text_stage", "condition_stage", "sampling_stage", "output_stage"]
            # the pipeline's own clocks, from the sample's sidecar: every stage ran inside its stage methods
            timings = r["timings_s"]
            assert {"guardrail_text_s", "upsample_s", "text_encode_s", "sampling_s", "decode_s", "guardrail_video_s",
                    "write_s", "total_s"} <= set(timings)
            assert ("condition_encode_s" in timings) == (kind == "v2w")
            video = Path(r["video"])
            assert video.parent == tmp_path / "videos" / f"{kind}-{level}" and video.stat().st_size > 0
            sidecar = json.loads(video.with_suffix(".json").read_text())
            assert sidecar["extra"]["offload"]["level"] == level
            assert sidecar["extra"]["guardrail"]["checks"]["text"] == ["prompt: passed", "upsampled prompt: passed"]
            assert sidecar["extra"]["upsampler"]["upsampled"] is True
            assert json.loads((video.parent / "manifest.jsonl").read_text().splitlines()[-1])["status"] == "done"
    assert tool.CARD_GB[("14b", "t2w")]["dit"] == 39.0


def test_measure_memory_tool_reports_where_a_level_ran_out_of_memory(tmp_path, monkeypatch):
    """An out-of-memory error is reported with its stage, whether the pipeline recorded it as the sample's failure
    (T5, the face stand-in) or it escaped the stage (a model moving in); the next level is measured afresh."""
    import json

    import torch

    from cosmos_dist.pipeline.residency import Residency

    tool = _measure_memory_tool()
    raise_in = {}

    def oom_when(what):
        def fail(*args, **kwargs):
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated in {what})")
        return fail

    real_encode, real_blur, real_move_in = (tool.StandInText.encode_one, tool.StandInGuardrail.blur_faces,
                                            Residency._move_in)
    monkeypatch.setattr(tool.StandInText, "encode_one",
                        lambda self, p: (oom_when("T5") if raise_in.get("level") == "none" else real_encode)(self, p))
    monkeypatch.setattr(tool.StandInGuardrail, "blur_faces", lambda self, f: (
        oom_when("face") if raise_in.get("level") == "upsampler" else real_blur)(self, f))
    monkeypatch.setattr(Residency, "_move_in", lambda self, comp, skip=None: (
        oom_when("move") if self.level == "dit" and comp.name == "dit" else real_move_in)(self, comp, skip))
    real_measure = tool.measure_level

    def measure(level, *args, **kwargs):
        raise_in["level"] = level
        return real_measure(level, *args, **kwargs)

    monkeypatch.setattr(tool, "measure_level", measure)
    out = tmp_path / "m.json"
    assert tool.main([*TINY_MEASURE, "--kinds", "t2w", "--levels", "none,upsampler,tokenizer,dit",
                      "--output", str(out)]) == 0
    levels = json.loads(out.read_text())["kinds"]["t2w"]["levels"]
    assert levels["none"]["oom"] and levels["none"]["oom_at"] == "text_stage (T5)"
    assert "simulated in T5" in levels["none"]["error"]
    assert levels["upsampler"]["oom_at"] == "output_stage (video guardrail)"
    assert list(levels["upsampler"]["stages"]) == ["text_stage", "condition_stage", "sampling_stage", "output_stage"]
    assert levels["dit"]["oom"] and levels["dit"]["oom_at"] == "sampling_stage"  # raised by the move, not recorded
    assert not levels["tokenizer"]["oom"] and "write_s" not in levels["tokenizer"]["timings_s"]  # the API: no files
    assert levels["tokenizer"]["seconds_added_vs_tokenizer"] == 0


@pytest.mark.slow
def test_torchrun_cp2_offload_dit_matches_single_process(ckpt, tmp_path):
    """Two processes (gloo, cp=2) at offload=dit with a blocked prompt: the leader checks and writes, the DiT
    streams on both ranks, and the latents equal the single-process offload=none run."""
    import os
    import subprocess
    import sys

    from pipeline_helpers import REPO

    prompts = write_prompts(tmp_path / "p.jsonl", [
        {"prompt": "a red ball rolls", "id": "a"}, {"prompt": "a bomb goes off", "id": "b"},
    ])
    common = ["model=tiny_text2world", "height=32", "width=48", "num_frames=9", "num_steps=2", "progress=false",
              f"checkpoint_dir={ckpt}", f"prompts_file={prompts}", "guardrail.blocklist=[bomb]", "save_latents=true",
              "parallel.timeout_s=120"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    # single process first: it also writes the tiny model files (two ranks creating them at once can race)
    single = subprocess.run([sys.executable, str(REPO / "generate.py"), *common, f"output_dir={tmp_path / 'single'}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "generate.py"),
         *common, "offload=dit", "parallel.cp_size=2", f"output_dir={tmp_path / 'multi'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    m = manifest_by_id(tmp_path / "multi")
    assert m["b"]["status"] == "blocked" and m["a"]["status"] == "done" and len(m) == 4  # by sample id and by prompt id
    a, b = (torch.load(next((tmp_path / run).glob("a_s*.latent.pt"))) for run in ("multi", "single"))
    assert float((a - b).norm() / b.norm()) <= 1e-5
