"""The Slurm scripts against a real one-node Slurm cluster (opt-in: `pytest -m slurm`).

The cluster (munged + slurmctld + slurmd, own ports, key, socket and state under a temp folder) is
started by tests/slurm/minicluster.py and always stopped at the end. Needs root and Debian's slurm
packages: `bash tests/slurm/setup_slurm.sh`. Without them the tests skip, unless
COSMOS_REQUIRE_SLURM=1 (CI), where they fail.

The tests without the marker run slurm/generate_array.sbatch outside Slurm (signal handling only).
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "slurm"))
from minicluster import MiniSlurm, missing_binaries  # noqa: E402

from cosmos_dist.io.records import read_manifest  # noqa: E402
from cosmos_dist.pipeline.work import shard_of  # noqa: E402

ARRAY = REPO / "slurm" / "generate_array.sbatch"
MULTINODE = REPO / "slurm" / "generate_multinode.sbatch"
FAKE = REPO / "tests" / "slurm" / "fake_generate.py"
SHARD_STATUS = REPO / "tools" / "shard_status.py"
NUM_SHARDS = 3
TINY = ["model=tiny_text2world", "num_steps=2", "progress=false"]


# ---- helpers -------------------------------------------------------------------------------------
def prompt_of(sample_id: str) -> str:
    """The prompt id in a sample id `{prompt_id}_s{seed}_{settings}` (cosmos_dist/io/identity.py)."""
    return sample_id.rsplit("_s", 1)[0]


def sidecar_stems(out: Path) -> list[str]:
    return sorted(p.stem for p in out.glob("*.json") if not p.name.startswith("."))


def write_prompts(path: Path, n: int = 12) -> list[str]:
    ids = [f"clip-{i:02d}" for i in range(n)]
    with open(path, "w") as f:
        for i, sid in enumerate(ids):
            f.write(json.dumps({"id": sid, "prompt": f"a robot arm stacks {i + 1} red cubes on a table"}) + "\n")
    return ids


def shard_status(prompts: Path, out: Path, *extra: str, json_out: bool = False) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(SHARD_STATUS), "--prompts-file", str(prompts), "--output-dir", str(out),
            "--num-shards", str(NUM_SHARDS), "--script", str(ARRAY), *(["--json"] if json_out else []), *extra]
    return subprocess.run(argv, capture_output=True, text=True, check=True, cwd=REPO)


# A requeued job waits out Slurm's own hold (Reason=BeginTime, cred_expire + 1 s: 11 s on the test
# cluster, see MiniSlurm). The tests never shorten it with `scontrol update StartTime=now`: a relaunch
# in the same second as the requeue is refused by slurmd (revoked credential) and the job ends FAILED.


def wait_jobs(cluster: MiniSlurm, timeout: float, settle: float = 4.0) -> None:
    """Until no job is active for `settle` seconds: a job that requeues itself passes through states
    squeue does not list as active (completing, then pending with a begin time) for a moment."""
    end = time.monotonic() + timeout
    idle_since = None
    while time.monotonic() < end:
        if cluster.active_jobs():
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= settle:
            return
        time.sleep(0.5)
    raise AssertionError(f"jobs still active after {timeout:.0f} s:\n{cluster.run(['squeue'], check=False).stdout}")


def wait_for_first_sample(cluster: MiniSlurm, out: Path, ids: list[str], logs: Path, timeout: float = 150) -> list[str]:
    """Until one of `ids` is done; fails early when no job is left that could make it."""
    deadline = time.monotonic() + timeout
    while True:
        done = [i for i in ids if any(out.glob(f"{i}_s*.json"))]
        if done:
            return done
        if time.monotonic() > deadline or not cluster.active_jobs():
            raise AssertionError("no sample was produced:\n" + logs_text(logs) + cluster.logs())
        time.sleep(0.2)


def logs_text(folder: Path) -> str:
    return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')}" for p in sorted(folder.glob("*.log")))


def check_outputs(out: Path, ids: list[str], *, real_videos: bool) -> None:
    """Every sample exactly once: one mp4 + one sidecar under final names, one `done` line each."""
    finals = sorted(p.name for p in out.iterdir()
                    if p.is_file() and not p.name.startswith(".") and p.name != "manifest.jsonl")
    stems = sidecar_stems(out)
    assert sorted(prompt_of(s) for s in stems) == sorted(ids), stems  # one sample per prompt
    assert finals == sorted([f"{s}.json" for s in stems] + [f"{s}.mp4" for s in stems]), finals
    for sid in stems:
        side = json.loads((out / f"{sid}.json").read_text())
        assert side["sample_id"] == sid
        if real_videos:
            from cosmos_dist.io.video import probe_video

            info = probe_video(out / f"{sid}.mp4")
            assert (info.frames, info.width, info.height) == (17, 192, 128), (sid, info)
    done = Counter(prompt_of(e["sample_id"]) for e in read_manifest(out / "manifest.jsonl") if e["status"] == "done")
    assert done == Counter({sid: 1 for sid in ids}), done
    for i in range(NUM_SHARDS):
        assert (out / ".shards" / f"shard-{i:04d}-of-{NUM_SHARDS:04d}.done.json").is_file()
        assert not (out / ".shards" / f"shard-{i:04d}-of-{NUM_SHARDS:04d}.stopped.json").exists()
        assert not (out / ".shards" / f"shard-{i:04d}-of-{NUM_SHARDS:04d}.stop").exists()


# ---- the cluster ---------------------------------------------------------------------------------
def _opted_in(config) -> bool:
    expr = config.getoption("-m") or ""
    return os.environ.get("COSMOS_SLURM_TESTS") == "1" or ("slurm" in expr and "not slurm" not in expr)


@pytest.fixture
def cluster(request, tmp_path_factory):
    if not _opted_in(request.config):
        pytest.skip("opt-in: run with -m slurm (or COSMOS_SLURM_TESTS=1)")
    required = os.environ.get("COSMOS_REQUIRE_SLURM") == "1"
    problem = None
    if os.geteuid() != 0:
        problem = "needs root (slurmd starts jobs as the submitting user)"
    elif missing_binaries():
        problem = f"missing {', '.join(missing_binaries())}: run tests/slurm/setup_slurm.sh"
    if problem:
        if required:
            pytest.fail(problem)
        pytest.skip(problem)
    c = MiniSlurm(tmp_path_factory.mktemp("slurm"), kill_wait=5)
    try:
        c.start()
        yield c
    finally:
        notes = c.stop()
        assert not c.daemons_running(), f"daemons still running: {c.daemons_running()}"
        assert not c._our_job_pids(), "job processes outlived the cluster"
        if notes:
            print("teardown:", notes)


# ---- tests ---------------------------------------------------------------------------------------
@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_array_cancel_and_resubmit_tiny_model(cluster, tmp_path):
    """3 shards of 12 prompts with the real generate.py; one element is cancelled mid-run and
    tools/shard_status.py's sbatch line finishes it."""
    t0 = time.monotonic()
    prompts, out, ckpt = tmp_path / "prompts.jsonl", tmp_path / "out", tmp_path / "checkpoints"
    ids = write_prompts(prompts)
    per_shard = Counter(shard_of(i, NUM_SHARDS) for i in ids)
    assert len(per_shard) == NUM_SHARDS
    (tmp_path / "logs").mkdir()
    overrides = [*TINY, f"prompts_file={prompts}", f"output_dir={out}", f"checkpoint_dir={ckpt}", f"num_shards={NUM_SHARDS}"]

    job = cluster.sbatch([f"--array=0-{NUM_SHARDS - 1}", str(ARRAY), *overrides], cwd=tmp_path)

    # Cancel the biggest shard's element once it has written at least one sample but not all.
    victim = per_shard.most_common(1)[0][0]
    victim_ids = [i for i in ids if shard_of(i, NUM_SHARDS) == victim]
    done = wait_for_first_sample(cluster, out, victim_ids, tmp_path / "logs")
    assert len(done) < len(victim_ids), "the element finished before it could be cancelled"
    # recorded as the elements started, so shard_status has them before any element ends
    record = json.loads((out / ".shards" / f"run-of-{NUM_SHARDS:04d}.started.json").read_text())
    assert record["overrides"] == overrides, record
    cluster.run(["scancel", f"{job}_{victim}"])
    wait_jobs(cluster, 180)
    print(f"first submission over after {time.monotonic() - t0:.0f} s")

    status = shard_status(prompts, out)
    assert "resubmit the unfinished shards with:" in status.stdout, status.stdout + logs_text(tmp_path / "logs")
    line = status.stdout.strip().splitlines()[-1]
    argv = shlex.split(line)
    assert argv[:2] == ["sbatch", f"--array={victim}"], line
    assert all(o in argv for o in overrides), line  # the recorded overrides came back
    # scancel is SIGTERM then, KillWait (5 s here) later, SIGKILL: the cancelled element writes its
    # stopped marker only if it gets that far. The sidecars are the truth either way.
    assert not (out / ".shards" / f"shard-{victim:04d}-of-0003.done.json").exists()

    cluster.sbatch(argv[1:], cwd=tmp_path)
    wait_jobs(cluster, 150)
    print(f"resubmission over after {time.monotonic() - t0:.0f} s")

    final = json.loads(shard_status(prompts, out, "--clean-temp", json_out=True).stdout)
    assert final["unfinished"] == [] and final["sbatch"] is None, final
    assert all(s["state"] == "done" for s in final["shards"]), final
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    check_outputs(out, ids, real_videos=True)
    log = logs_text(tmp_path / "logs")
    assert f"cosmos-gen-{job}_{victim}.log" in log and "finished" in log


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_array_usr1_warning_requeues_and_resumes(cluster, tmp_path):
    """The time-limit warning (USR1 to the batch shell): the element stops between samples,
    records a stopped marker, requeues itself and the requeued run finishes the shard."""
    prompts, out, ckpt = tmp_path / "prompts.jsonl", tmp_path / "out", tmp_path / "checkpoints"
    ids = write_prompts(prompts)
    (tmp_path / "logs").mkdir()
    victim = Counter(shard_of(i, NUM_SHARDS) for i in ids).most_common(1)[0][0]
    victim_ids = [i for i in ids if shard_of(i, NUM_SHARDS) == victim]
    overrides = [*TINY, f"prompts_file={prompts}", f"output_dir={out}", f"checkpoint_dir={ckpt}", f"num_shards={NUM_SHARDS}"]
    job = cluster.sbatch([f"--array={victim}", str(ARRAY), *overrides], cwd=tmp_path)

    wait_for_first_sample(cluster, out, victim_ids, tmp_path / "logs")
    cluster.run(["scancel", "--batch", "--signal=USR1", f"{job}_{victim}"])
    marker = out / ".shards" / f"shard-{victim:04d}-of-0003.stopped.json"
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline, "no stopped marker:\n" + logs_text(tmp_path / "logs")
        time.sleep(0.2)
    stopped = json.loads(marker.read_text())
    assert stopped["reason"] == "USR1" and stopped["counts"]["pending"] > 0, stopped

    wait_jobs(cluster, 180)
    log = logs_text(tmp_path / "logs")
    assert "requeueing" in log and "(restart 1)" in log, log + cluster.logs()
    jobs = {j["JobId"]: j for j in cluster.jobs()}
    assert any(j.get("Restarts") == "1" and j.get("JobState") == "COMPLETED" for j in jobs.values()), (jobs, cluster.logs())
    assert (out / ".shards" / f"shard-{victim:04d}-of-0003.done.json").is_file()
    assert not marker.exists()
    assert sorted(prompt_of(s) for s in sidecar_stems(out)) == sorted(victim_ids)
    done = Counter(prompt_of(e["sample_id"]) for e in read_manifest(out / "manifest.jsonl") if e["status"] == "done")
    assert done == Counter({sid: 1 for sid in victim_ids}), done


@pytest.mark.slurm
@pytest.mark.timeout(120)
def test_multinode_script_rendezvous_and_requeue(cluster, tmp_path):
    """generate_multinode.sbatch (on the one node there is): srun + c10d rendezvous on the head
    node's address, stop file on USR1, requeue, resume. With the stand-in entry for speed."""
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    ids = write_prompts(prompts)
    (tmp_path / "logs").mkdir()
    job = cluster.sbatch(["--nodes=1", str(MULTINODE), f"prompts_file={prompts}", f"output_dir={out}", "fake_seconds=0.7"],
                         cwd=tmp_path, env={"COSMOS_GENERATE": str(FAKE)})
    wait_for_first_sample(cluster, out, ids, tmp_path / "logs", timeout=60)
    cluster.run(["scancel", "--batch", "--signal=USR1", job])
    # The job requeues itself; between its end and the requeued start Slurm may list it in a final
    # state for a moment, so wait for the restart to show in the log, then for the jobs to finish.
    deadline = time.monotonic() + 60
    while "(restart 1)" not in logs_text(tmp_path / "logs") and time.monotonic() < deadline:
        time.sleep(0.5)
    wait_jobs(cluster, 60)
    log = logs_text(tmp_path / "logs")
    assert "rendezvous 127.0.0.1:" in log and "requeueing" in log and "(restart 1)" in log, log + cluster.logs()
    jobs = cluster.jobs()
    assert [(j.get("JobState"), j.get("Restarts")) for j in jobs] == [("COMPLETED", "1")], (jobs, cluster.logs())
    assert sorted(prompt_of(s) for s in sidecar_stems(out)) == sorted(ids)
    done = Counter(prompt_of(e["sample_id"]) for e in read_manifest(out / "manifest.jsonl") if e["status"] == "done")
    assert done == Counter({sid: 1 for sid in ids}), done
    assert (out / ".shards" / "shard-0000-of-0001.done.json").is_file()


# ---- the array script outside Slurm (no marker: always runs) ----------------------------------
def _run_script_locally(tmp_path: Path, extra_env: dict, args: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update({"COSMOS_DIST_ROOT": str(REPO), "COSMOS_GENERATE": str(FAKE), "SLURM_ARRAY_TASK_ID": "0", **extra_env})
    return subprocess.Popen(["bash", str(ARRAY), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_array_script_stops_on_usr1_without_slurm(tmp_path):
    from types import SimpleNamespace

    from cosmos_dist.pipeline.work import collect_work

    prompts, out = tmp_path / "p.jsonl", tmp_path / "out"
    write_prompts(prompts, 6)
    # The fake generator knows no settings: its sample ids are those of an empty settings set.
    ids = [it.sample_id for it in collect_work(SimpleNamespace(prompt=None, prompts_file=str(prompts), num_shards=1,
                                                               shard_index=0)).items]
    proc = _run_script_locally(tmp_path, {}, [f"prompts_file={prompts}", f"output_dir={out}", "num_shards=1", "fake_seconds=0.5"])
    deadline = time.monotonic() + 60
    while not any((out / f"{i}.json").exists() for i in ids):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() is not None else "timeout"
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3, text  # stopped with samples pending; no SLURM_JOB_ID, so no requeue
    assert "received USR1" in text and "requeueing" not in text, text
    marker = json.loads((out / ".shards" / "shard-0000-of-0001.stopped.json").read_text())
    assert marker["reason"] == "USR1" and 0 < marker["counts"]["done"] < len(ids)
    assert marker["next_sample"] == ids[marker["counts"]["done"]]  # file order: where it stopped
    assert not (out / ".shards" / "shard-0000-of-0001.stop").exists()

    proc = _run_script_locally(tmp_path, {}, [f"prompts_file={prompts}", f"output_dir={out}", "num_shards=1", "fake_seconds=0.05"])
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, text
    assert (out / ".shards" / "shard-0000-of-0001.done.json").is_file()
    assert not (out / ".shards" / "shard-0000-of-0001.stopped.json").exists()
    done = Counter(e["sample_id"] for e in read_manifest(out / "manifest.jsonl") if e["status"] == "done")
    assert done == Counter({sid: 1 for sid in ids})


def test_array_script_refuses_bad_arguments(tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 2)
    for args, message in (
        ([f"prompts_file={prompts}"], "num_shards"),
        ([f"prompts_file={prompts}", "num_shards=2", "shard_index=1"], "shard_index"),
        ([f"prompts_file={prompts}", "num_shards=2", "parallel.cp_size=2"], "cannot hold cp=2"),
        (["num_shards=2"], "prompts_file"),
        (["--multirun", f"prompts_file={prompts}", "num_shards=2", "guidance=5,7"], "multirun"),
    ):
        proc = _run_script_locally(tmp_path, {"COSMOS_NPROC_PER_NODE": "1"}, args)
        text, _ = proc.communicate(timeout=30)
        assert proc.returncode == 2 and message in text, (args, text)
