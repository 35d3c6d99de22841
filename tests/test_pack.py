"""`cosmos-dist pack` (WebDataset tars + Parquet index) and `cosmos-dist manifest` (latest status per sample)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cosmos_dist.commands import manifest as manifest_cmd
from cosmos_dist.commands import pack as pack_cmd
from cosmos_dist.io.paths import record_layout, recorded_layout, sample_paths
from cosmos_dist.io.records import Manifest, build_sidecar, write_json_atomic
from cosmos_dist.io.video import write_mp4_atomic

REPO = Path(__file__).resolve().parent.parent
wds = pytest.importorskip("webdataset")
pq = pytest.importorskip("pyarrow.parquet")


def finish_sample(out: Path, sid: str, seed: int = 1, shade: int = 0) -> bytes:
    """A finished sample where the tree's recorded layout puts it (flat where none is recorded)."""
    d = sample_paths(out, sid, recorded_layout(out) or "flat").folder
    folder = d.relative_to(out).as_posix() if d != out else ""
    d.mkdir(parents=True, exist_ok=True)
    frames = np.full((9, 32, 48, 3), shade, np.uint8)
    frames[:, : 4 + shade % 20] = 255 - shade
    write_mp4_atomic(d / f"{sid}.mp4", frames, 24)
    side = build_sidecar(sample_id=sid, prompt=f"prompt of {sid}", negative_prompt=None, seed=seed, sample_seed=seed * 7,
                         model={"preset": "tiny_text2world"}, checkpoint={}, sampler={"num_steps": 2, "guidance": 7.0},
                         height=32, width=48, num_frames=9, fps=24, timings={"total_s": 1.5},
                         video=f"{folder}/{sid}.mp4" if folder else None)
    write_json_atomic(d / f"{sid}.json", side)
    Manifest(out / "manifest.jsonl", rank_info={}).done(sid)
    return (d / f"{sid}.mp4").read_bytes()


def read_tars(dest: Path) -> dict[str, dict]:
    urls = [str(p) for p in sorted(dest.glob("samples-*.tar"))]
    return {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False)}


@pytest.fixture
def tree(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    record_layout(out, "sharded")  # every sample two hash-named folders down (io/paths.py)
    videos = {sid: finish_sample(out, sid, shade=10 * i) for i, sid in enumerate(["p-000000000001", "shot.v2", "c"])}
    videos["deep-1"] = finish_sample(out, "deep-1", shade=90)
    m = Manifest(out / "manifest.jsonl", rank_info={})
    m.failed("bad-1", "CUDA out of memory")
    m.failed("c", "first try failed")  # then done (above, earlier in time?) -- the sidecar decides
    m.blocked("blk", "video guardrail")
    # still being written: an mp4 and a temporary, no sidecar
    (out / "writing.mp4").write_bytes(b"partial")
    (out / ".writing.json.tmp-1-00000000").write_text("{")
    # another run's tree (a --multirun combination) inside this one: not this tree's samples
    finish_sample(out / "seed=5", "other", seed=5)
    return out, videos


def test_pack_round_trip_through_webdataset_and_pyarrow(tree):
    out, videos = tree
    dest = out / "webdataset"
    assert pack_cmd.main(["--output-dir", str(out), "--shard-size", "3KB"]) == 0
    tars = sorted(p.name for p in dest.glob("samples-*.tar"))
    assert len(tars) >= 2 and tars[0] == "samples-000000.tar"  # the target size splits them
    got = read_tars(dest)
    assert {pack_cmd.sample_id_of_key(k) for k in got} == set(videos)
    for key, s in got.items():
        sid = pack_cmd.sample_id_of_key(key)
        assert s["mp4"] == videos[sid]
        assert json.loads(s["json"])["sample_id"] == sid
    assert "shot%2Ev2" in got  # a dotted id keeps one key (webdataset splits names at the first dot)

    rows = {r["sample_id"]: r for r in pq.read_table(dest / "index.parquet").to_pylist()}
    assert set(rows) == set(videos) | {"bad-1", "blk"}
    assert rows["bad-1"]["status"] == "failed" and rows["bad-1"]["reason"] == "CUDA out of memory"
    assert rows["bad-1"]["shard"] is None and rows["blk"]["status"] == "blocked"
    deep = rows["deep-1"]
    where = sample_paths(out, "deep-1", "sharded").folder.relative_to(out).as_posix()
    assert deep["status"] == "done" and deep["video"] == f"{where}/deep-1.mp4" and deep["sidecar"] == f"{where}/deep-1.json"
    assert deep["prompt"] == "prompt of deep-1" and deep["seed"] == 1 and deep["sample_seed"] == 7
    assert (deep["num_steps"], deep["guidance"], deep["height"], deep["width"], deep["num_frames"]) == (2, 7.0, 32, 48, 9)
    assert deep["total_s"] == 1.5 and json.loads(deep["settings"])["model"] == {"preset": "tiny_text2world"}
    assert rows["c"]["status"] == "done" and rows["c"]["attempts"] == 2
    for sid in videos:  # every packed row names the tar that holds it
        assert rows[sid]["key"] in read_tars(dest) and (dest / rows[sid]["shard"]).is_file()
    assert not [p for p in dest.iterdir() if p.name.startswith(".") and p.name != ".pack.lease"]


def test_pack_is_idempotent_and_adds_only_new_samples(tree):
    out, videos = tree
    dest = out / "webdataset"
    pack_cmd.main(["--output-dir", str(out)])
    first = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in dest.glob("samples-*.tar")}
    index1 = pq.read_table(dest / "index.parquet").to_pylist()
    pack_cmd.main(["--output-dir", str(out)])  # nothing new: same tars, same index
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in dest.glob("samples-*.tar")} == first
    assert pq.read_table(dest / "index.parquet").to_pylist() == index1

    videos["late"] = finish_sample(out, "late", shade=200)  # a shard still running finished one more
    pack_cmd.main(["--output-dir", str(out)])
    tars = sorted(p.name for p in dest.glob("samples-*.tar"))
    assert tars == sorted(first) + ["samples-000001.tar"]
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in dest.glob("samples-*.tar") if p.name in first} == first
    assert {pack_cmd.sample_id_of_key(k) for k in read_tars(dest)} == set(videos)

    # --repack rebuilds from scratch with the same content
    pack_cmd.main(["--output-dir", str(out), "--repack"])
    assert sorted(p.name for p in dest.glob("samples-*.tar")) == ["samples-000000.tar"]
    assert {pack_cmd.sample_id_of_key(k): s["mp4"] for k, s in read_tars(dest).items()} == videos


def test_manifest_command_merges_latest_status(tree, tmp_path, capsys):
    out, videos = tree
    Manifest(out / "manifest.jsonl", rank_info={}).failed("bad-1", "second try: still out of memory")
    Manifest(out / "manifest.jsonl", rank_info={}).skipped("c", "already done")
    rows = manifest_cmd.merged_status(out)
    assert rows["bad-1"]["status"] == "failed" and rows["bad-1"]["attempts"] == 2
    assert rows["bad-1"]["reason"] == "second try: still out of memory"
    assert rows["c"]["status"] == "done" and rows["deep-1"]["sidecar"].endswith("/deep-1.json")
    assert "other" not in rows and "writing" not in rows
    target = tmp_path / "status.parquet"
    r = subprocess.run([sys.executable, "-m", "cosmos_dist.commands.manifest", "--output-dir", str(out),
                        "--status", "failed", "--write", str(target)], capture_output=True, text=True, check=True)
    assert "6 samples: 1 blocked, 4 done, 1 failed" in r.stdout and "bad-1\tsecond try" in r.stdout
    assert {x["sample_id"]: x["status"] for x in pq.read_table(target).to_pylist()}["blk"] == "blocked"


def test_pack_refuses_a_video_outside_the_tree(tmp_path):
    out = tmp_path / "out"
    finish_sample(out, "s1")
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"not yours")
    (out / "s1.mp4").unlink()
    (out / "s1.mp4").symlink_to(secret)
    pack_cmd.main(["--output-dir", str(out)])
    rows = pq.read_table(out / "webdataset" / "index.parquet").to_pylist()
    assert rows[0]["status"] == "incomplete" and rows[0]["shard"] is None
    assert not list((out / "webdataset").glob("*.tar"))
