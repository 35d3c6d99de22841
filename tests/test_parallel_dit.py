"""The tiny DiT sharded over cp ranks (gloo, 4 processes) against the single-process forward.

One 4-process launch runs three layouts in turn (megatron-core parallel_state underneath):
  A. cp=4 on two simulated "nodes" of 2 ranks: ulysses, ring, usp (2x2, megatron's hierarchical
     cp groups), auto (-> usp), Text2World and Video2World, grids whose token count cp divides or
     not, and where cp divides T or not;
  B. cp=2 + cfg_parallel -> dp 1: ulysses/ring per branch, exchange of the branch outputs,
     broadcasts from the replica leader;
  C. cp=1 + cfg_parallel -> dp 2: groups, exchange, broadcasts, dp all-reduce.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from cosmos_dist.parallel.context_parallel import self_attention_for_layout
from cosmos_dist.models.dit import build_dit
from cosmos_dist.models.presets import get_preset
from cosmos_dist.parallel import (
    ParallelConfig,
    broadcast_object,
    broadcast_tensor,
    broadcast_tensors,
    destroy_layout,
    exchange_branch_outputs,
    gather_tokens,
    init_layout,
)
from cosmos_dist.parallel.testing import init_gloo, rel_err, spawn_ranks

TOL = 1e-5
# Latent (T, H, W) -> patch grid (T, H/2, W/2): 3x4x5 = 60 tokens (cp does not divide T=3),
# 3x3x5 = 45 tokens (neither 2 nor 4 divides it), 4x2x3 = 24 tokens (cp divides T=4).
LATENTS = [(3, 8, 10), (3, 6, 10), (4, 4, 6)]


def _inputs(net, latent, seed: int, emb_seed: int | None = None):
    g = torch.Generator().manual_seed(seed)
    t, h, w = latent
    x = torch.randn(1, 16, t, h, w, generator=g)
    cond_mask = None
    if net.config.video2world:
        cond_mask = torch.zeros(1, 1, t, h, w)
        cond_mask[:, :, :1] = 1.0
    tokens, grid = net.patchify(net.input_channels(x, None, cond_mask))
    ge = torch.Generator().manual_seed(seed + 1 if emb_seed is None else emb_seed)
    emb = torch.randn(1, 7, net.config.crossattn_emb_channels, generator=ge)
    timesteps = torch.tensor([0.37])
    return tokens, grid, timesteps, emb


def _check_sharded(net, layout, latent, impls, seed):
    tokens, grid, timesteps, emb = _inputs(net, latent, seed)
    ref = net.forward_tokens(tokens, timesteps, emb, grid, fps=24.0)
    for impl in impls:
        attn, ranges, resolved = self_attention_for_layout(layout, grid, net.config.num_heads, impl)
        s, e = ranges[layout.cp_rank]
        out = net.forward_tokens(
            tokens[:, s:e], timesteps, emb, grid, fps=24.0, token_range=(s, e), self_attention=attn
        )
        err = rel_err(out, ref[:, s:e])
        assert err <= TOL, f"{net.config.name} {impl}->{resolved} latent {latent} cp rank {layout.cp_rank}: {err:.3g}"
        full = gather_tokens(out, layout.cp_group, ranges)
        err = rel_err(full, ref)
        assert err <= TOL, f"{net.config.name} {impl}->{resolved} latent {latent} gathered: {err:.3g}"
        yield impl, resolved


def _dit_worker(rank: int, world: int):
    init_gloo(rank, world, timeout_s=120)
    torch.manual_seed(0)
    t2w = build_dit(get_preset("tiny_text2world"))
    torch.manual_seed(1)
    v2w = build_dit(get_preset("tiny_video2world"))
    try:
        with torch.no_grad():
            _phase_a(rank, t2w, v2w)
            _phase_b(rank, t2w)
            _phase_c(rank, t2w)
    finally:
        dist.destroy_process_group()


def _phase_a(rank, t2w, v2w):
    lay = init_layout(ParallelConfig(cp_size=4, timeout_s=120))
    assert (lay.dp_size, lay.cfg_size, lay.cp_size) == (1, 1, 4)
    assert lay.cp_rank == rank and lay.cp_ranks == [0, 1, 2, 3] and lay.is_replica_leader == (rank == 0)
    assert lay.num_nodes == 2 and not lay.cp_fits_in_node
    # megatron's hierarchical cp groups: ulysses over consecutive pairs, ring across the "nodes"
    assert lay.ulysses_size == 2
    assert dist.get_process_group_ranks(lay.cp_ulysses_group) == [rank - rank % 2, rank - rank % 2 + 1]
    assert dist.get_process_group_ranks(lay.cp_ring_group) == [rank % 2, rank % 2 + 2]
    for i, latent in enumerate(LATENTS):
        resolved = dict(_check_sharded(t2w, lay, latent, ("ulysses", "ring", "usp", "auto"), 10 + i))
        assert resolved["auto"] == "usp"
    for i, latent in enumerate(LATENTS[:2]):
        list(_check_sharded(v2w, lay, latent, ("ulysses", "ring", "usp"), 20 + i))
    destroy_layout(lay)


def _phase_b(rank, net):
    lay = init_layout(ParallelConfig(cp_size=2, cfg_parallel=True, timeout_s=120))
    assert (lay.dp_size, lay.cfg_size, lay.cp_size) == (1, 2, 2)
    assert lay.cfg_rank == rank // 2 and lay.cp_rank == rank % 2
    assert lay.cp_ranks == [rank - rank % 2, rank - rank % 2 + 1]
    assert lay.cfg_ranks == [rank % 2, rank % 2 + 2] and lay.dp_ranks == [rank]
    assert lay.replica_ranks == [0, 1, 2, 3] and lay.is_replica_leader == (rank == 0)
    assert lay.cp_fits_in_node  # ranks (0, 1) and (2, 3) are the two "nodes"
    assert dist.get_process_group_ranks(lay.cfg_group) == lay.cfg_ranks

    # Text embeddings are made on the replica leader only and broadcast.
    tokens, grid, timesteps, _ = _inputs(net, LATENTS[1], 30)
    if lay.is_replica_leader:
        g = torch.Generator().manual_seed(31)
        embs = {"cond": torch.randn(1, 7, 64, generator=g), "uncond": torch.randn(1, 7, 64, generator=g)}
    else:
        embs = None
    embs = broadcast_tensors(embs, lay.replica_leader, lay.replica_group)
    g = torch.Generator().manual_seed(31)
    expect_c, expect_u = torch.randn(1, 7, 64, generator=g), torch.randn(1, 7, 64, generator=g)
    assert torch.equal(embs["cond"], expect_c) and torch.equal(embs["uncond"], expect_u)
    meta = broadcast_object({"prompt": "a cat", "seed": 7} if lay.is_replica_leader else None, lay.replica_leader, lay.replica_group)
    assert meta == {"prompt": "a cat", "seed": 7}

    ref_c = net.forward_tokens(tokens, timesteps, expect_c, grid, fps=24.0)
    ref_u = net.forward_tokens(tokens, timesteps, expect_u, grid, fps=24.0)
    mine = embs["cond"] if lay.is_cond else embs["uncond"]
    for impl in ("ulysses", "ring", "auto"):
        attn, ranges, resolved = self_attention_for_layout(lay, grid, net.config.num_heads, impl)
        if impl == "auto":
            assert resolved == "ulysses"
        s, e = ranges[lay.cp_rank]
        f = net.forward_tokens(tokens[:, s:e], timesteps, mine, grid, fps=24.0, token_range=(s, e), self_attention=attn)
        f_c, f_u = exchange_branch_outputs(f, lay)
        assert rel_err(f_c, ref_c[:, s:e]) <= TOL, f"cfg cond {impl}"
        assert rel_err(f_u, ref_u[:, s:e]) <= TOL, f"cfg uncond {impl}"
        guided = gather_tokens(f_c + 7.0 * (f_c - f_u), lay.cp_group, ranges)
        assert rel_err(guided, ref_c + 7.0 * (ref_c - ref_u)) <= TOL
    destroy_layout(lay)


def _phase_c(rank, net):
    lay = init_layout(ParallelConfig(cp_size=1, cfg_parallel=True, timeout_s=120))
    assert (lay.dp_size, lay.cfg_size, lay.cp_size) == (2, 2, 1)
    assert lay.dp_rank == rank // 2 and lay.cfg_rank == rank % 2
    assert lay.cfg_ranks == [rank - rank % 2, rank - rank % 2 + 1]
    assert lay.dp_ranks == [rank % 2, rank % 2 + 2]
    assert lay.replica_ranks == [rank - rank % 2, rank - rank % 2 + 1]
    assert lay.cp_group is None and lay.is_replica_leader == (rank % 2 == 0)
    assert dist.get_process_group_ranks(lay.dp_group) == lay.dp_ranks
    tokens, grid, timesteps, emb = _inputs(net, LATENTS[2], 40)
    attn, ranges, _ = self_attention_for_layout(lay, grid, net.config.num_heads)
    assert ranges == [(0, 24)]
    f = net.forward_tokens(tokens, timesteps, emb * (1 + lay.cfg_rank), grid, fps=24.0, self_attention=attn)
    f_c, f_u = exchange_branch_outputs(f, lay)
    assert torch.equal(f_c if lay.is_cond else f_u, f)
    ref_other = net.forward_tokens(tokens, timesteps, emb * (2 - lay.cfg_rank), grid, fps=24.0)
    assert rel_err(f_u if lay.is_cond else f_c, ref_other) <= TOL
    x = broadcast_tensor(torch.full((3,), float(rank)) if lay.is_replica_leader else None, lay.replica_leader, lay.replica_group)
    assert torch.equal(x, torch.full((3,), float(lay.replica_leader)))
    y = torch.tensor([float(lay.dp_rank + 1)])
    dist.all_reduce(y, group=lay.dp_group)
    assert y.item() == 3.0
    destroy_layout(lay)


def test_sharded_dit_matches_single_process():
    spawn_ranks(_dit_worker, 4, env={"LOCAL_WORLD_SIZE": 2})
