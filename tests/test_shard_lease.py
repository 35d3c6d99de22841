"""A running shard is known as running: leases with a heartbeat, real processes, real SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cosmos_dist.io.records import write_json_atomic
from cosmos_dist.pipeline.lease import EXIT_SHARD_BUSY, ShardBusy, ShardLease, read_lease, shard_lease_path

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "COSMOS_LEASE_HEARTBEAT_S": "0.2"}


def make_prompts(tmp_path: Path, ids: list[str]) -> tuple[Path, Path]:
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"scene {i}"}) + "\n" for i in ids))
    out.mkdir()
    return prompts, out


def hold_in_subprocess(out: Path, shard: int, num_shards: int) -> subprocess.Popen:
    code = f"""
        import sys, time
        from cosmos_dist.pipeline.lease import ShardLease, shard_lease_path
        ShardLease(shard_lease_path({str(out)!r}, {shard}, {num_shards}), what="shard").acquire()
        print("held", flush=True)
        time.sleep(120)
        """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def status_json(prompts: Path, out: Path, n: int, *extra: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "cosmos_dist.commands.shard_status", "--prompts-file", str(prompts),
                        "--output-dir", str(out), "--num-shards", str(n), "--json", *extra],
                       env=ENV, capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def test_running_shard_is_not_resubmitted_and_its_temporaries_are_kept(tmp_path):
    ids = ["a.tmp-1", "b", "c", "d"]  # a legal id containing .tmp-
    prompts, out = make_prompts(tmp_path, ids)
    # the legal id is finished: its files must count as done and survive --clean-temp
    from cosmos_dist.pipeline.work import collect_work, compose_run_config

    first = collect_work(compose_run_config([], str(prompts), str(out), 1)).items[0].sample_id
    assert first.startswith("a.tmp-1_")
    (out / f"{first}.mp4").write_bytes(b"video")
    write_json_atomic(out / f"{first}.json", {"sample_id": first})
    holder = hold_in_subprocess(out, 0, 1)
    try:
        (out / ".b.mp4.tmp-999-00000000.mp4").write_bytes(b"being written")
        report = status_json(prompts, out, 1, "--clean-temp")
        assert report["running"] == [0] and report["unfinished"] == [] and report["sbatch"] is None
        assert report["shards"][0]["state"] == "running" and report["shards"][0]["done"] == 1
        assert report["temp_files_removed"] == []
        assert (out / ".b.mp4.tmp-999-00000000.mp4").exists()

        # a second claim of the shard is refused, naming the holder (the command's exit 4: test below)
        with pytest.raises(ShardBusy, match=f"already running .*pid {holder.pid}") as busy:
            ShardLease(shard_lease_path(out, 0, 1), what="shard-0000-of-0001").acquire()
        assert "\n" not in str(busy.value) and busy.value.exit_code == EXIT_SHARD_BUSY

        # the holder is killed for real: on its own host a dead pid frees the shard at once
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        report = status_json(prompts, out, 1, "--clean-temp")
        assert report["running"] == [] and report["unfinished"] == [0]
        assert report["temp_files_removed"] == [".b.mp4.tmp-999-00000000.mp4"]
        assert (out / f"{first}.mp4").exists() and (out / f"{first}.json").exists()
        assert report["shards"][0]["pending"] == 3
    finally:
        if holder.poll() is None:
            holder.kill()


def test_other_hosts_lease_lives_by_its_heartbeat(tmp_path):
    path = shard_lease_path(tmp_path, 3, 8)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"token": "t-other", "host": "node-elsewhere", "pid": 1, "stale_after_s": 2.0}))
    with pytest.raises(ShardBusy, match="shard-0003-of-0008 .* already running .*node-elsewhere"):
        ShardLease(path, what="shard-0003-of-0008 of out").acquire()
    old = time.time() - 5
    os.utime(path, (old, old))  # no heartbeat for longer than its stale_after_s: the holder is gone
    lease = ShardLease(path, what="shard-0003-of-0008 of out", heartbeat_s=0.1).acquire()
    try:
        rec = read_lease(path)
        assert rec["token"] == lease.token and rec["host"] == socket.gethostname() and rec["live"]
        time.sleep(0.5)
        assert read_lease(path)["age_s"] < 0.5  # the heartbeat keeps it fresh
    finally:
        lease.release()
    assert not path.exists()


def test_two_processes_race_for_one_shard_one_wins(tmp_path):
    code = f"""
        import sys, time
        from cosmos_dist.pipeline.lease import ShardBusy, ShardLease, shard_lease_path
        try:
            ShardLease(shard_lease_path({str(tmp_path)!r}, 0, 1), what="shard").acquire()
            print("won", flush=True)
            time.sleep(3)
        except ShardBusy:
            print("busy", flush=True)
        """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=ENV, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert results == ["busy", "busy", "busy", "won"]


def test_second_generate_on_a_running_shard_refuses_before_loading(tmp_path):
    prompts, out = make_prompts(tmp_path, ["x", "y"])
    holder = hold_in_subprocess(out, 0, 1)
    try:
        env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        r = subprocess.run([sys.executable, str(REPO / "generate.py"), "model=tiny_text2world", "height=32", "width=48",
                            "num_frames=9", "num_steps=2", "progress=false", f"checkpoint_dir={tmp_path / 'ckpt'}",
                            f"prompts_file={prompts}", f"output_dir={out}"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == EXIT_SHARD_BUSY, r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "shard-0000-of-0001" in errors[0] and "already running" in errors[0]
        assert not (tmp_path / "ckpt").exists()  # refused before any model file was made or loaded
        assert sorted(p.name for p in out.iterdir()) == [".shards"]
        # under torchrun the refusing rank leaves with the same code (the launcher reports each rank's)
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            str(REPO / "generate.py"), "model=tiny_text2world", "height=32", "width=48",
                            "num_frames=9", "num_steps=2", "progress=false", f"checkpoint_dir={tmp_path / 'ckpt'}",
                            f"prompts_file={prompts}", f"output_dir={out}", "parallel.cp_size=2",
                            "parallel.timeout_s=60"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=180)
        assert r.returncode != 0 and f"exitcode  : {EXIT_SHARD_BUSY}" in r.stderr, r.stderr[-3000:]
        assert "already running" in r.stderr and not (tmp_path / "ckpt").exists()
    finally:
        holder.kill()
        holder.wait(10)


def test_python_api_run_holds_the_lease_only_while_it_runs_and_calls_take_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from cosmos_dist import Text2WorldPipeline

    prompts, out = make_prompts(tmp_path, ["p"])
    pipe = Text2WorldPipeline.from_pretrained("checkpoints", model="tiny_text2world", height=32, width=48,
                                              num_frames=9, num_steps=2, progress=False,
                                              prompts_file=str(prompts), output_dir=str(out))
    lease = shard_lease_path(out, 0, 1)
    [done] = pipe.run().done
    assert done.startswith("p_s")  # prompt id p, its seed and settings
    assert pipe.lease is None and not lease.exists()  # given back when run() returns
    assert pipe.run().skipped == [done]  # a second run in the same process is not refused by the first

    holder = hold_in_subprocess(out, 0, 1)
    try:
        with pytest.raises(ShardBusy, match=f"already running .*pid {holder.pid}"):
            pipe.run()
        assert pipe.lease is None
        # the API's calls keep results in memory and save() writes one sample: no lease, so no refusal
        [video] = pipe("a cat", num_steps=2, seed=3)
        mp4 = video.save(out)
        assert mp4.is_file() and (out / f"{video.sample_id}.json").is_file()
        assert read_lease(lease)["pid"] == holder.pid and read_lease(lease)["live"]  # the holder's lease untouched
        assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    finally:
        holder.kill()
        holder.wait(10)


def test_video2world_prompt_run_lease_is_named_by_its_sample_id_with_the_input(tmp_path):
    """The same prompt on two images is two samples, so two leases; the same image again is refused."""
    import numpy as np
    from PIL import Image

    from cosmos_dist.configure import compose_config
    from cosmos_dist.pipeline.runtime import SingleProcess
    from cosmos_dist.pipeline.video2world import Video2WorldPipeline

    out = tmp_path / "out"
    images = []
    for i in range(2):
        images.append(tmp_path / f"in{i}.png")
        Image.fromarray(np.full((32, 48, 3), 40 * i, np.uint8)).save(images[-1])

    def pipe(image):
        cfg = compose_config(["model=tiny_video2world", f"checkpoint_dir={tmp_path / 'ckpt'}", f"output_dir={out}",
                              "prompt=a cat", f"input_path={image}", "height=32", "width=48", "num_frames=9"])
        return Video2WorldPipeline(cfg, SingleProcess())

    first, second = pipe(images[0]), pipe(images[1])
    try:
        ids = []
        for p in (first, second):
            work, _ = p.prepare()
            ids.append(work.items[0].sample_id)
            assert p.lease.path == out / f".{ids[-1]}.lease" and read_lease(p.lease.path)["live"]
        assert ids[0] != ids[1]
        with pytest.raises(ShardBusy, match="already running"):
            pipe(images[0]).prepare()
    finally:
        for p in (first, second):
            if p.lease is not None:
                p.lease.release()
    assert not [p for p in out.iterdir() if p.name.endswith(".lease")]
