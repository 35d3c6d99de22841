"""Pinned outputs: the tiny presets on the CPU with a fixed seed give these exact latents, on one process,
under context parallelism (cp=2), under cfg-parallel (gloo) and with the RES sampler. Refactors must not move
them; a deliberate change of the arithmetic (a sampler fix, a new default) updates the pins in its own commit and
says why.

The hashes are of the float32 latent's bytes (`save_latents=true`). The tiny checkpoints are built from fixed
seeds and a tokenizer that is built, not trained (cosmos_dist/text/tiny.py), so they are the same on every
machine; float32 CPU kernels are deterministic for a given torch build and CPU family.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GENERATE = ROOT / "generate.py"
COMMON = ["height=32", "width=48", "num_frames=9", "num_steps=3", "progress=false", "save_latents=true",
          "parallel.timeout_s=120", "seed=7"]

# sha256 (first 16 hex digits) of the final latent's float32 bytes.
PINS = {
    ("tiny_text2world", "single"): "3fb5cbcc8262e13c",
    ("tiny_text2world", "cp2"): "3fb5cbcc8262e13c",
    ("tiny_text2world", "cfg"): "fbef489e16c6fc62",
    ("tiny_text2world", "res"): "11c98fa5864c2932",
    ("tiny_video2world", "single"): "eeac1998493c3c8a",
    ("tiny_video2world", "cp2"): "eeac1998493c3c8a",
}
# "res" is the RES sampler on one process (its own initial noise scale, sigma_max, and its own schedule).
LAYOUTS = {"single": (1, []), "cp2": (2, ["parallel.cp_size=2"]), "cfg": (2, ["parallel.cfg_parallel=true"]),
           "res": (1, ["sampler.name=res"])}

pytestmark = pytest.mark.slow


def _input_image(path: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(path)
    return path


def latent_hash(model: str, layout: str, workdir: Path, ckpt: Path) -> str:
    nproc, extra = LAYOUTS[layout]
    args = [f"model={model}", f"checkpoint_dir={ckpt}", "prompt=a robot walks through a warehouse",
            f"output_dir={workdir / layout}", *COMMON, *extra]
    if "video2world" in model:
        _input_image(workdir / "input.png")
        args.append("input_path=input.png")  # relative: the sample id (and so its noise) must not depend on tmp_path
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     f"--nproc_per_node={nproc}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([*launcher, str(GENERATE), *args], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (latent,) = (workdir / layout).rglob("*.latent.pt")
    return hashlib.sha256(torch.load(latent).numpy().tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pin-checkpoints")


@pytest.mark.parametrize("model,layout", sorted(PINS))
def test_latent_is_pinned(model, layout, tmp_path, ckpt):
    got = latent_hash(model, layout, tmp_path, ckpt)
    assert got == PINS[(model, layout)], f"{model} {layout}: latent hash {got}"
