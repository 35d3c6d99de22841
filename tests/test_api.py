"""The Python API on the tiny preset (CPU): from_pretrained, a call with several prompts, the per-step callback,
the iterator, save with the CLI's writer, and a second call that loads nothing."""
from __future__ import annotations

import json

import numpy as np


def test_text2world_api(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from cosmos_dist import GeneratedVideo, Text2WorldPipeline

    pipe = Text2WorldPipeline.from_pretrained("checkpoints", model="tiny_text2world", height=32, width=48,
                                              num_frames=9, progress=False)
    steps = []
    videos = pipe(["a robot walks", {"prompt": "a red ball", "seed": 5}], num_steps=3, seed=1,
                  callback=lambda sid, step, total, latent: steps.append((sid, step, total)))
    assert [v.status for v in videos] == ["done", "done"] and all(isinstance(v, GeneratedVideo) for v in videos)
    assert videos[0].frames.shape == (9, 32, 48, 3) and videos[0].frames.dtype == np.uint8
    assert videos[0].metadata["seed"] == 1 and videos[1].metadata["seed"] == 5
    assert videos[0].metadata["sampler"]["num_steps"] == 3
    assert [s[1] for s in steps if s[0] == videos[0].sample_id] == [0, 1, 2]
    mp4 = videos[0].save(tmp_path / "out")
    assert mp4.is_file() and json.loads((tmp_path / "out" / f"{videos[0].sample_id}.json").read_text())["seed"] == 1
    components = pipe.components
    streamed = list(pipe.iter((f"scene {i}" for i in range(3)), num_steps=2))
    assert pipe.components is components and len(streamed) == 3  # models stay loaded
    # the same prompt and seed give the same frames through the API as before
    again = pipe("a robot walks", num_steps=3, seed=1)
    assert np.array_equal(again[0].frames, videos[0].frames)
    assert again[0].save(tmp_path / "out") == mp4  # the same sample again: replaced whole


def test_save_refuses_another_video_under_the_same_id(tmp_path, monkeypatch):
    """save() never silently replaces a sample made with another identity: a run finding it later would take it
    as done. overwrite=True replaces it; an unreadable sidecar counts as another identity."""
    import dataclasses

    import pytest

    from cosmos_dist import OutputConflict, Text2WorldPipeline

    monkeypatch.chdir(tmp_path)
    pipe = Text2WorldPipeline.from_pretrained("checkpoints", model="tiny_text2world", height=32, width=48,
                                              num_frames=9, progress=False)
    first, other = pipe(["a robot walks", {"prompt": "a red ball", "seed": 5}], num_steps=2, seed=1)
    out = tmp_path / "out"
    first.save(out)
    sidecar = out / f"{first.sample_id}.json"
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    impostor = dataclasses.replace(other, sample_id=first.sample_id)  # another prompt and seed under first's id
    with pytest.raises(OutputConflict, match=r"another prompt, seed.*overwrite=True"):
        impostor.save(out)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # nothing written, no temporary left
    impostor.save(out, overwrite=True)
    assert json.loads(sidecar.read_text())["prompt"] == "a red ball"
    sidecar.write_text("{not json")
    with pytest.raises(OutputConflict, match="another identity"):
        first.save(out)
    first.save(out, overwrite=True)
    assert json.loads(sidecar.read_text())["prompt"] == "a robot walks"


API_SCRIPT = '''
import json, sys
import numpy as np
import torch
from cosmos_dist import Text2WorldPipeline

out, parallel = sys.argv[1], json.loads(sys.argv[2])
pipe = Text2WorldPipeline.from_pretrained("checkpoints", model="tiny_text2world", height=32, width=48, num_frames=9,
                                          progress=False, parallel=parallel)
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
steps = []
videos = pipe(["a robot walks", {"prompt": "a red ball", "seed": 5}], num_steps=2, seed=1,
              callback=lambda sid, step, total, latent: steps.append(step))
for v in videos:
    np.save(f"{out}/{v.sample_id}.npy", v.frames)
    torch.save(v.latent, f"{out}/{v.sample_id}.pt")
json.dump({"ids": [v.sample_id for v in videos], "steps": steps}, open(f"{out}/rank{rank}.json", "w"))
'''


def _run_api(cwd, nproc: int, out, parallel: dict):
    import os
    import subprocess
    import sys

    script = cwd / "api_script.py"
    script.write_text(API_SCRIPT)
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     f"--nproc_per_node={nproc}"]
    proc = subprocess.run([*launcher, str(script), str(out), json.dumps(parallel)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {p.name: json.loads(p.read_text()) for p in out.glob("rank*.json")}


def test_api_on_every_rank_under_torchrun(tmp_path):
    """The README's API call on every rank of a torchrun job (gloo): context parallel (cp=2, one replica) and data
    parallel (two replicas): each replica leader returns its share, the frames and latents equal one process's."""
    import torch

    single = _run_api(tmp_path, 1, tmp_path / "single", {})
    ids = single["rank0.json"]["ids"]
    assert len(ids) == 2
    cp = _run_api(tmp_path, 2, tmp_path / "cp", {"cp_size": 2})
    assert cp["rank0.json"]["ids"] == ids and cp["rank1.json"]["ids"] == []  # the leader returns; its peer helps
    assert cp["rank1.json"]["steps"] == cp["rank0.json"]["steps"] == [0, 1, 0, 1]  # the callback on every rank
    dp = _run_api(tmp_path, 2, tmp_path / "dp", {})  # the ranks left over after cp x cfg are data parallel
    assert sorted(dp["rank0.json"]["ids"] + dp["rank1.json"]["ids"]) == sorted(ids)
    assert len(dp["rank0.json"]["ids"]) == len(dp["rank1.json"]["ids"]) == 1
    for layout in ("cp", "dp"):
        for sid in ids:
            assert np.array_equal(np.load(tmp_path / layout / f"{sid}.npy"), np.load(tmp_path / "single" / f"{sid}.npy"))
            a = torch.load(tmp_path / layout / f"{sid}.pt")
            b = torch.load(tmp_path / "single" / f"{sid}.pt")
            assert torch.allclose(a, b, rtol=0, atol=1e-5), (layout, sid, (a - b).abs().max())
