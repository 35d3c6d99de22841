"""tools/check_attention_kernels.py runs on the CPU with --small and writes sane JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "check_attention_kernels.py"


def test_check_attention_kernels_small(tmp_path):
    out = tmp_path / "kernels.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, str(TOOL), "--small", "--output", str(out)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert report["shape"] == {"batch": 1, "seq_len": 301, "heads": 4, "head_dim": 32}
    assert report["device"] == "cpu" and report["dtype"] == "float32"
    names = [r["name"] for r in report["results"]]
    assert names == ["sdpa (reference)", "attention_with_lse", "ring_merge[2 blocks]", "ring_merge[4 blocks]",
                     "ulysses_split[2 groups]", "ulysses_split[4 groups]"]
    for row in report["results"]:
        assert row["median_ms"] > 0 and row["tflops"] > 0 and len(row["times_ms"]) == 3
        assert row["rel_err_vs_fp32_subset"] <= 1e-5, row
        if row["rel_err_vs_sdpa"] is not None:
            assert row["rel_err_vs_sdpa"] <= 1e-5, row
    assert report["results"][1]["lse_max_abs_err_vs_fp32"] <= 1e-4
    assert "ring_merge[4 blocks]" in res.stdout and "TFLOP/s" in res.stdout
