"""io: atomic mp4 / JSON writes, the multi-process manifest, prompts files and stable sample ids."""
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from cosmos_dist.errors import InputError
from cosmos_dist.io import (
    BadLine,
    Manifest,
    PromptItem,
    build_sidecar,
    derive_sample_id,
    load_prompts,
    probe_video,
    read_manifest,
    read_video_frames,
    single_prompt_item,
    write_json_atomic,
    write_mp4_atomic,
)
from cosmos_dist.io.safefiles import is_temp_name
from cosmos_dist.io.prompts import read_prompts_file


def _frames(n=17, h=64, w=96):
    ramp = np.linspace(0, 255, w).astype(np.uint8)
    f = np.zeros((n, h, w, 3), np.uint8)
    f[..., 0] = ramp[None, None, :]
    f[..., 1] = np.arange(n, dtype=np.uint8)[:, None, None] * 10
    f[..., 2] = 128
    return f


# ---------------------------------------------------------------- video


def test_mp4_written_and_probed(tmp_path):
    frames = _frames()
    out = tmp_path / "sub" / "s1.mp4"
    assert write_mp4_atomic(out, frames, fps=24, crf=18) == 17
    info = probe_video(out)
    assert (info.frames, info.width, info.height) == (17, 96, 64)
    assert info.fps == pytest.approx(24.0)
    assert info.codec == "h264"
    back, meta = read_video_frames(out)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 3
    assert [p.name for p in out.parent.iterdir()] == ["s1.mp4"]  # no temp file left
    # Overwriting an existing file works (os.replace).
    write_mp4_atomic(out, frames[:9], fps=12)
    assert probe_video(out).frames == 9


def test_mp4_accepts_frame_iterables_and_odd_sizes(tmp_path):
    frames = _frames(9, 63, 95)
    with pytest.raises(InputError, match="even width and height"):
        write_mp4_atomic(tmp_path / "odd.mp4", frames, 24)
    assert not (tmp_path / "odd.mp4").exists()
    write_mp4_atomic(tmp_path / "odd.mp4", (f for f in frames), 24, pad_odd=True)
    info = probe_video(tmp_path / "odd.mp4")
    assert (info.frames, info.width, info.height) == (9, 96, 64)
    with pytest.raises(InputError, match="uint8"):
        write_mp4_atomic(tmp_path / "f.mp4", frames.astype(np.float32), 24)
    with pytest.raises(InputError, match="crf"):
        write_mp4_atomic(tmp_path / "f.mp4", _frames(1), 24, crf=60)
    with pytest.raises(InputError, match="no frames"):
        write_mp4_atomic(tmp_path / "f.mp4", [], 24)


def test_mp4_failing_frame_source_leaves_nothing(tmp_path):
    out = tmp_path / "bad.mp4"

    def source():
        frames = _frames(9)
        for i in range(5):
            yield frames[i]
        raise RuntimeError("decoder exploded")

    with pytest.raises(RuntimeError, match="decoder exploded"):
        write_mp4_atomic(out, source(), 24)
    assert list(tmp_path.iterdir()) == []

    def wrong_size():
        yield _frames(1)[0]
        yield _frames(1, 32, 32)[0]

    with pytest.raises(InputError, match="differs"):
        write_mp4_atomic(out, wrong_size(), 24)
    assert list(tmp_path.iterdir()) == []


def test_mp4_killed_writer_never_leaves_final_name(tmp_path):
    out = tmp_path / "killed.mp4"
    marker = tmp_path / "started"
    script = textwrap.dedent(
        f"""
        import time, pathlib
        import numpy as np
        from cosmos_dist.io import write_mp4_atomic
        def frames():
            for i in range(1000):
                if i == 5:
                    pathlib.Path({str(marker)!r}).write_text("x")
                    time.sleep(60)
                yield np.full((64, 64, 3), i % 255, np.uint8)
        write_mp4_atomic({str(out)!r}, frames(), 24)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 30
        while not marker.exists():
            assert proc.poll() is None, "writer exited early"
            assert time.time() < deadline, "writer never started"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)  # the orphaned ffmpeg sees EOF and finishes its (temporary) file
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "started"]
    assert all(is_temp_name(name) for name in leftovers)


# ---------------------------------------------------------------- JSON and sidecars


def test_write_json_atomic(tmp_path, monkeypatch):
    path = tmp_path / "a" / "s.json"
    write_json_atomic(path, {"prompt": "café", "n": 1})
    assert json.loads(path.read_text(encoding="utf-8")) == {"prompt": "café", "n": 1}
    write_json_atomic(path, {"n": 2})
    assert json.loads(path.read_text())["n"] == 2

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        write_json_atomic(path, {"n": 3})
    monkeypatch.undo()
    assert json.loads(path.read_text())["n"] == 2  # old content intact
    assert [p.name for p in path.parent.iterdir()] == ["s.json"]  # temp removed


def test_sidecar_schema(tmp_path):
    rec = build_sidecar(
        sample_id="p-0123456789ab",
        prompt="A robot arm.",
        negative_prompt="blurry",
        seed=1,
        sample_seed=987654321,
        model="7b_text2world",
        checkpoint={"path": "checkpoints/x/model.pt", "sha256": "abc"},
        sampler={"name": "euler", "steps": 35, "guidance": 7.0},
        height=704,
        width=1280,
        num_frames=121,
        fps=24,
        parallel={"world": 8, "dp": 1, "cfg": 2, "cp": 4, "cp_mode": "ulysses"},
        precision="bf16",
        timings={"text": 0.5, "sample": 100.123456, "decode": 3.0},
        notes=["prompt truncated from 600 to 512 T5 tokens"],
        source={"file": "prompts.jsonl", "line": 3},
        extra={"visual_input": "in.mp4"},
    )
    for key in (
        "prompt", "negative_prompt", "seed", "sample_seed", "sample_id", "model", "checkpoint", "sampler",
        "resolution", "num_frames", "fps", "parallel", "precision", "versions", "timings_s", "notes", "video",
    ):
        assert key in rec, key
    assert rec["resolution"] == {"height": 704, "width": 1280}
    assert rec["video"] == "p-0123456789ab.mp4"
    assert set(rec["versions"]) >= {"python", "torch", "cosmos_dist"}
    assert rec["timings_s"]["sample"] == pytest.approx(100.1235)
    write_json_atomic(tmp_path / "p.json", rec)
    assert json.loads((tmp_path / "p.json").read_text())["notes"] == rec["notes"]
    assert rec["source"] == {"file": "prompts.jsonl", "line": 3} and rec["extra"] == {"visual_input": "in.mp4"}

    # The same record from a resolution dict, a model dict and the file names.
    rec2 = build_sidecar(
        sample_id="s", prompt="cut", original_prompt="cut and more", negative_prompt=None, seed=1, sample_seed=2,
        model={"preset": "tiny", "kind": "text2world"}, checkpoint={}, sampler={"name": "euler"},
        resolution={"num_frames": 9, "height": 64, "width": 96, "fps": 24},
        files={"video": "s.mp4", "latent": "s.latent.pt"}, source_line=4,
    )
    assert rec2["resolution"] == {"height": 64, "width": 96} and (rec2["num_frames"], rec2["fps"]) == (9, 24)
    assert rec2["files"]["latent"] == "s.latent.pt" and rec2["video"] == "s.mp4"
    assert rec2["original_prompt"] == "cut and more" and rec2["source"] == {"line": 4}
    json.dumps(rec2)


# ---------------------------------------------------------------- manifest


def _manifest_worker(path, worker, count):
    m = Manifest(path, rank_info={"rank": worker, "world_size": 4}, fsync=False)
    for i in range(count):
        # Long reasons make each line bigger than a pipe buffer / page, so interleaving would show.
        m.record("failed" if i % 3 else "done", f"s-{worker}-{i}", reason="x" * (5000 + i), line=i + 1)


def test_manifest_from_several_processes(tmp_path):
    path = tmp_path / "manifest.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_manifest_worker, args=(str(path), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    raw = path.read_bytes().split(b"\n")
    assert raw[-1] == b""
    lines = [json.loads(r) for r in raw[:-1]]  # every line is valid JSON on its own
    assert len(lines) == 160
    ids = {e["sample_id"] for e in lines}
    assert ids == {f"s-{w}-{i}" for w in range(4) for i in range(40)}
    e = next(x for x in lines if x["sample_id"] == "s-2-4")
    assert e["status"] == "failed" and e["line"] == 5 and len(e["reason"]) == 5004
    assert e["rank_info"] == {"rank": 2, "world_size": 4} and "time" in e and "pid" in e


def test_manifest_statuses_and_torn_lines(tmp_path):
    m = Manifest(tmp_path / "manifest.jsonl", rank_info={})
    m.append(status="done", sample_id="a", line=None, reason=None)
    m.blocked("b", "video guardrail: face")
    m.skipped("c", "already done")
    m.failed(None, "invalid JSON", line=7)
    with pytest.raises(ValueError):
        m.record("finished", "d")
    with open(m.path, "ab") as f:
        f.write(b'{"status": "done", "sample_id": "tor')  # a writer killed mid-line
    entries = read_manifest(m.path)
    assert [(e["status"], e["sample_id"]) for e in entries] == [
        ("done", "a"), ("blocked", "b"), ("skipped", "c"), ("failed", None)
    ]
    assert entries[1]["reason"] == "video guardrail: face" and entries[3]["line"] == 7
    assert list(m) == entries


# ---------------------------------------------------------------- prompts


def _write_lines(path, lines):
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else line.encode("utf-8"))
            f.write(b"\n")
    return path


def test_prompts_file_good_and_bad_lines(tmp_path):
    lines = [
        json.dumps({"prompt": "A robot arm.", "id": "robot_01"}),                       # 1 ok, explicit id
        json.dumps({"prompt": "A city at night.", "seed": 5, "negative_prompt": "blur"}),  # 2 ok, derived
        "",                                                                             # 3 blank
        "   ",                                                                          # 4 blank
        "{not json",                                                                    # 5
        json.dumps(["prompt", "x"]),                                                    # 6 not an object
        json.dumps({"id": "x1"}),                                                       # 7 missing prompt
        json.dumps({"prompt": "   "}),                                                  # 8 empty prompt
        json.dumps({"prompt": 5}),                                                      # 9 prompt not a string
        json.dumps({"prompt": "ok", "id": ".hidden"}),                                  # 10 leading dot
        json.dumps({"prompt": "ok", "id": "a/b"}),                                      # 11 slash
        json.dumps({"prompt": "ok", "id": "x" * 129}),                                  # 12 too long
        json.dumps({"prompt": "again", "id": "robot_01"}),                              # 13 duplicate id
        json.dumps({"prompt": "ok", "seed": "7"}),                                      # 14 seed not int
        json.dumps({"prompt": "ok", "seed": True}),                                     # 15 seed bool
        json.dumps({"prompt": "ok", "negative_prompt": 3}),                             # 16
        b"\xff\xfe not utf-8",                                                          # 17
        json.dumps({"prompt": "A robot arm.", "visual_input": "in.mp4", "id": 42}),     # 18 ok, int id, extra
        json.dumps({"prompt": "A city at night.", "seed": 5, "negative_prompt": "blur"}),  # 19 duplicate of 2
        json.dumps({"prompt": "ok", "id": True}),                                       # 20 bool id
        json.dumps({"prompt": "ok", "seed": -1}),                                       # 21 negative seed
    ]
    path = _write_lines(tmp_path / "prompts.jsonl", lines)
    items, bad = load_prompts(path)
    assert [i.line_number for i in items] == [1, 2, 18, 19]
    assert [b.line_number for b in bad] == [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 20, 21]
    reasons = {b.line_number: b.reason for b in bad}
    assert "invalid JSON" in reasons[5]
    assert "object" in reasons[6]
    assert 'missing "prompt"' in reasons[7]
    assert "empty" in reasons[8]
    assert "string" in reasons[9]
    assert "safe file name" in reasons[10] and "safe file name" in reasons[11]
    assert "128" in reasons[12]
    assert "duplicate id" in reasons[13]
    assert "integer" in reasons[14] and "integer" in reasons[15]
    assert "negative_prompt" in reasons[16]
    assert "UTF-8" in reasons[17]

    robot, city, robot42, city2 = items
    assert robot == PromptItem(1, "robot_01", "A robot arm.", None, None, {})
    assert city.sample_id.startswith("p-") and len(city.sample_id) == 14
    assert (city.seed, city.negative_prompt) == (5, "blur")
    assert robot42.sample_id == "42" and robot42.extra == {"visual_input": "in.mp4"}
    assert city2.sample_id == city.sample_id + "-2"
    assert all(isinstance(b, BadLine) for b in bad)
    assert list(read_prompts_file(path)) == sorted(items + bad, key=lambda e: e.line_number)


def test_sample_ids_are_stable_and_position_independent(tmp_path):
    a = {"prompt": "A robot arm."}
    b = {"prompt": "A city at night.", "seed": 3}
    c = {"prompt": "A robot arm.", "negative_prompt": "blur"}
    first, _ = load_prompts(_write_lines(tmp_path / "1.jsonl", [json.dumps(x) for x in (a, b, c, a)]))
    second, _ = load_prompts(
        _write_lines(tmp_path / "2.jsonl", ["", json.dumps(c), "{bad", json.dumps(a), json.dumps(b), json.dumps(a)])
    )
    by_prompt = lambda items: sorted((i.sample_id, i.prompt, i.negative_prompt, i.seed) for i in items)
    assert by_prompt(first) == by_prompt(second)
    ids = [i.sample_id for i in first]
    assert len(set(ids)) == 4 and ids[3] == ids[0] + "-2"
    assert ids[0] != ids[2]  # the negative prompt is part of the identity
    # Key order and whitespace in the JSON do not matter.
    third, _ = load_prompts(_write_lines(tmp_path / "3.jsonl", ['{ "seed":3,   "prompt":"A city at night." }']))
    assert third[0].sample_id == first[1].sample_id
    # A prompt= run gets the same id as the same prompt in a file.
    assert single_prompt_item("A robot arm.").sample_id == ids[0]
    assert single_prompt_item("A city at night.", seed=3).sample_id == ids[1]
    assert derive_sample_id("A robot arm.") == ids[0]
    assert single_prompt_item("A robot arm.", name="my-video").sample_id == "my-video"
    with pytest.raises(InputError, match="safe file name"):
        single_prompt_item("A robot arm.", name="../x")
    with pytest.raises(InputError, match="empty"):
        single_prompt_item("  ")


def test_missing_prompts_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_prompts(tmp_path / "none.jsonl")
