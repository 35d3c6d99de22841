"""The tiny presets' stand-in files are byte-identical on every machine, checkout and process (hash seed
included): freshly made files are compared with pinned SHA-256 values. A change to a writer that changes these
bytes must update the pins on purpose (and will change tests/test_output_pins.py's latents if weights move)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent

COMMON = {
    "t5/config.json": "f2f462182eb82b9ff8de79f27b486876a060a30e9ff9d7e0e5d055a00a56c8b4",
    "t5/model.safetensors": "7112f0e770204d45e5a1bb5f20cd755f02506b797abbe734e2ddee34bce0f7a6",
    "t5/tokenizer.json": "171c34fcb152b5578ce9f9cbe641b6a8e81d1a2efd1083c80b316ec581aa128e",
    "t5/tokenizer_config.json": "4fec3e1a8ec0235440fa3f7bad11cf46a5272109907847a30d9f01bc04805138",
    "tok/decoder.jit": "5e615271b64ee1f27546bc5b425d173164246acd3addb34fe776e39a0d06ccf7",
    "tok/encoder.jit": "4024a692c9d22e8da485461d82ba1eef6e6852c6a74aa50a9c62ec49601dd999",
    "tok/mean_std.pt": "27755423487e5ad7657acf0a4b05021a2aa01bd67ee66fd69a3f35713ad2e1cf",
}
PINS = {
    "tiny_text2world": {**COMMON, "dit/model.pt": "3781956f379b400a3c7035006dbd149fadb6b518bc2fc1b6839cee7d6d595302"},
    "tiny_video2world": {**COMMON, "dit/model.pt": "5b2484f48728375d912a161aa34cea340d75ad6737709086110bc901832d32c0"},
}

MAKE = """
import hashlib, json, sys
from pathlib import Path
from cosmos_dist.pipeline.assets import ensure_tiny_assets
root = Path(sys.argv[2])
ensure_tiny_assets(sys.argv[1], root / "dit", root / "tok", root / "t5")
print(json.dumps({p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in sorted(root.rglob("*")) if p.is_file()}))
"""


def test_fresh_tiny_files_match_the_pins(tmp_path):
    import json

    # a fresh process with its own string-hash seed: TorchScript's constant order once followed it
    import shutil

    # ...and from a copy of the package at another path (another checkout): TorchScript once recorded the
    # absolute path of the scripted source in its debug entries
    elsewhere = tmp_path / "another" / "checkout"
    shutil.copytree(REPO / "cosmos_dist", elsewhere / "cosmos_dist", ignore=shutil.ignore_patterns("__pycache__"))
    for i, root in enumerate((REPO, elsewhere)):
        env = {**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": str(12345 + i)}
        r = subprocess.run([sys.executable, "-c", MAKE, "tiny_text2world", str(tmp_path / f"ckpt{i}")], env=env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=300, check=True)
        assert json.loads(r.stdout.strip().splitlines()[-1]) == PINS["tiny_text2world"], root


def test_fresh_tiny_video2world_dit_matches_its_pin(tmp_path):
    from cosmos_dist.checkpoint import write_random_checkpoint
    from cosmos_dist.models import get_preset

    path = tmp_path / "model.pt"
    write_random_checkpoint(path, get_preset("tiny_video2world"), seed=0)  # as pipeline/assets.py writes it
    assert hashlib.sha256(path.read_bytes()).hexdigest() == PINS["tiny_video2world"]["dit/model.pt"]


def test_stable_torchscript_bytes_keeps_the_module_loadable(tmp_path):
    import io

    import torch

    from cosmos_dist.tokenizer.tiny import stable_torchscript_bytes

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), buf)
    fixed = stable_torchscript_bytes(buf.getvalue())
    assert fixed != buf.getvalue() and len(fixed) == len(buf.getvalue())
    (tmp_path / "m.jit").write_bytes(fixed)
    m = torch.jit.load(str(tmp_path / "m.jit"))  # CRCs are checked on load
    assert m(torch.ones(1, 3)).shape == (1, 2)
    assert hashlib.sha256(fixed).digest() == hashlib.sha256(stable_torchscript_bytes(fixed)).digest()
