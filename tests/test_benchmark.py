"""tools/benchmark.py in its CPU mode (tiny preset): the JSON it writes, its FLOP count, and the FP8 path."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("benchmark_tool", REPO / "tools" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_flop_count_matches_torch_flop_counter():
    """The documented FLOP formula against PyTorch's own count of one tiny forward (matmuls + SDPA)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cosmos_dist.models import build_dit, get_preset

    bench = _tool()
    cfg = get_preset("tiny_text2world")
    net = build_dit(cfg, device="cpu", dtype=torch.float32)
    grid = bench.SHAPES["tiny"]
    x, emb, t = bench.inputs(cfg, grid, torch.device("cpu"), torch.float32, 1)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # The math backend decomposes attention into matmuls the counter sees (it does not count the
    # CPU's fused attention kernel).
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        net(x, t, emb, fps=torch.tensor([24.0]))
    tokens = grid[0] * (grid[1] // 2) * (grid[2] // 2)
    ours = bench.model_flops(cfg, tokens)["total"]
    measured = counter.get_total_flops()
    # The counter also sees the timestep MLP and embeddings the formula leaves out: within 2%.
    assert math.isclose(ours, measured, rel_tol=0.02), (ours, measured)


def test_benchmark_cpu_run_writes_bf16_and_fp8_results(tmp_path):
    bench = _tool()
    out = tmp_path / "b.json"
    assert bench.main(["--model", "tiny", "--device", "cpu", "--reps", "1", "--warmup", "0", "--fp8",
                       "--fp8-quality-steps", "2", "--profile", "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["tokens"] == 3 * 8 * 12
    for label in ("ours[sdpa]", "fp8[linear]", "fp8[linear+attention]"):
        for mode in ("sequential", "batched"):
            assert res["ours"][label][mode]["step_s"] > 0
    fp8 = res["fp8"]
    assert fp8["converted_linears"] == 20 and fp8["linear+attention_vs_bf16"] > 0
    assert abs(sum(res["ours"]["profile"]["share"].values()) - 1) < 1e-3
    for q in fp8["quality"]:
        assert len(q["per_step_rel_err"]) == 2
        assert 1e-4 < q["per_step_rel_err_max"] < 0.2 and 0 < q["final_latent_rel_err"] < 0.2
