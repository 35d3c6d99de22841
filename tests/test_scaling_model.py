"""tools/scaling_model.py: its stand-in collectives against the real ones (gloo, 2 processes).

The model must run the real per-rank work and count the real bytes: a gloo run of the real context-parallel
step records, on rank 0, every byte it hands to torch.distributed and every tensor it receives; the model's
rank-0 step, fed those received tensors, must give rank 0's output shard, and its byte count must equal the
real run's (and the closed formulas for ulysses and ring).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cosmos_dist.parallel.testing import rel_err, spawn_ranks

REPO = Path(__file__).resolve().parents[1]


def _tool():
    import sys

    if "scaling_model_tool" not in sys.modules:  # registered first: its dataclasses look their module up
        spec = importlib.util.spec_from_file_location("scaling_model_tool", REPO / "tools" / "scaling_model.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return sys.modules["scaling_model_tool"]


def _tiny(blocks: int | None = None):
    from cosmos_dist.models import build_dit, get_preset

    cfg = get_preset("tiny_text2world")
    torch.manual_seed(0)
    return build_dit(cfg if blocks is None else cfg.replace(num_blocks=blocks), device="cpu", dtype=torch.float32)


def _count_collectives(logs: list) -> None:
    """Wrap torch.distributed's collectives (in this worker only) to count what this rank sends and receives
    over links and keep what it receives, into logs[-1]. The real collectives still run."""
    import torch.distributed as dist

    nbytes = lambda t: t.numel() * t.element_size()  # noqa: E731
    real_a2a, real_batch, real_gather = dist.all_to_all_single, dist.batch_isend_irecv, dist.all_gather

    def a2a(output, input, output_split_sizes=None, input_split_sizes=None, group=None, async_op=False):
        log = logs[-1]
        real_a2a(output, input, output_split_sizes, input_split_sizes, group=group, async_op=async_op)
        me = dist.get_rank(group)
        log["sent"] += nbytes(input) - input_split_sizes[me] * nbytes(input) // input.shape[0]
        log["received"] += nbytes(output) - output_split_sizes[me] * nbytes(output) // output.shape[0]
        log["ops"].append("all_to_all")
        log["recv"].append(output.clone())

    def batch(ops):
        log = logs[-1]
        for op in ops:
            key = "sent" if op.op is dist.isend else "received"
            log[key] += nbytes(op.tensor)
            if op.op is dist.irecv:
                log["recv"].append(op.tensor)  # filled once waited for; the ring never writes it again
        log["ops"].append("send_recv")
        return real_batch(ops)

    def gather(tensor_list, tensor, group=None, async_op=False):
        out = real_gather(tensor_list, tensor, group=group, async_op=async_op)
        log = logs[-1]
        me = dist.get_rank(group)
        log["sent"] += nbytes(tensor) * (len(tensor_list) - 1)
        log["received"] += sum(nbytes(t) for i, t in enumerate(tensor_list) if i != me)
        log["ops"].append("all_gather")
        log["recv"].extend(t.clone() for i, t in enumerate(tensor_list) if i != me)
        return out

    dist.all_to_all_single, dist.batch_isend_irecv, dist.all_gather = a2a, batch, gather


def _real_rank(rank: int, world: int, out_dir: str) -> None:
    """The real 2-process step (cp=2 ulysses, cp=2 ring, cfg-parallel at cp=1); rank 0 saves what it saw."""
    import torch.distributed as dist

    from cosmos_dist.parallel.context_parallel import make_self_attention
    from cosmos_dist.parallel.cfg_parallel import exchange_branch_outputs
    from cosmos_dist.parallel.sharding import token_ranges
    from cosmos_dist.parallel.testing import init_gloo
    from cosmos_dist.pipeline.denoiser import GuidedDenoiser

    init_gloo(rank, world)
    tool = _tool()
    net = _tiny()
    inputs = tool.step_inputs(net, tool.SHAPES["tiny"], torch.device("cpu"))
    n = inputs["x"].shape[1]
    saved, logs = {}, []
    _count_collectives(logs)
    with torch.no_grad():
        for name, impl, cfg_par in (("ulysses", "ulysses", False), ("ring", "ring", False), ("cfg", None, True)):
            log = {"sent": 0, "received": 0, "ops": [], "recv": []}
            logs.append(log)
            cp = 1 if cfg_par else world
            ranges = token_ranges(n, cp)
            s, e = ranges[0 if cfg_par else rank]
            if cfg_par:
                layout = SimpleNamespace(cfg_size=2, cfg_group=dist.group.WORLD)
                opts = {"mode": "cfg_parallel", "cfg_branch": rank,
                        "exchange": lambda f: exchange_branch_outputs(f, layout)}
                attn = make_self_attention("ring", None, ranges)
            else:
                opts, attn = {"mode": "batch"}, make_self_attention(impl, dist.group.WORLD, ranges)
            den = GuidedDenoiser(net=net, grid=inputs["grid"], fps=24.0, cond_emb=inputs["cond"],
                                 uncond_emb=inputs["uncond"], guidance=7.0, extra_tokens=inputs["extra"][:, s:e],
                                 token_range=(s, e), self_attention=attn, **opts)
            out = den(inputs["x"][:, s:e], inputs["c_noise"], 1.0, 0)
            dist.barrier()
            saved[name] = {"out": out, **{k: log[k] for k in ("sent", "received", "ops")},
                           "recv": [t.clone() for t in log["recv"]]}
    if rank == 0:
        torch.save(saved, Path(out_dir) / "rank0.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def real_rank0(tmp_path_factory):
    out = tmp_path_factory.mktemp("gloo")
    spawn_ranks(_real_rank, 2, str(out))
    return torch.load(out / "rank0.pt")


@pytest.mark.parametrize("name", ["ulysses", "ring", "cfg"])
def test_model_runs_the_real_work_and_counts_the_real_bytes(real_rank0, name):
    tool = _tool()
    net = _tiny()
    cpu = torch.device("cpu")
    inputs = tool.step_inputs(net, tool.SHAPES["tiny"], cpu)
    clock = tool.Clock(cpu)
    layout = tool.Layout(2, "local", True) if name == "cfg" else tool.Layout(2, name)
    real = real_rank0[name]
    with torch.no_grad():
        step = tool.rank0_step(net, layout, inputs, clock, replay={"cfg" if name == "cfg" else "cp": real["recv"]})
        out = step.fn()
        transfers = step.transfers()
        # The same step with rank 0's own data standing in for its peers' (what the timings run).
        echo = tool.rank0_step(net, layout, inputs, clock)
        echo_out = echo.fn()
    assert out.shape == real["out"].shape
    assert rel_err(out, real["out"]) <= 1e-6
    # What arrives matters (the check above can fail): rank 0's own data instead of its peers' differs.
    assert rel_err(echo_out, real["out"]) > 1e-4
    assert [t.op for t in transfers] == real["ops"]
    for which in (transfers, echo.transfers()):
        assert sum(t.sent for t in which) == real["sent"]
        assert sum(t.received for t in which) == real["received"]

    # Closed forms, per step, float32: B=2 (both guidance branches), half of the 288 tokens, width 128.
    blocks, d, b, l_local, f32 = 2, 128, 2, 144, 4
    expected = {
        "ulysses": blocks * (3 + 1) * b * l_local * (d // 2) * f32,  # q,k,v out and the output back, half the heads
        "ring": blocks * 2 * b * l_local * d * f32,  # one K/V block per block, to the one other rank
        "cfg": 1 * 288 * 64 * f32,  # the partner's batch-1 output: 288 tokens x 64 output features
    }[name]
    assert real["sent"] == real["received"] == expected


def test_bytes_are_linear_in_depth_and_extrapolation():
    """--blocks K extrapolates from depths 1 and K: exact for bytes (per-block collectives), checked at 3."""
    tool = _tool()
    cpu = torch.device("cpu")
    clock = tool.Clock(cpu)
    got = {}
    for blocks in (1, 2, 3):
        net = _tiny(blocks)
        inputs = tool.step_inputs(net, tool.SHAPES["tiny"], cpu)
        with torch.no_grad():
            step = tool.rank0_step(net, tool.Layout(8, "usp", True, 2), inputs, clock)
            step.fn()
        got[blocks] = tool.comm_summary(step.transfers(), clock, 350e9, 0.0, "none")
    zeros = {"compute_s": 0.0, "standin_copy_s": 0.0, "exposed_comm_s": 0.0}
    m1, m2 = ({k: got[b][k] for k in ("sent_bytes", "received_bytes", "comm_s")} | zeros for b in (1, 2))
    ext = tool._extrapolate(m1, m2, 2, 3)
    assert ext["sent_bytes"] == got[3]["sent_bytes"] and ext["received_bytes"] == got[3]["received_bytes"]
    assert ext["comm_s"] == pytest.approx(got[3]["comm_s"], rel=1e-9)
    # usp at cp 4 = ulysses pairs x a ring of 2, plus the cfg exchange: three kinds of transfer.
    assert set(got[3]["transfers"]) == {"all_to_all", "send_recv", "all_gather"}


def test_transfer_model():
    tool = _tool()
    cpu = torch.device("cpu")
    clock = tool.Clock(cpu)
    t = tool.Transfer("send_recv", 700_000_000, 350_000_000, (0.0, 0.0), window=(0.0, 0.5))
    a = tool.Transfer("all_to_all", 350_000_000, 350_000_000, (0.0, 0.25))
    code = tool.comm_summary([t, a], clock, 350e9, 0.0, "code")
    none = tool.comm_summary([t, a], clock, 350e9, 0.0, "none")
    assert none["comm_s"] == pytest.approx(2e-3 + 1e-3)  # the larger direction over the link
    assert none["exposed_comm_s"] == pytest.approx(3e-3)
    assert code["exposed_comm_s"] == pytest.approx(1e-3)  # the ring step hides behind its 0.5 s window
    assert code["standin_copy_s"] == pytest.approx(0.25)


def test_cli_tiny_cpu(tmp_path):
    """The CPU smoke run: a JSON table marked PREDICTED, world 1 at 100%, invalid layouts skipped with why."""
    tool = _tool()
    out = tmp_path / "s.json"
    rc = tool.main(["--model", "tiny", "--device", "cpu", "--dtype", "float32", "--worlds", "2,8",
                    "--impls", "ulysses,ring", "--cfg", "off", "--reps", "1", "--warmup", "0", "--output", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert "PREDICTED" in res and res["model"] == "tiny"
    rows = {r["layout"]: r for r in res["rows"]}
    assert set(rows) == {"w1 local", "w2 ulysses", "w2 ring", "w8 ring"}
    assert rows["w1 local"]["efficiency"] == 1.0 and rows["w1 local"]["sent_bytes"] == 0
    # tiny has 4 heads: ulysses cannot split them 8 ways; the row is skipped, and says why.
    assert res["skipped"] and "w8 ulysses" in res["skipped"][0]["layout"] and "4 heads" in res["skipped"][0]["why"]
    for r in res["rows"]:
        assert r["predicted_step_s"] >= r["compute_s"] > 0
        assert r["predicted_step_s_no_overlap"] >= r["predicted_step_s"]
        assert r["comm_s"] == pytest.approx(
            (max(r["sent_bytes"], r["received_bytes"]) / 350e9 if r["world"] > 1 else 0)
            + 1e-5 * sum(r["transfers_per_step_at_timed_depth"].values()), rel=1e-3, abs=1e-6)
