"""Sample ids, videos per prompt, output layouts, hostile prompt lines and the checks before any model loads."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from cosmos_dist.io.identity import generation_settings, settings_hash, video_seed
from cosmos_dist.io.paths import record_layout, resolve_layout, sample_paths
from cosmos_dist.io.prompts import BadLine, MAX_LINE_BYTES, PromptItem, read_prompts_file
from cosmos_dist.errors import ConfigError
from cosmos_dist.pipeline.work import collect_work, shard_of
from pipeline_helpers import compose, manifest_by_id, small_cfg, write_prompts


# ---- hostile prompt files --------------------------------------------------------------------------
def hostile_file(path: Path) -> Path:
    lines = [
        b'{"prompt": "a good first line"}',
        b'{"prompt": "lone \\ud800 surrogate"}',  # valid JSON, no valid UTF-8 text
        b'{"prompt": "ok", "visual_input": "\\udfff.png"}',  # the surrogate in a pass-through key
        b"[" * 100_000 + b"]" * 100_000,  # the parser's recursion limit
        b'{"prompt": "deep", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"prompt": "' + b"word " * (MAX_LINE_BYTES // 5 + 10) + b'"}',  # over the line bound: never parsed
        b"\xff\xfe not utf-8",
        b'{"prompt": "huge int", "seed": ' + b"9" * 5000 + b"}",
        b'{"prompt": "a good last line"}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_every_hostile_line_is_that_lines_failure(tmp_path):
    entries = list(read_prompts_file(hostile_file(tmp_path / "p.jsonl")))
    good = [e for e in entries if isinstance(e, PromptItem)]
    bad = {e.line_number: e.reason for e in entries if isinstance(e, BadLine)}
    assert [g.prompt for g in good] == ["a good first line", "a good last line"]
    assert sorted(bad) == [2, 3, 4, 5, 6, 7, 8]
    assert "surrogate" in bad[2] and "surrogate" in bad[3]
    assert "nested too deeply" in bad[4] and "nested too deeply" in bad[5]
    assert f"the limit is {MAX_LINE_BYTES}" in bad[6]
    assert all(len(r) <= 300 for r in bad.values())


def test_shard_status_reports_a_hostile_file(tmp_path, capsys):
    from cosmos_dist.commands import shard_status

    prompts = hostile_file(tmp_path / "p.jsonl")
    rc = shard_status.main(["--prompts-file", str(prompts), "--output-dir", str(tmp_path / "out"), "--num-shards",
                            "3", "--json", "--", "model=tiny_text2world"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert sum(s["bad_lines"] for s in report["shards"]) == 7 and sum(s["total"] for s in report["shards"]) == 2


# ---- ids and seeds ---------------------------------------------------------------------------------
def _ids(cfg):
    return [it.sample_id for it in collect_work(cfg).items]


def test_ids_follow_settings_and_seeds(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": f"scene {i}"} for i in range(4)]
                            + [{"prompt": "own seeds", "seeds": [5, 9]}, {"prompt": "three", "num_videos_per_prompt": 3},
                               {"prompt": "named", "id": "cat", "seed": 11}])
    base = ("model=tiny_text2world", f"prompts_file={prompts}", f"output_dir={tmp_path / 'out'}")
    one = _ids(compose(*base))
    assert one == _ids(compose(*base))  # stable
    assert len(one) == 4 + 2 + 3 + 1 and len(set(one)) == len(one)
    assert "cat_s11_" in one[-1] and [i.split("_")[1] for i in one[4:6]] == ["s5", "s9"]
    two = _ids(compose(*base, "num_videos_per_prompt=2"))
    # a line's own seed takes the run's videos per prompt; its own seeds list or count wins
    assert len(two) == 4 * 2 + 2 + 3 + 2 and set(one) <= set(two)  # video 0 of each prompt is the same sample
    other_seed = _ids(compose(*base, "num_videos_per_prompt=2", "seed=2"))
    assert not set(other_seed[:8]) & set(two[:8])  # another seed: only new videos for the run-seeded prompts
    for setting in ("guidance=3", "num_steps=10", "sampler=res", "height=64", "video.crf=30", "precision=fp32"):
        changed = _ids(compose(*base, setting))
        assert not set(changed) & set(one), setting
    assert _ids(compose(*base, "progress=false", "offload=dit", "save_latents=true")) == one  # output unchanged
    seeds = [it.seed for it in collect_work(compose(*base, "seeds=[3,4,5]")).items]
    assert seeds[:6] == [3, 4, 5, 3, 4, 5]
    assert video_seed(1, 0) == 1 and video_seed(1, 1) != video_seed(2, 1)


def test_shard_membership_is_the_prompts(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": f"scene {i}"} for i in range(40)])
    base = ("model=tiny_text2world", f"prompts_file={prompts}", f"output_dir={tmp_path / 'out'}", "num_shards=3")
    for extra in ((), ("guidance=3", "num_videos_per_prompt=3")):
        for k in range(3):
            for it in collect_work(compose(*base, f"shard_index={k}", *extra)).items:
                assert shard_of(it.prompt_id, 3) == k


def test_settings_hash_ignores_unset_future_keys():
    cfg = compose("model=tiny_text2world", "prompt=x")
    s = generation_settings(cfg)
    assert "guidance" in s and "parallel.cp_size" not in s and "progress" not in s
    assert settings_hash(s) == settings_hash(dict(s))


def test_settings_that_change_the_video_change_the_id():
    t2w = ("model=tiny_text2world", "prompt=x")
    plain = generation_settings(compose(*t2w))
    # step caching changes the video only when it can reuse a step: threshold 0 keeps the uncached ids
    for off in (("cache=none",), ("cache=teacache", "cache.threshold=0"), ("cache=fbcache", "cache.threshold=0")):
        assert generation_settings(compose(*t2w, *off)) == plain
    tea = generation_settings(compose(*t2w, "cache=teacache"))["cache"]
    assert tea["policy"] == "teacache" and tea["threshold"] == 0.3 and len(tea["coefficients"]) == 5
    fb = generation_settings(compose(*t2w, "cache=fbcache", "cache.max_consecutive_reuse=2"))["cache"]
    assert fb == {"policy": "fbcache", "threshold": 0.1, "max_consecutive_reuse": 2}  # no TeaCache polynomial
    hashes = {settings_hash(generation_settings(compose(*t2w, *o))) for o in [
        (), ("cache=teacache",), ("cache=teacache", "cache.threshold=0.4"), ("cache=fbcache",),
        ("cache=teacache", "cache.max_consecutive_reuse=1"), ("sampler=res",), ("sampler=res", "sampler.rho=5")]}
    assert len(hashes) == 7
    # Video2World: the reference's condition replacement makes another video; the default keeps the old ids
    v2w = ("model=tiny_video2world", "prompt=x", "input_path=in.png")
    assert "condition_replacement" not in generation_settings(compose(*v2w))
    assert generation_settings(compose(*v2w, "condition_replacement=reference"))["condition_replacement"] == "reference"


@pytest.mark.parametrize("override", ["num_videos_per_prompt=0", "seeds=[1,1]", "seed=-1", "output_layout=deep",
                                      "seeds=[1,2]"])
def test_bad_run_keys_are_refused(override, tmp_path):
    from cosmos_dist.config import validate_config

    extra = ("num_videos_per_prompt=2",) if override == "seeds=[1,2]" else ()
    cfg = compose("model=tiny_text2world", "prompt=x", override, *extra)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert str(err.value).split(":")[0] in override


# ---- layouts ---------------------------------------------------------------------------------------
def test_sharded_layout_bounds_every_folder_for_100000_samples(tmp_path):
    entries: dict[Path, set] = {}
    out = tmp_path / "out"
    for i in range(100_000):
        p = sample_paths(out, f"p-{i:012x}_s{i % 7}_1a2b3c4d", "sharded")
        for f in (p.video, p.sidecar, p.latent):
            node = f
            while node != out:  # every directory on the way holds its child
                entries.setdefault(node.parent, set()).add(node.name)
                node = node.parent
    sizes = Counter({d: len(names) for d, names in entries.items()})
    assert len(entries[out]) <= 256
    assert max(sizes.values()) <= 256  # 3 files x ~1.5 samples a leaf here; 256 folders a level
    flat = {sample_paths(out, f"p-{i:012x}", "flat").sidecar.parent for i in range(1000)}
    assert flat == {out}  # the flat layout puts everything in one folder


def test_layout_is_recorded_and_a_different_one_refused(tmp_path):
    out = tmp_path / "out"
    assert resolve_layout(out, "auto") == "flat"
    assert record_layout(out, "sharded") == "sharded"
    assert resolve_layout(out, "auto") == "sharded"
    with pytest.raises(ConfigError, match="output_layout=sharded"):
        resolve_layout(out, "flat")


# ---- end to end (tiny model, in process) -------------------------------------------------------------
def _run(cfg):
    from cosmos_dist.pipeline.runtime import SingleProcess
    from cosmos_dist.pipeline.text2world import Text2WorldPipeline

    return Text2WorldPipeline(cfg, SingleProcess()).run()


def test_rerun_skips_only_matching_samples(tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "a red ball"}, {"prompt": "a blue box", "id": "box"}])
    run = lambda *o: _run(small_cfg(ckpt, out, f"prompts_file={prompts}", "output_layout=sharded", *o))  # noqa: E731
    first = run("num_videos_per_prompt=2")
    assert len(first.done) == 4 and not first.skipped
    side = next(out.rglob("box_s1_*.json"))
    rec = json.loads(side.read_text())
    assert rec["identity"]["prompt_id"] == "box" and (out / rec["path"]).is_file() and side.parent.parent.parent == out
    again = run("num_videos_per_prompt=2", "seed=2")
    assert len(again.done) == 4 and not again.skipped
    same = run("num_videos_per_prompt=2")
    assert len(same.skipped) == 4 and not same.done
    # the line keeps its id but changes its prompt: that sample is refused, naming the key, never skipped
    write_prompts(prompts, [{"prompt": "a red ball"}, {"prompt": "a green box", "id": "box"}])
    changed = run()
    assert len(changed.skipped) == 1 and len(changed.failed) == 1 and not changed.done
    reason = manifest_by_id(out)[changed.failed[0]]["reason"]
    assert "another prompt" in reason and "delete" in reason


def test_nothing_valid_loads_nothing(tmp_path, monkeypatch):
    from cosmos_dist.pipeline.text2world import Text2WorldPipeline

    def no_load(self, assets=None):
        raise AssertionError("models loaded for a run with nothing valid")

    monkeypatch.setattr(Text2WorldPipeline, "load", no_load)
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "word " * 301}, {"prompt": "tok" * 700}])
    summary = _run(small_cfg(tmp_path / "ckpt", tmp_path / "out", f"prompts_file={prompts}"))
    assert len(summary.failed) == 2 and not summary.done
    reasons = [e["reason"] for e in manifest_by_id(tmp_path / "out").values()]
    assert any("301 words" in r for r in reasons) and any("T5 tokens" in r for r in reasons)


def test_rerun_with_another_cache_setting_is_not_skipped(tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "a red ball", "id": "ball"}])
    run = lambda *o: _run(small_cfg(ckpt, out, f"prompts_file={prompts}", *o))  # noqa: E731
    assert len(run().done) == 1
    cached = run("cache=fbcache", "cache.threshold=0.5")  # may reuse steps: another video, another id
    assert len(cached.done) == 1 and not cached.skipped
    assert len(run("cache=teacache", "cache.threshold=0").skipped) == 1  # never reuses: the uncached video
    sides = {p.stem: json.loads(p.read_text()) for p in out.glob("ball_s1_*.json")}
    assert len(sides) == 2
    (cached_rec,) = [r for r in sides.values() if "cache" in r["identity"]["fingerprint"]["settings"]]
    assert cached_rec["identity"]["fingerprint"]["settings"]["cache"]["policy"] == "fbcache"


def test_python_api_saves_under_the_runs_ids(tmp_path):
    """A video made through the Python API and saved into a run's tree is that run's finished sample."""
    from cosmos_dist.pipeline.runtime import SingleProcess
    from cosmos_dist.pipeline.text2world import Text2WorldPipeline

    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "a red ball"}])
    cfg = small_cfg(ckpt, out, f"prompts_file={prompts}", "output_layout=sharded")
    pipe = Text2WorldPipeline(cfg, SingleProcess())
    (video,) = collect_work(cfg).items
    pipe.load()
    (made,) = pipe("a red ball")
    assert made.sample_id == video.sample_id and made.metadata["identity"]["prompt_id"] == video.prompt_id
    record_layout(out, "sharded")
    mp4 = made.save(out)
    assert mp4 == sample_paths(out, made.sample_id, "sharded").video and mp4.is_file()
    summary = pipe.run()
    assert summary.skipped == [made.sample_id] and not summary.done
