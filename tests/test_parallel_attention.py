"""Context-parallel self-attention (ulysses, ring, usp, te) against single-process SDPA."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from cosmos_dist.parallel.context_parallel import (
    make_self_attention,
    merge_partial,
    resolve_impl,
    usp_plan,
)
from cosmos_dist.attention.local import attention_with_lse, sdpa_attention
from cosmos_dist.errors import ConfigError
from cosmos_dist.parallel.sharding import gather_tokens, shard_tokens, token_ranges, validate_cp
from cosmos_dist.parallel.testing import init_gloo, rel_err, spawn_ranks

TOL = 1e-5


# ---- single process ------------------------------------------------------------------------------
def test_token_ranges():
    assert token_ranges(8, 2) == [(0, 4), (4, 8)]
    assert token_ranges(45, 4) == [(0, 12), (12, 23), (23, 34), (34, 45)]
    assert token_ranges(3, 3) == [(0, 1), (1, 2), (2, 3)]
    assert token_ranges(5, 1) == [(0, 5)]
    for n, cp in [(60, 4), (61, 4), (7, 7), (100, 3)]:
        r = token_ranges(n, cp)
        assert r[0][0] == 0 and r[-1][1] == n and all(a[1] == b[0] for a, b in zip(r, r[1:]))
        lengths = [e - s for s, e in r]
        assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)
    with pytest.raises(ConfigError, match="3 tokens over cp_size=4"):
        token_ranges(3, 4)


def test_shard_tokens():
    x = torch.arange(2 * 7 * 3).view(2, 7, 3)
    r = token_ranges(7, 3)
    assert torch.equal(torch.cat([shard_tokens(x, r, i) for i in range(3)], 1), x)
    assert gather_tokens(x, None, [(0, 7)]) is x


def test_validate_cp_messages():
    with pytest.raises(ConfigError) as e:
        validate_cp((16, 44, 80), 40, 16, "ulysses")
    msg = str(e.value)
    assert "40 heads" in msg and "cp_size=16" in msg and "32 heads" in msg and "ring" in msg and "usp" in msg
    assert len(validate_cp((16, 44, 80), 32, 8, "ulysses")) == 8
    with pytest.raises(ConfigError, match="ulysses_size=3"):
        validate_cp((16, 44, 80), 40, 12, "usp", ulysses_size=3)
    validate_cp((16, 44, 80), 40, 16, "usp", ulysses_size=8)
    validate_cp((3, 3, 5), 4, 4, "ring")
    with pytest.raises(ConfigError, match="2\\*cp_size"):
        validate_cp((3, 3, 5), 4, 2, "te")
    with pytest.raises(ConfigError, match="unknown"):
        validate_cp((3, 3, 5), 4, 2, "bogus")


def test_resolve_impl():
    assert resolve_impl("auto", 32, 8, cp_fits_in_node=True) == "ulysses"
    assert resolve_impl("auto", 40, 16, cp_fits_in_node=False, ulysses_size=8) == "usp"
    assert resolve_impl("auto", 32, 16, cp_fits_in_node=False, ulysses_size=8) == "usp"
    assert resolve_impl("auto", 40, 3, cp_fits_in_node=True) == "ring"
    assert resolve_impl("auto", 40, 16, cp_fits_in_node=False, ulysses_size=None) == "ring"
    assert resolve_impl("ring", 32, 8) == "ring"
    assert resolve_impl("auto", 32, 1) == "local"
    with pytest.raises(ConfigError):
        resolve_impl("flash", 32, 8)


def test_usp_plan():
    ranges = token_ranges(45, 4)  # 12, 11, 11, 11
    assert usp_plan([0, 1, 2, 3], ranges, [2, 3], [1, 3]) == ([11, 11], [23, 22])
    with pytest.raises(ConfigError, match="consecutive"):
        usp_plan([0, 1, 2, 3], ranges, [1, 2], [0, 2])


def test_merge_partial_matches_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 13, 3, 16, generator=g) for _ in range(3))
    ref = sdpa_attention(q, k, v)
    out = lse = None
    for s, e in token_ranges(13, 4):
        out, lse = merge_partial(out, lse, *attention_with_lse(q, k[:, s:e], v[:, s:e]))
    assert rel_err(out, ref) <= TOL


def test_te_missing_is_a_config_error():
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("Transformer Engine is installed; the missing-TE message cannot be checked here")
    with pytest.raises(ConfigError, match=r"pip install cosmos-dist\[te\]"):
        make_self_attention("te", None, [(0, 8)])


# ---- multi-process (gloo on the CPU) ---------------------------------------------------------------
def _groups_of(world: int, cp: int):
    """cp groups of consecutive ranks (all ranks create all groups, in order); returns mine."""
    mine = None
    for base in range(0, world, cp):
        g = dist.new_group(list(range(base, base + cp)))
        if base <= dist.get_rank() < base + cp:
            mine = g
    return mine


def _usp_groups(world: int, cp: int, u: int):
    ul = ring = None
    me = dist.get_rank()
    for base in range(0, world, cp):
        for i in range(cp // u):
            ranks = [base + i * u + j for j in range(u)]
            g = dist.new_group(ranks)
            ul = g if me in ranks else ul
        for j in range(u):
            ranks = [base + i * u + j for i in range(cp // u)]
            g = dist.new_group(ranks)
            ring = g if me in ranks else ring
    return ul, ring


def _attention_worker(rank: int, world: int):
    init_gloo(rank, world)
    try:
        checked = 0
        for cp in (2, 4):
            group = _groups_of(world, cp)
            usp = {u: _usp_groups(world, cp, u) for u in (1, 2) if cp % u == 0}
            cp_rank = dist.get_rank(group)
            for num_tokens in (24, 23, 7):  # equal shards, unequal shards, tiny shards
                g = torch.Generator().manual_seed(1000 + num_tokens)
                q, k, v = (torch.randn(2, num_tokens, 4, 16, generator=g) for _ in range(3))
                ref = sdpa_attention(q, k, v)
                ranges = token_ranges(num_tokens, cp)
                s, e = ranges[cp_rank]
                cases = {"ulysses": {}, "ring": {}}
                for u, (ul, ring) in usp.items():
                    cases[f"usp{u}x{cp // u}"] = {"ulysses_group": ul, "ring_group": ring}
                for name, kw in cases.items():
                    impl = name[:3] if name.startswith("usp") else name
                    attn = make_self_attention(impl, group, ranges, **kw)
                    out = attn(q[:, s:e], k[:, s:e], v[:, s:e])
                    err = rel_err(out, ref[:, s:e])
                    assert out.shape == (2, e - s, 4, 16) and out.dtype == q.dtype
                    assert err <= TOL, f"{name} cp={cp} tokens={num_tokens} rank={rank}: rel err {err:.3g}"
                    full = gather_tokens(out, group, ranges)
                    err = rel_err(full, ref)
                    assert err <= TOL, f"{name} cp={cp} tokens={num_tokens} gathered: rel err {err:.3g}"
                    checked += 1
        assert checked == 24  # (ulysses, ring, usp u=1, usp u=2) x 3 token counts x cp 2, 4
    finally:
        dist.destroy_process_group()


def test_cp_attention_matches_sdpa_gloo():
    """ulysses, ring and usp (1x2, 2x1, 1x4, 2x2) for cp 2 and 4, equal and unequal shards."""
    spawn_ranks(_attention_worker, 4)


def _te_worker(rank: int, world: int):
    import datetime

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        group = dist.new_group(list(range(world)))
        num_tokens = 2 * world * 64
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, num_tokens, 8, 64, generator=g).to("cuda", torch.bfloat16) for _ in range(3))
        ref = sdpa_attention(q, k, v)
        ranges = token_ranges(num_tokens, world)
        s, e = ranges[rank]
        for comm in ("p2p", "a2a", "all_gather"):
            attn = make_self_attention("te", group, ranges, cp_comm_type=comm)
            with torch.no_grad():
                out = attn(q[:, s:e], k[:, s:e], v[:, s:e])
            err = rel_err(out.float(), ref[:, s:e].float())
            assert err <= 2e-2, f"te {comm}: rel err {err:.3g}"
    finally:
        dist.destroy_process_group()


def test_te_cp_matches_sdpa():
    pytest.importorskip(
        "transformer_engine.pytorch",
        reason="Transformer Engine is not installed (pip install cosmos-dist[te]); cp_impl=te is GPU-only",
    )
    if torch.cuda.device_count() < 2:
        pytest.skip("cp_impl=te needs at least 2 CUDA GPUs")
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    spawn_ranks(_te_worker, 2)
