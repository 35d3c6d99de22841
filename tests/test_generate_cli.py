"""`python generate.py ...` end to end, as a user runs it: a subprocess in a fresh working directory,
on the tiny random-weight model (created once per session under a shared checkpoint_dir).

Every run uses few steps and no progress bars so each takes seconds on a CPU."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cosmos_dist.io.prompts import derive_sample_id
from cosmos_dist.io.records import read_manifest
from cosmos_dist.io.video import probe_video

ROOT = Path(__file__).resolve().parents[1]
GENERATE = ROOT / "generate.py"
TINY = {"num_frames": 17, "height": 128, "width": 192, "fps": 24}  # conf/model/tiny_text2world.yaml
FAST = ("model=tiny_text2world", "num_steps=3", "progress=false")

pytestmark = pytest.mark.slow  # about 2 minutes in all on a busy 2-core machine


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """One checkpoint_dir for the whole session: the tiny files are written by the first run."""
    return tmp_path_factory.mktemp("checkpoints")


def _env() -> dict:
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _argv(ckpt: Path, *overrides: str, fast: bool = True) -> list[str]:
    return [sys.executable, str(GENERATE), *(FAST if fast else ()), f"checkpoint_dir={ckpt}", *overrides]


def generate(cwd: Path, ckpt: Path, *overrides: str, fast: bool = True, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run(_argv(ckpt, *overrides, fast=fast), cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def sid_of(out: Path, prompt_id: str) -> str:
    """The sample id of prompt `prompt_id`'s only video in `out` ({prompt_id}_s{seed}_{settings})."""
    (side,) = out.glob(f"{prompt_id}_s*.json")
    return side.stem


def prompt_id_of(sample_id: str) -> str:
    return sample_id.rsplit("_", 2)[0]


def sidecars(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json") if not p.name.startswith(".")}


def final_mp4s(out: Path) -> list[Path]:
    """mp4s under a final name (not the writer's `{name}.mp4.tmp-<pid>.mp4`)."""
    return [p for p in out.glob("*.mp4") if ".tmp-" not in p.name]


def check_video(path: Path, frames=TINY["num_frames"], height=TINY["height"], width=TINY["width"], fps=TINY["fps"]):
    info = probe_video(path)
    assert (info.frames, info.height, info.width) == (frames, height, width), info
    assert info.fps == pytest.approx(fps), info
    ffprobe = shutil.which("ffprobe")
    if ffprobe:
        res = subprocess.run(
            [ffprobe, "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
             "stream=codec_name,pix_fmt,width,height,r_frame_rate,nb_read_frames", "-of", "json", str(path)],
            capture_output=True, text=True, timeout=60, check=True,
        )
        stream = json.loads(res.stdout)["streams"][0]
        assert stream["codec_name"] == "h264" and stream["pix_fmt"] == "yuv420p"
        assert (int(stream["nb_read_frames"]), stream["height"], stream["width"]) == (frames, height, width)
        num, den = map(int, stream["r_frame_rate"].split("/"))
        assert num / den == pytest.approx(fps)
    return info


def assert_clean_failure(proc: subprocess.CompletedProcess, code: int = 2):
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert "models loaded" not in proc.stderr  # refused before any model loads


def output_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# ---- one prompt ------------------------------------------------------------------------------------------
PROMPT = "a robot walks through a warehouse"


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, ckpt):
    cwd = tmp_path_factory.mktemp("single")
    t0 = time.perf_counter()
    proc = generate(cwd, ckpt, f"prompt={PROMPT}", "seed=5", "guidance=6")
    return cwd, proc, time.perf_counter() - t0


def test_single_prompt(single_run, ckpt):
    cwd, proc, _ = single_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "RANDOM WEIGHTS" in proc.stderr and "noise-like" in proc.stderr
    out = cwd / "outputs"
    sid = sid_of(out, derive_sample_id(PROMPT))  # same prompt -> same file name
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{sid}.mp4", f"{sid}.json", "manifest.jsonl", ".layout.json"])
    check_video(out / f"{sid}.mp4")

    from cosmos_dist.config import DEFAULT_NEGATIVE_PROMPT
    from cosmos_dist.sampling import sample_seed

    side = json.loads((out / f"{sid}.json").read_text())
    assert side["sample_id"] == sid and side["video"] == f"{sid}.mp4"
    assert side["prompt"] == PROMPT
    assert side["negative_prompt"] == DEFAULT_NEGATIVE_PROMPT
    assert side["seed"] == 5 and side["sample_seed"] == sample_seed(5, derive_sample_id(PROMPT))  # noise: prompt id
    assert side["model"] == {"preset": "tiny_text2world", "kind": "text2world", "random_weights": True}
    ck = side["checkpoint"]
    assert Path(ck["path"]).resolve() == (ckpt / "tiny-random/Cosmos-Predict1-Tiny-Text2World/model.pt").resolve()
    assert ck["size"] > 0 and ck["fingerprint"].startswith("sha256:")
    assert side["sampler"]["name"] == "euler" and side["sampler"]["num_steps"] == 3
    assert side["sampler"]["guidance"] == 6
    assert side["resolution"] == {"height": TINY["height"], "width": TINY["width"]}
    assert side["num_frames"] == TINY["num_frames"] and side["fps"] == TINY["fps"]
    assert side["precision"]["dit"] == "float32"  # auto on the CPU
    assert {"python", "torch", "cosmos_dist"} <= set(side["versions"])
    assert {"text_encode_s", "sampling_s", "decode_s", "write_s", "total_s"} <= set(side["timings_s"])
    assert side["parallel"]["world_size"] == 1
    cfg = side["extra"]["config"]
    assert cfg["prompt"] == PROMPT and cfg["seed"] == 5 and cfg["num_steps"] == 3 and cfg["model"]["preset"] == "tiny_text2world"

    manifest = read_manifest(out / "manifest.jsonl")
    assert [(m["status"], m["sample_id"]) for m in manifest] == [("done", sid)]


def test_rerun_skips_done_samples(single_run, ckpt):
    cwd, first, first_s = single_run
    assert first.returncode == 0, first.stderr
    sid = sid_of(cwd / "outputs", derive_sample_id(PROMPT))
    before = (cwd / "outputs" / f"{sid}.mp4").stat().st_mtime_ns
    t0 = time.perf_counter()
    proc = generate(cwd, ckpt, f"prompt={PROMPT}", "seed=5", "guidance=6")
    rerun_s = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stderr and "models loaded" not in proc.stderr
    assert (cwd / "outputs" / f"{sid}.mp4").stat().st_mtime_ns == before
    manifest = read_manifest(cwd / "outputs" / "manifest.jsonl")
    assert [m["status"] for m in manifest] == ["done", "skipped"]
    print(f"first run {first_s:.1f} s, rerun {rerun_s:.1f} s")


# ---- prompts files ---------------------------------------------------------------------------------------
def test_prompts_file_with_bad_lines(tmp_path, ckpt):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [
        {"prompt": "a red ball rolls", "id": "red"},
        '{"prompt": "unterminated',
        {"prompt": "a green hill"},
        {"id": "no-prompt", "seed": 3},
        "",
        {"prompt": "a blue cube", "seed": 9},
    ])
    proc = generate(tmp_path, ckpt, f"prompts_file={prompts}", "output_dir=out")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "line 2" in proc.stderr and "line 4" in proc.stderr  # the summary names them
    out = tmp_path / "out"
    ids = [sid_of(out, p) for p in ("red", derive_sample_id("a green hill"), derive_sample_id("a blue cube", seed=9))]
    for sid in ids:
        check_video(out / f"{sid}.mp4")
        assert (out / f"{sid}.json").is_file()
    assert sidecars(out)[ids[2]]["seed"] == 9
    manifest = read_manifest(out / "manifest.jsonl")
    failed = {m["line"]: m["reason"] for m in manifest if m["status"] == "failed"}
    assert set(failed) == {2, 4}
    assert "invalid JSON" in failed[2]
    assert "prompt" in failed[4] and "missing" in failed[4]
    assert sorted(m["sample_id"] for m in manifest if m["status"] == "done") == sorted(ids)
    assert {m["line"] for m in manifest if m["status"] == "done"} == {1, 3, 6}

    # A rerun makes nothing new, and still reports the broken lines (they are still broken).
    again = generate(tmp_path, ckpt, f"prompts_file={prompts}", "output_dir=out")
    assert again.returncode == 1 and "models loaded" not in again.stderr
    new = read_manifest(out / "manifest.jsonl")[len(manifest):]
    assert sorted(m["status"] for m in new) == ["failed", "failed", "skipped", "skipped", "skipped"]


def test_killed_run_leaves_no_partial_final_files(tmp_path, ckpt):
    n = 5
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"scene number {i}", "id": f"s{i}"} for i in range(n)])
    out = tmp_path / "out"
    proc = subprocess.Popen(_argv(ckpt, f"prompts_file={prompts}", "output_dir=out"), cwd=tmp_path,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None and not list(out.glob("s*.json")):
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stderr.read()}"
        time.sleep(0.3)  # into the next sample
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    done = set(sidecars(out))
    mp4s = {p.stem for p in final_mp4s(out)}
    assert done, "the first sidecar was seen before the kill"
    assert len(done) < n, "nothing left to do: the kill came too late to test anything"
    assert done <= mp4s, f"sidecar without its mp4: {done - mp4s}"
    for stem in mp4s:  # every final-named mp4 is a whole video
        check_video(out / f"{stem}.mp4")
    # An mp4 renamed in place whose sidecar was not yet written (the kill fell between the two) is not
    # done; the rerun makes it again. Nothing else may exist under a final name.
    finals = {p.name for p in out.iterdir() if not p.name.startswith(".")}  # hidden: temporaries, .shards (lease)
    assert finals <= {f"{s}.mp4" for s in mp4s} | {f"{s}.json" for s in done} | {"manifest.jsonl"}

    rerun = generate(tmp_path, ckpt, f"prompts_file={prompts}", "output_dir=out")
    assert rerun.returncode == 0, rerun.stderr
    assert {prompt_id_of(s) for s in sidecars(out)} == {f"s{i}" for i in range(n)}
    for i in range(n):
        check_video(out / f"{sid_of(out, f's{i}')}.mp4")
    statuses = [m for m in read_manifest(out / "manifest.jsonl") if m["pid"] != proc.pid]
    assert sorted(m["sample_id"] for m in statuses if m["status"] == "skipped") == sorted(done)
    assert sorted(m["sample_id"] for m in statuses if m["status"] == "done") == sorted(set(sidecars(out)) - done)


def test_latent_does_not_depend_on_position_in_file(tmp_path, ckpt):
    a = {"prompt": "a lighthouse at dusk"}  # derived id
    b = {"prompt": "a train crosses a bridge", "id": "train", "seed": 11}
    runs = {}
    for name, lines in (("first", [a, b]), ("last", [b, a])):
        prompts = write_jsonl(tmp_path / f"{name}.jsonl", lines)
        proc = generate(tmp_path, ckpt, f"prompts_file={prompts}", f"output_dir={name}", "save_latents=true",
                        "num_steps=2")
        assert proc.returncode == 0, proc.stderr
        runs[name] = tmp_path / name
    for pid in (derive_sample_id(a["prompt"]), "train"):
        sid = sid_of(runs["first"], pid)
        assert sid == sid_of(runs["last"], pid)
        lat_first = torch.load(runs["first"] / f"{sid}.latent.pt", weights_only=True)
        lat_last = torch.load(runs["last"] / f"{sid}.latent.pt", weights_only=True)
        assert lat_first.shape == (1, 16, 3, TINY["height"] // 8, TINY["width"] // 8)
        assert torch.equal(lat_first, lat_last), sid
        side = json.loads((runs["first"] / f"{sid}.json").read_text())
        assert side["files"]["latent"] == f"{sid}.latent.pt"
        assert side["sample_seed"] == json.loads((runs["last"] / f"{sid}.json").read_text())["sample_seed"]


# ---- sweeps ----------------------------------------------------------------------------------------------
def test_multirun_sweep_writes_each_combination(tmp_path, ckpt):
    argv = [sys.executable, str(GENERATE), "--multirun", *FAST, f"checkpoint_dir={ckpt}", "prompt=a red ball",
            "guidance=5,7", "seed=1,2", "output_dir=sweep"]
    proc = subprocess.run(argv, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    sweep = tmp_path / "sweep"
    pid = derive_sample_id("a red ball")
    seen = set()
    for guidance in (5, 7):
        for seed in (1, 2):
            sub = sweep / f"guidance={guidance},model=tiny_text2world,num_steps=3,seed={seed}"
            sid = sid_of(sub, pid)
            assert (sub / f"{sid}.mp4").is_file(), f"{sub.name}: no video (files: {sorted(p.name for p in sweep.rglob('*'))})"
            side = json.loads((sub / f"{sid}.json").read_text())
            assert side["sampler"]["guidance"] == guidance and side["seed"] == seed
            seen.add((guidance, seed))
    assert len(seen) == 4
    assert not list(sweep.glob("*.mp4")), "videos written outside the combination folders"


# ---- errors before compute -------------------------------------------------------------------------------
def test_missing_checkpoint_names_path_and_download(tmp_path):
    empty = tmp_path / "no-checkpoints"
    proc = generate(tmp_path, empty, "model=7b_text2world", "prompt=x", "output_dir=out", fast=False)
    assert_clean_failure(proc)
    expected = empty / "Cosmos-Predict1-7B-Text2World" / "model.pt"
    assert str(expected) in proc.stderr
    assert "Download checkpoints" in proc.stderr and "cosmos-dist download" in proc.stderr
    assert output_files(tmp_path / "out") == []


@pytest.mark.parametrize("case", ["parent-is-a-file", pytest.param("read-only-parent", marks=pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write into a read-only directory"))])
def test_unwritable_output_dir_is_refused_before_load(tmp_path, ckpt, case):
    if case == "parent-is-a-file":
        (tmp_path / "a-file").write_text("not a folder")
        target = "a-file/out"
    else:
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", 0o555)
        target = "ro/out"
    try:
        proc = generate(tmp_path, ckpt, "prompt=x", f"output_dir={target}")
    finally:
        if (tmp_path / "ro").exists():
            os.chmod(tmp_path / "ro", 0o755)  # let pytest clean up
    assert_clean_failure(proc)
    assert "output_dir" in proc.stderr and target in proc.stderr
    assert not (tmp_path / target).exists()


@pytest.mark.parametrize(
    "override, field, fix",
    [
        ("num_frames=120", "num_frames", "1 + 8k"),
        ("height=700", "height", "multiple of 16"),
        ("width=100", "width", "multiple of 16"),
        ("video.crf=99", "video.crf", "0..51"),
    ],
)
def test_bad_values_name_field_and_fix(tmp_path, ckpt, override, field, fix):
    proc = generate(tmp_path, ckpt, "prompt=x", "output_dir=out", override)
    assert_clean_failure(proc)
    assert f"error: {field}:" in proc.stderr and fix in proc.stderr
    assert output_files(tmp_path / "out") == []


def test_no_prompt_says_how_to_give_one(tmp_path, ckpt):
    proc = generate(tmp_path, ckpt, "output_dir=out")
    assert_clean_failure(proc)
    assert 'prompt="..."' in proc.stderr and "prompts_file=" in proc.stderr


def test_misspelt_key_is_refused(tmp_path, ckpt):
    proc = generate(tmp_path, ckpt, "prompt=x", "num_step=3")
    assert proc.returncode != 0
    assert "num_step" in proc.stderr
    assert "models loaded" not in proc.stderr


def test_help(tmp_path):
    proc = subprocess.run([sys.executable, str(GENERATE), "--help"], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for key in ("model", "prompt", "num_steps", "guidance", "output_dir", "checkpoint_dir", "tiny_text2world"):
        assert key in proc.stdout, key
    assert not list(tmp_path.iterdir()), "--help must not create files"


# ---- exit codes, Ctrl-C, torchrun ----------------------------------------------------------------------
def test_failures_are_summarised_by_reason(tmp_path, ckpt):
    prompts = write_jsonl(tmp_path / "p.jsonl", ['{"prompt": "unterminated', '{"bad": 1', {"id": "x", "seed": 1},
                                                 {"prompt": "a calm lake", "id": "lake"}])
    proc = generate(tmp_path, ckpt, f"prompts_file={prompts}", "output_dir=out")
    assert proc.returncode == 1, proc.stderr  # errors.EXIT_SAMPLES_FAILED
    summary = [line for line in proc.stderr.splitlines() if "failed:" in line and "x invalid JSON" in line]
    assert summary and "2 x invalid JSON" in summary[0] and "1 x missing \"prompt\"" in summary[0], proc.stderr


def test_ctrl_c_stops_with_one_line(tmp_path, ckpt):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"scene {i}", "id": f"s{i}"} for i in range(6)])
    out = tmp_path / "out"
    proc = subprocess.Popen(_argv(ckpt, f"prompts_file={prompts}", "output_dir=out"), cwd=tmp_path, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None and not list(out.glob("s*.json")):
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err  # errors.EXIT_INTERRUPTED
    assert "Traceback" not in err and err.count("interrupted") == 1, err
    finals = {p.name for p in out.iterdir() if not p.name.startswith(".")}  # hidden: temporaries, .shards (lease)
    done = set(sidecars(out))
    # finished samples, at most a renamed mp4 whose sidecar was not written yet, and the run's own files
    sample_files = finals - {"manifest.jsonl", ".layout.json"}
    assert all(name.split("_s1_")[0] in {f"s{i}" for i in range(6)} for name in sample_files), finals
    assert {n for n in sample_files if n.endswith(".json")} == {f"{s}.json" for s in done}
    assert all(n.endswith((".mp4", ".json")) for n in sample_files), finals


def _torchrun(cwd: Path, nproc: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def test_torchrun_module_form_summarises_every_replica(tmp_path, ckpt):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"scene {i}", "id": f"s{i}"} for i in range(3)])
    proc = _torchrun(tmp_path, 2, "-m", "cosmos_dist", "generate", *FAST, f"checkpoint_dir={ckpt}", "height=32",
                     "width=48", "num_frames=9", "num_steps=2", f"prompts_file={prompts}", "output_dir=out")
    assert proc.returncode == 0, proc.stderr
    assert {prompt_id_of(s) for s in sidecars(tmp_path / "out")} == {"s0", "s1", "s2"}
    lines = [line for line in proc.stderr.splitlines() if " done, " in line]
    assert len(lines) == 1 and "3 done, 0 skipped, 0 failed" in lines[0], proc.stderr  # both replicas, said once
    assert "megatron" not in proc.stderr.lower(), proc.stderr  # banners only at log_level=debug


def test_torchrun_configuration_error_is_printed_once(tmp_path):
    proc = _torchrun(tmp_path, 2, str(GENERATE), "model=tiny_text2world", "prompt=x", "num_step=3")
    assert proc.returncode != 0
    assert proc.stderr.count("error: num_step: not a configuration key") == 1, proc.stderr
    proc = _torchrun(tmp_path, 2, str(GENERATE), "model=tiny_text2world", "prompt=x", "num_frames=10")
    assert proc.stderr.count("error: num_frames:") == 1, proc.stderr


def test_redirected_log_has_progress_lines_and_no_bars(tmp_path, ckpt):
    """A log that is not a terminal (every Slurm job) gets one line per `progress_every_s` (here every step) with
    step, sigma, elapsed and ETA, and no tqdm escape codes."""
    proc = generate(tmp_path, ckpt, "model=tiny_text2world", "num_steps=4", "prompt=a slow pan over hills",
                    "output_dir=out", "progress=true", "progress_every_s=0", fast=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ": step " in ln and "ETA" in ln]
    assert [ln.split(": step ")[1].split()[0] for ln in lines] == ["1/4", "2/4", "3/4", "4/4"], proc.stderr[-2000:]
    assert "sigma" in lines[0] and "elapsed" in lines[0] and "\r" not in proc.stderr and "\x1b[" not in proc.stderr
