"""PREDICTED multi-GPU scaling, from one device: cp rank 0's per-rank work with local stand-ins for the transfers.

    python tools/scaling_model.py --model 7b --blocks 8 --profile --output scaling-7b.json
    python tools/scaling_model.py --model tiny --device cpu --reps 1 --warmup 0     # the CPU smoke run (tests)

For each layout (world size, cp implementation ulysses / ring / usp, cfg-parallel off or on) this runs one
guided step exactly as global rank 0 (cp rank 0, cfg rank 0) of that layout would: its token shard through the
real model (`CosmosDiT.forward_tokens` via the pipeline's `GuidedDenoiser`) and the real context-parallel code
(`cosmos_dist/parallel/context_parallel.py`: the ulysses packing and local kernel, the ring steps and their
log-sum-exp merges, usp's ulysses-inside-ring). Every collective is answered by a `StandInGroup` that copies
the same number of bytes locally (rank 0's own data stands in for its peers'), times that copy and records
what the real collective would send and receive. Without cfg-parallel the step is one batch-2 pass (both
guidance branches, as `parallel.batch_cfg=true` runs it); with it, one batch-1 pass plus the exchange of the
branch outputs (one all-gather of this rank's output shard).

What is reported per layout, per guided step (all of it PREDICTED, none of it measured on several GPUs):
- compute_s: the step's time on this device minus the stand-ins' own copies (median of --reps);
- comm bytes: what this rank sends and receives over links (an all-to-all's own chunk stays local);
- comm_s: each transfer's max(sent, received) / --link-gbps + --latency-us (links are full duplex);
- exposed_comm_s: with --overlap code, the ring's transfers hide behind the block they are posted before
  (the code posts the next K/V transfer, then computes), all-to-alls and the cfg exchange are blocking;
  with --overlap none every transfer adds its full time;
- predicted_step_s = compute_s + exposed_comm_s; efficiency = T(world 1) / (world x predicted_step_s);
  compute_efficiency the same with compute_s alone (the per-rank work against an ideal split).

--blocks K times networks of K blocks and of 1 block and extrapolates linearly to the preset's depth (the
blocks are identical work; bytes and exposed transfers scale per block), which keeps a whole table inside a
few minutes of device time; without it the full depth runs. Weights are random (only shapes matter).
Not modelled: contention between concurrent transfers beyond the per-GPU link figure, NCCL's own SM use, the
sampler's elementwise update, and the once-per-video transfers (text embeddings, the final latent gather).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import SHAPES, Timer  # noqa: E402  (tools/benchmark.py: latent shapes, CUDA-event timings)

from cosmos_dist.parallel.context_parallel import (  # noqa: E402
    StandInGroup,
    ring_attention,
    ulysses_attention,
    usp_attention,
    usp_plan,
)
from cosmos_dist.errors import ConfigError  # noqa: E402
from cosmos_dist.parallel.sharding import range_lengths, validate_cp  # noqa: E402

IMPLS = ("ulysses", "ring", "usp")
OVERLAPS = ("code", "none")
# Serial stages after sampling on the replica leader, one 7B Text2World video on one H100, seconds
# (docs/PERFORMANCE.md, "One 7B Text2World sample end to end", BF16 column); the other ranks wait meanwhile.
SERIAL_STAGES_S = {"decode": 2.29, "video_guardrail": 2.32, "mp4_write": 2.62}
PRE_SAMPLING_S = {"text_guardrail": 0.24, "t5_encode": 0.27}


# ---- clocks: CUDA events on a GPU, the host clock on the CPU ----------------------------------------
class Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def seconds(self, a, b) -> float:
        """Time from mark a to mark b (after a synchronisation on the GPU)."""
        return a.elapsed_time(b) / 1000 if self.cuda else b - a


# ---- the stand-in collectives -----------------------------------------------------------------------
@dataclass
class Transfer:
    """One collective as rank 0 sees it: bytes over links, the stand-in copy, and for a ring step the
    window between posting the transfer and waiting for it (the compute it overlaps)."""

    op: str
    sent: int
    received: int
    copy: tuple
    window: tuple | None = None


def _fill(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy src's elements into dst, repeated or cut to dst's size (both contiguous)."""
    d, s = dst.view(-1), src.reshape(-1)
    for start in range(0, d.numel(), s.numel()):
        k = min(s.numel(), d.numel() - start)
        d[start : start + k].copy_(s[:k])


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class LocalCopyGroup(StandInGroup):
    """Rank `rank` of a group of `size` ranks, with local copies for transfers.

    What arrives: rank 0's own outgoing data (the same bytes a peer would send), or, with `replay`, the
    tensors a real run received, in call order (then the output equals the real run's)."""

    def __init__(self, size: int, clock: Clock, rank: int = 0, replay: list | None = None):
        self.n, self.me, self.clock = size, rank, clock
        self.replay = list(replay) if replay is not None else None
        self.transfers: list[Transfer] = []

    def size(self) -> int:
        return self.n

    def rank(self) -> int:
        return self.me

    def _arrival(self, dst: torch.Tensor, own: torch.Tensor) -> None:
        if self.replay is not None:
            dst.copy_(self.replay.pop(0).to(dst.device))
        else:
            _fill(dst, own)

    def all_to_all_single(self, recv, send, output_split_sizes, input_split_sizes) -> None:
        me = self.me
        row_in, row_out = _nbytes(send) // send.shape[0], _nbytes(recv) // recv.shape[0]
        sent = (sum(input_split_sizes) - input_split_sizes[me]) * row_in
        received = (sum(output_split_sizes) - output_split_sizes[me]) * row_out
        start = self.clock.mark()
        if self.replay is not None:
            self._arrival(recv, send)
        else:
            own = send.narrow(0, sum(input_split_sizes[:me]), input_split_sizes[me])
            offset = 0
            for rows in output_split_sizes:  # chunk j "from rank j": rank 0's own chunk, same size
                _fill(recv.narrow(0, offset, rows), own)
                offset += rows
        self.transfers.append(Transfer("all_to_all", sent, received, (start, self.clock.mark())))

    def ring_exchange(self, send: torch.Tensor, recv: torch.Tensor) -> list:
        return [_RingArrival(self, send, recv, self.clock.mark())]

    def exchange_pair(self, f_local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cfg-parallel's exchange of branch outputs (`exchange_branch_outputs`, an all-gather over the
        cfg pair) for cfg rank 0: (own output, the partner's)."""
        start = self.clock.mark()
        partner = torch.empty_like(f_local)
        self._arrival(partner, f_local)
        self.transfers.append(Transfer("all_gather", _nbytes(f_local), _nbytes(partner), (start, self.clock.mark())))
        return f_local, partner


class _RingArrival:
    """What `ring_exchange` returns: wait() is where the code needs the next K/V block; the stand-in copies
    it then, so that the window from posting to waiting is the compute a real transfer would overlap."""

    def __init__(self, group: LocalCopyGroup, send, recv, posted):
        self.group, self.send, self.recv, self.posted = group, send, recv, posted

    def wait(self) -> None:
        g = self.group
        start = g.clock.mark()
        g._arrival(self.recv, self.send)
        g.transfers.append(
            Transfer("send_recv", _nbytes(self.send), _nbytes(self.recv), (start, g.clock.mark()), (self.posted, start))
        )


# ---- layouts --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    world: int
    impl: str  # ulysses | ring | usp ("local" when cp == 1)
    cfg_parallel: bool = False
    ulysses_size: int | None = None  # usp only (default cp // 2: a ring of two "nodes")

    @property
    def cp(self) -> int:
        return self.world // (2 if self.cfg_parallel else 1)

    def name(self) -> str:
        u = f"(u={self.ulysses_size})" if self.impl == "usp" else ""
        return f"w{self.world} {self.impl}{u}{' +cfg' if self.cfg_parallel else ''}"


def layouts_for(worlds, impls, cfg_modes, usp_ulysses: int | None = None) -> list[Layout]:
    """Every distinct layout: cp == 1 has one (local attention) whatever the impl; usp needs 1 < u < cp."""
    out, seen = [], set()
    for w in worlds:
        for cfg in cfg_modes:
            if cfg and w % 2:
                continue
            cp = w // (2 if cfg else 1)
            for impl in impls:
                if cp == 1:
                    lay = Layout(w, "local", cfg)
                elif impl == "usp":
                    u = usp_ulysses or cp // 2
                    if not (1 < u < cp and cp % u == 0):
                        continue
                    lay = Layout(w, "usp", cfg, u)
                else:
                    lay = Layout(w, impl, cfg)
                if lay not in seen:
                    seen.add(lay)
                    out.append(lay)
    return out


# ---- one guided step of rank 0 -----------------------------------------------------------------------
def step_inputs(net, latent_grid, device, seed: int = 0) -> dict:
    """Random inputs of one guided step for the whole latent: latent tokens, the mask-channel tokens (the
    reference's all-zero padding mask, as the pipeline builds them), two text embeddings, c_noise."""
    cfg, dtype = net.config, net.dtype
    g = torch.Generator().manual_seed(seed)
    t, h, w = latent_grid
    x = torch.randn(1, cfg.latent_channels, t, h, w, generator=g)
    tokens, pgrid = net.patchify(net.input_channels(x.to(device, dtype)))
    split = cfg.latent_channels * cfg.patch_volume
    text = torch.randn(2, 512, cfg.crossattn_emb_channels, generator=g).to(device, dtype)
    return {
        "x": tokens[..., :split], "extra": tokens[..., split:], "grid": pgrid,
        "cond": text[:1], "uncond": text[1:], "c_noise": torch.tensor([0.25 * math.log(10.0)], device=device),
    }


@dataclass
class Rank0Step:
    """One guided step as rank 0 of `layout` runs it; groups hold the stand-ins' records."""

    fn: Callable[[], torch.Tensor]
    groups: list = field(default_factory=list)
    token_range: tuple = (0, 0)

    def transfers(self) -> list[Transfer]:
        return [t for g in self.groups for t in g.transfers]

    def reset(self) -> None:
        for g in self.groups:
            g.transfers.clear()


def rank0_step(net, layout: Layout, inputs: dict, clock: Clock, kernels: dict | None = None,
               replay: dict | None = None, guidance: float = 7.0) -> Rank0Step:
    """Build rank 0's step. kernels: {"local", "lse_kernel"} as `attention.local.local_kernels` gives them.
    replay: {"cp" | "ulysses" | "ring" | "cfg": tensors a real run's rank 0 received} (tests)."""
    from cosmos_dist.attention.local import attention_with_lse, sdpa_attention
    from cosmos_dist.pipeline.denoiser import GuidedDenoiser

    kernels = kernels or {}
    local, lse_kernel = kernels.get("local", sdpa_attention), kernels.get("lse_kernel", attention_with_lse)
    replay = replay or {}
    heads, cp, grid = net.config.num_heads, layout.cp, inputs["grid"]
    impl = layout.impl if cp > 1 else "ring"  # validate_cp's checks for cp == 1 are the ring's (none)
    ranges = validate_cp(grid, heads, cp, impl, layout.ulysses_size)
    lengths, groups = range_lengths(ranges), []

    def group(size, key):
        g = LocalCopyGroup(size, clock, replay=replay.get(key))
        groups.append(g)
        return g

    if cp == 1:
        attn = local
    elif layout.impl == "ulysses":
        attn = partial(ulysses_attention, group=group(cp, "cp"), lengths=lengths, local=local)
    elif layout.impl == "ring":
        attn = partial(ring_attention, group=group(cp, "cp"), lengths=lengths, lse_kernel=lse_kernel)
    elif layout.impl == "usp":
        u = layout.ulysses_size
        ul_lengths, ring_lengths = usp_plan(list(range(cp)), ranges, list(range(u)), list(range(0, cp, u)))
        attn = partial(usp_attention, ulysses_group=group(u, "ulysses"), ring_group=group(cp // u, "ring"),
                       ulysses_lengths=ul_lengths, ring_lengths=ring_lengths, lse_kernel=lse_kernel)
    else:
        raise ConfigError(f"unknown cp implementation {layout.impl!r}; choose one of {', '.join(IMPLS)}")
    s, e = ranges[0]
    options = {"mode": "batch"}
    if layout.cfg_parallel:
        pair = group(2, "cfg")
        options = {"mode": "cfg_parallel", "cfg_branch": 0, "exchange": pair.exchange_pair}
    den = GuidedDenoiser(
        net=net, grid=grid, fps=24.0, cond_emb=inputs["cond"], uncond_emb=inputs["uncond"], guidance=guidance,
        extra_tokens=inputs["extra"][:, s:e], token_range=(s, e), self_attention=attn, **options,
    )
    x_shard = inputs["x"][:, s:e]
    return Rank0Step(fn=lambda: den(x_shard, inputs["c_noise"], 1.0, 0), groups=groups, token_range=(s, e))


# ---- the transfer model ----------------------------------------------------------------------------
def transfer_seconds(t: Transfer, link_bps: float, latency_s: float) -> float:
    return max(t.sent, t.received) / link_bps + latency_s


def comm_summary(transfers: list[Transfer], clock: Clock, link_bps: float, latency_s: float, overlap: str) -> dict:
    """Bytes, modelled link time, the part of it not hidden by compute, and the stand-ins' own copy time."""
    out = {"sent_bytes": 0, "received_bytes": 0, "comm_s": 0.0, "exposed_comm_s": 0.0, "standin_copy_s": 0.0,
           "transfers": {}}
    for t in transfers:
        secs = transfer_seconds(t, link_bps, latency_s)
        hidden = clock.seconds(*t.window) if (overlap == "code" and t.window is not None) else 0.0
        out["sent_bytes"] += t.sent
        out["received_bytes"] += t.received
        out["comm_s"] += secs
        out["exposed_comm_s"] += max(0.0, secs - hidden)
        out["standin_copy_s"] += clock.seconds(*t.copy)
        out["transfers"][t.op] = out["transfers"].get(t.op, 0) + 1
    return out


def measure(step: Rank0Step, timer: Timer, clock: Clock, reps: int, warmup: int, link_bps, latency_s, overlap):
    """Medians over reps: the step's time, its stand-in copies, and the comm model of each rep."""
    records = []

    def run():
        step.reset()
        step.fn()
        records.append(step.transfers())

    times = timer(run, reps, warmup)
    records = records[warmup:]
    per_rep = [comm_summary(r, clock, link_bps, latency_s, overlap) for r in records]
    med = lambda key: statistics.median(c[key] for c in per_rep)  # noqa: E731
    return {
        "step_s": statistics.median(times), "times_s": times,
        "compute_s": statistics.median(t - c["standin_copy_s"] for t, c in zip(times, per_rep)),
        "standin_copy_s": med("standin_copy_s"), "exposed_comm_s": med("exposed_comm_s"),
        "comm_s": per_rep[0]["comm_s"], "sent_bytes": per_rep[0]["sent_bytes"],
        "received_bytes": per_rep[0]["received_bytes"], "transfers": per_rep[0]["transfers"],
    }


# ---- where the per-rank time goes -----------------------------------------------------------------------
def kernel_buckets(fn, device) -> dict:
    """Seconds of one call of fn in attention kernels, matrix products, copies (packing, stacking, the
    stand-ins) and everything else (norms, modulation, RoPE, GELU, the ring's merges), by the profiler."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    buckets = {"attention": 0.0, "matmul": 0.0, "copy": 0.0, "other": 0.0}
    for ev in prof.key_averages():
        us = ev.self_device_time_total if cuda else ev.self_cpu_time_total
        name = ev.key.lower()
        if us <= 0 or (not cuda and not name.startswith("aten::")):
            continue
        if any(k in name for k in ("flash", "fmha", "attention", "sdpa", "fa3", "cudnn_generated")):
            buckets["attention"] += us
        elif any(k in name for k in ("gemm", "nvjet", "cutlass", "xmma", "aten::mm", "aten::addmm", "aten::bmm")):
            buckets["matmul"] += us
        elif any(k in name for k in ("copy", "aten::cat", "aten::stack", "catarray")):
            buckets["copy"] += us
        else:
            buckets["other"] += us
    return {k: v / 1e6 for k, v in buckets.items()}


# ---- the driver ---------------------------------------------------------------------------------------
def _extrapolate(m1: dict | None, mk: dict, k: int, n: int) -> dict:
    """Quantities of a depth-n network from depths 1 and k (linear in the number of blocks)."""
    keys = ("compute_s", "standin_copy_s", "exposed_comm_s", "comm_s", "sent_bytes", "received_bytes")
    if m1 is None:
        return {key: mk[key] for key in keys}
    f = (n - 1) / (k - 1)
    return {key: m1[key] + (mk[key] - m1[key]) * f for key in keys}


def _rounded(m: dict, keys) -> dict:
    return {k: [round(x, 6) for x in m[k]] if isinstance(m[k], list) else round(m[k], 6) for k in keys}


def _kernels(name: str, device) -> tuple[str, dict]:
    from cosmos_dist.attention.local import local_kernels, resolve_attention_kernel

    resolved = resolve_attention_kernel(name, device)
    return resolved, local_kernels(resolved)


def layout_row(lay: Layout, step_k: Rank0Step, step_1: Rank0Step | None, k: int, depth: int, overlap: str,
               measure_args: tuple) -> dict:
    """Time one layout (at depth k, and 1 when extrapolating) and return its row of the table."""
    mk = measure(step_k, *measure_args)
    m1 = measure(step_1, *measure_args) if step_1 is not None else None
    full = _extrapolate(m1, mk, k, depth)
    s, e = step_k.token_range
    row = {"layout": lay.name(), "world": lay.world, "impl": lay.impl, "cfg_parallel": lay.cfg_parallel,
           "cp": lay.cp, "ulysses_size": lay.ulysses_size, "tokens_per_rank": e - s,
           "batch": 1 if lay.cfg_parallel else 2, "transfers_per_step_at_timed_depth": mk["transfers"],
           "timed": {"blocks_k": _rounded(mk, ("step_s", "times_s", "compute_s", "standin_copy_s")),
                     "blocks_1": None if m1 is None else _rounded(m1, ("step_s", "times_s", "compute_s"))},
           **{key: (int(round(v)) if key.endswith("bytes") else round(v, 6)) for key, v in full.items()}}
    exposed = full["exposed_comm_s"] if overlap == "code" else full["comm_s"]
    row["predicted_step_s"] = round(full["compute_s"] + exposed, 6)
    row["predicted_step_s_no_overlap"] = round(full["compute_s"] + full["comm_s"], 6)
    return row


def run_model(args, device, dtype, save: Callable[[dict], None]) -> dict:
    from cosmos_dist.models import build_dit, get_preset

    cfg = get_preset(f"{args.model}_text2world")
    depth = cfg.num_blocks
    k = args.blocks or depth
    if not (k == depth or 2 <= k < depth):
        raise ConfigError(f"--blocks must be between 2 and {depth - 1} (or {depth}, the full depth); got {k}")
    torch.manual_seed(0)
    net_k = build_dit(cfg.replace(num_blocks=k), device=device, dtype=dtype)
    net_1 = build_dit(cfg.replace(num_blocks=1), device=device, dtype=dtype) if k < depth else None
    inputs = step_inputs(net_k, SHAPES[args.model], device)
    clock, timer = Clock(device), Timer(device)
    kernel_name, kernels = _kernels(args.attention, device)
    link_bps, latency_s = args.link_gbps * 1e9, args.latency_us * 1e-6
    worlds = sorted({1, *args.worlds})
    cfg_modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.cfg]
    layouts = layouts_for(worlds, args.impls, cfg_modes, args.usp_ulysses)
    n_tokens = inputs["x"].shape[1]
    result = {"model": args.model, "blocks_timed": k, "depth": depth, "tokens": n_tokens,
              "attention_kernel": kernel_name, "rows": [], "skipped": [], "failed": []}
    print(f"{args.model}: {n_tokens} tokens, {depth} blocks (timed at {k}{' and 1' if net_1 else ''}), "
          f"attention {kernel_name}", flush=True)
    steps = {}
    measure_args = (timer, clock, args.reps, args.warmup, link_bps, latency_s, args.overlap)
    with torch.no_grad():
        for lay in layouts:
            try:
                step_k = rank0_step(net_k, lay, inputs, clock, kernels)
                step_1 = rank0_step(net_1, lay, inputs, clock, kernels) if net_1 is not None else None
                row = layout_row(lay, step_k, step_1, k, depth, args.overlap, measure_args)
            except ConfigError as exc:  # e.g. ulysses with heads % cp != 0: reported, not fatal
                result["skipped"].append({"layout": lay.name(), "why": str(exc)})
                print(f"  {lay.name():22s} skipped: {exc}", flush=True)
                continue
            except RuntimeError as exc:  # a kernel that cannot run this shape, out of memory: the rest goes on
                result["failed"].append({"layout": lay.name(), "error": f"{type(exc).__name__}: {exc}"[:500]})
                print(f"  {lay.name():22s} FAILED: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            result["rows"].append(row)
            steps[lay] = step_k
            save(result)
            print(f"  {lay.name():22s} compute {row['compute_s']:8.4f} s  comm {row['sent_bytes'] / 1e9:7.3f} GB "
                  f"{row['comm_s']:7.4f} s (exposed {row['exposed_comm_s']:.4f})  "
                  f"step {row['predicted_step_s']:8.4f} s",
                  flush=True)
        base = next((r["predicted_step_s"] for r in result["rows"] if r["world"] == 1), None)
        for r in result["rows"] if base else ():
            r["compute_efficiency"] = round(base / (r["world"] * r["compute_s"]), 4)
            r["efficiency"] = round(base / (r["world"] * r["predicted_step_s"]), 4)
            r["efficiency_no_overlap"] = round(base / (r["world"] * r["predicted_step_s_no_overlap"]), 4)
            r["video_s"] = round(sum(PRE_SAMPLING_S.values()) + args.steps * r["predicted_step_s"]
                                 + sum(SERIAL_STAGES_S.values()), 2)
        if args.profile:
            result["profile"] = profile_rows(steps, device, clock, worlds[-1])
    return result


def profile_rows(steps: dict, device, clock: Clock, world: int) -> dict:
    """Kernel buckets of world 1 and of each no-cfg layout at the largest world, at the timed depth, and
    each bucket's excess over an ideal split (bucket - world-1 bucket / world)."""
    base_lay = next(lay for lay in steps if lay.world == 1 and not lay.cfg_parallel)
    with torch.no_grad():
        steps[base_lay].fn()  # warm
        base = kernel_buckets(steps[base_lay].fn, device)
        out = {"world_1": {k: round(v, 4) for k, v in base.items()}}
        for lay, step in steps.items():
            if lay.world != world or lay.cfg_parallel or lay.world == 1:
                continue
            step.reset()
            b = kernel_buckets(step.fn, device)
            standin = sum(clock.seconds(*t.copy) for t in step.transfers())
            out[lay.name()] = {
                "seconds": {k: round(v, 4) for k, v in b.items()},
                "standin_copy_s": round(standin, 4),  # inside "copy": the stand-ins, not the model's work
                "excess_over_ideal_s": {k: round(b[k] - base[k] / world, 4) for k in b},
            }
    return out


def print_table(res: dict) -> None:
    pct = lambda r, key: f"{r[key]:.1%}" if key in r else "-"  # noqa: E731
    print(f"\nPREDICTED from one device ({res['model']}, one guided step, cp rank 0; link {res['link_gbps']} GB/s, "
          f"overlap={res['overlap']})")
    print(f"{'layout':22s} {'tok/rank':>8s} {'compute s':>9s} {'comm GB':>8s} {'comm s':>7s} {'exposed':>7s} "
          f"{'step s':>7s} {'eff comp':>8s} {'eff':>6s} {'eff no-ovl':>10s} {'video s':>8s}")
    for r in res["rows"]:
        print(f"{r['layout']:22s} {r['tokens_per_rank']:8d} {r['compute_s']:9.3f} {r['sent_bytes'] / 1e9:8.2f} "
              f"{r['comm_s']:7.3f} {r['exposed_comm_s']:7.3f} {r['predicted_step_s']:7.3f} "
              f"{pct(r, 'compute_efficiency'):>8s} {pct(r, 'efficiency'):>6s} {pct(r, 'efficiency_no_overlap'):>10s} "
              f"{r.get('video_s', float('nan')):8.1f}")
    for name, entry in res.get("profile", {}).items():
        print(f"profile {name}: {json.dumps(entry)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    ap.add_argument("--model", default="7b", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--worlds", type=ints, default=[1, 2, 4, 8], help="world sizes (GPUs per replica); 1 is always run")
    ap.add_argument("--impls", type=lambda s: [x for x in s.split(",") if x], default=list(IMPLS),
                    help="cp implementations: ulysses, ring, usp")
    ap.add_argument("--cfg", default="both", choices=["off", "on", "both"], help="cfg-parallel off, on, or both")
    ap.add_argument("--usp-ulysses", type=int, default=None, help="usp's ulysses group size (default cp // 2)")
    ap.add_argument("--blocks", type=int, default=None,
                    help="time networks of this many blocks and of 1, extrapolate to the full depth (default: full)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--attention", default="auto", help="local attention kernel (precision.attention_kernel)")
    ap.add_argument("--link-gbps", type=float, default=350.0,
                    help="per-GPU link bandwidth each way, GB/s (default 350: NVLink-class, e.g. H100/H200 HGX)")
    ap.add_argument("--latency-us", type=float, default=10.0, help="fixed cost per collective, microseconds")
    ap.add_argument("--overlap", default="code", choices=OVERLAPS,
                    help="code: ring transfers overlap the block compute they are posted before; "
                         "none: nothing overlaps")
    ap.add_argument("--steps", type=int, default=35, help="guided steps per video, for the per-video figure")
    ap.add_argument("--profile", action="store_true", help="kernel-time buckets: world 1 against the largest world")
    ap.add_argument("--output", help="write the results as JSON here")
    args = ap.parse_args(argv)
    bad = [i for i in args.impls if i not in IMPLS]
    if bad:
        ap.error(f"--impls: unknown {', '.join(bad)}; choose from {', '.join(IMPLS)}")
    if any(w < 1 for w in args.worlds):
        ap.error("--worlds: every world size must be at least 1")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    started = time.perf_counter()
    res = {
        "PREDICTED": "one device runs cp rank 0's work; transfers are modelled, not measured on several GPUs",
        "date": _dt.date.today().isoformat(),
        "command": " ".join(["python", "tools/scaling_model.py", *(argv if argv is not None else sys.argv[1:])]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "dtype": args.dtype, "link_gbps": args.link_gbps, "latency_us": args.latency_us,
        "overlap": args.overlap, "steps_per_video": args.steps,
        "serial_stages_s": {"before_sampling": PRE_SAMPLING_S, "after_sampling": SERIAL_STAGES_S,
                            "source": "docs/PERFORMANCE.md, one 7B Text2World sample end to end (H100, BF16)"},
    }

    def save(partial: dict) -> None:  # after every row: a run cut short still leaves its numbers
        if args.output:
            tmp = Path(args.output + ".tmp")
            tmp.write_text(json.dumps({**res, **partial}, indent=2))
            tmp.replace(args.output)

    try:
        res.update(run_model(args, device, dtype, save))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    res["wall_s"] = round(time.perf_counter() - started, 1)
    save(res)
    print_table(res)
    return 0 if res["rows"] and not res["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
