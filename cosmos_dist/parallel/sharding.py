"""Token shards of the context-parallel group.

The DiT's tokens are the flattened t-major (t, h, w) patch grid. cp rank i holds the contiguous
range `token_ranges(n, cp)[i]`: equal chunks when cp divides n (whole latent frames when cp also
divides T), otherwise the first `n % cp` ranks hold one token more. Everything here works on
(B, N, F) token tensors (dim 1 = tokens) unless told otherwise.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist

from cosmos_dist.errors import ConfigError

Range = tuple[int, int]

KNOWN_HEADS = "the 7B DiT has 32 heads, the 14B DiT 40"


def token_ranges(num_tokens: int, cp: int) -> list[Range]:
    """Contiguous (start, end) per cp rank covering [0, num_tokens)."""
    if cp < 1:
        raise ConfigError(f"cp size must be >= 1; got {cp}")
    if num_tokens < cp:
        raise ConfigError(
            f"cannot split {num_tokens} tokens over cp_size={cp} ranks: every rank needs at least one token; "
            f"use a smaller cp_size or a larger video"
        )
    base, extra = divmod(num_tokens, cp)
    ranges, start = [], 0
    for i in range(cp):
        end = start + base + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def range_lengths(ranges: Sequence[Range]) -> list[int]:
    return [e - s for s, e in ranges]


def shard_tokens(x: torch.Tensor, ranges: Sequence[Range], cp_rank: int, dim: int = 1) -> torch.Tensor:
    """This rank's slice of a full token tensor (a view)."""
    s, e = ranges[cp_rank]
    if x.shape[dim] != ranges[-1][1]:
        raise ValueError(f"tensor has {x.shape[dim]} tokens on dim {dim}; the ranges cover {ranges[-1][1]}")
    return x.narrow(dim, s, e - s)


def gather_tokens(
    local: torch.Tensor, group: Any, ranges: Sequence[Range], dim: int = 1
) -> torch.Tensor:
    """All-gather the shards of a cp group (of unequal length allowed) into the full sequence.

    Shards are padded to the longest on `dim`, gathered with one all_gather, and stripped. Group
    rank i must hold `ranges[i]`. With group None (or size 1) the local tensor is returned."""
    if group is None or dist.get_world_size(group) == 1:
        return local
    n = dist.get_world_size(group)
    if len(ranges) != n:
        raise ValueError(f"{len(ranges)} token ranges for a group of {n} ranks")
    lengths = range_lengths(ranges)
    me = dist.get_rank(group)
    if local.shape[dim] != lengths[me]:
        raise ValueError(f"rank {me} of the cp group holds {local.shape[dim]} tokens; its range has {lengths[me]}")
    longest = max(lengths)
    x = local.contiguous()
    if x.shape[dim] < longest:
        pad_shape = list(x.shape)
        pad_shape[dim] = longest - x.shape[dim]
        x = torch.cat([x, x.new_zeros(pad_shape)], dim=dim)
    parts = [torch.empty_like(x) for _ in range(n)]
    dist.all_gather(parts, x, group=group)
    return torch.cat([p.narrow(dim, 0, l) for p, l in zip(parts, lengths)], dim=dim)


def grid_tokens(grid: Sequence[int]) -> int:
    t, h, w = grid
    return int(t) * int(h) * int(w)


def validate_cp(
    grid: Sequence[int],
    num_heads: int,
    cp: int,
    impl: str,
    ulysses_size: int | None = None,
) -> list[Range]:
    """Check that `impl` can shard this patch grid (T, H, W) over cp ranks; returns the ranges.

    impl is a resolved implementation (ulysses, ring, usp, te) or auto (then only the checks that
    hold for every choice). Raises ConfigError with what to change."""
    n = grid_tokens(grid)
    ranges = token_ranges(n, cp)
    if cp == 1:
        return ranges
    if impl == "ulysses":
        if num_heads % cp:
            raise ConfigError(
                f"cp_impl=ulysses needs num_heads % cp_size == 0, but this model has {num_heads} heads and "
                f"cp_size={cp} ({KNOWN_HEADS}); use cp_impl=ring, or cp_impl=usp (ulysses inside a node x "
                f"ring across nodes), or a cp_size that divides {num_heads}"
            )
    elif impl == "usp":
        u = ulysses_size
        if u is None or u < 1 or cp % u:
            raise ConfigError(f"cp_impl=usp needs a ulysses_size that divides cp_size={cp}; got {u}")
        if num_heads % u:
            raise ConfigError(
                f"cp_impl=usp with ulysses_size={u} needs num_heads % ulysses_size == 0, but this model has "
                f"{num_heads} heads ({KNOWN_HEADS}); pick a ulysses_size that divides {num_heads}, or cp_impl=ring"
            )
    elif impl == "te":
        if n % (2 * cp):
            raise ConfigError(
                f"cp_impl=te (Transformer Engine context parallelism) needs the token count to be divisible by "
                f"2*cp_size = {2 * cp}; the grid {tuple(grid)} has {n} tokens. Use cp_impl=ring/ulysses/usp "
                f"(any token count) or another cp_size"
            )
    elif impl not in ("ring", "auto"):
        raise ConfigError(f"unknown cp implementation {impl!r}; choose auto, ulysses, ring, usp or te")
    return ranges
