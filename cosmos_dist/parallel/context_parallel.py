"""Self-attention over a context-parallel token shard.

`make_self_attention(impl, group, ranges, ...)` returns `attn(q, k, v) -> out` with q/k/v the
(B, L_local, H, D) "bshd" projections of this rank's contiguous token shard (`ranges[cp_rank]`,
see `cosmos_dist.parallel.sharding.token_ranges`); the output is this shard's attention over the
whole sequence. It plugs into `CosmosDiT.forward_tokens(self_attention=...)`. There is no mask,
so the result does not depend on the order in which key/value blocks are visited.

Implementations (inference only: no autograd support is attempted):

- `ulysses`: one all-to-all turns (B, L_local, H, D) x {q,k,v} into (B, L_full, H/cp, D), local
  attention runs over the whole sequence for H/cp heads, one all-to-all turns the output back.
  Unequal shard lengths use `all_to_all_single` with split sizes (no padding). Needs H % cp == 0.
- `ring`: q stays; the stacked K/V block travels around the ring with `batch_isend_irecv`
  (the next transfer is posted before the current block is computed, so they overlap). Each step's
  partial output is merged with the running one by log-sum-exp in float32. Any cp, any lengths.
- `usp`: ulysses inside groups of `ulysses_size` consecutive cp ranks (one node), then ring across
  the groups over the cp ranks with the same index modulo u (across nodes), then ulysses back.
  cp rank c = ring_index * u + ulysses_index (megatron's hierarchical cp groups [u, cp/u]).
- `te`: Transformer Engine's DotProductAttention with its own CP (cp_comm_type p2p, a2a,
  a2a+p2p or all_gather). TE expects its load-balanced "dual chunk swap" token order, which only
  matters for causal masks: with attn_mask_type="no_mask" every query still sees every key, and
  TE's a2a reordering is undone after attention, so our contiguous shards give the exact result
  (this is also how the reference runs it). TE does need equal shard lengths, even ones
  (tokens divisible by 2*cp), H % (a2a group size) == 0 and, for a2a / a2a+p2p without flash-attn,
  an even H (TE's fused attention); these are checked. The module runs in eval mode (inference).
- `auto`: ulysses when H % cp == 0 and the cp group is inside one node, else usp when a ulysses
  size 1 < u < cp dividing H is available, else ring (`local` when cp == 1).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from cosmos_dist.attention.local import attention_with_lse, sdpa_attention
from cosmos_dist.errors import ConfigError
from cosmos_dist.parallel.sharding import Range, range_lengths, validate_cp

IMPLS = ("ulysses", "ring", "usp", "te")


# ---- the collectives this file uses -------------------------------------------------------------
# ulysses, ring and usp reach torch.distributed only through the four functions below. A `group` may
# also be a `StandInGroup`: an object that answers the same four questions itself. The scaling model
# (tools/scaling_model.py) passes one that copies the same bytes locally, so that one cp rank's whole
# per-rank work runs on one device; the arithmetic is the same code either way.
class StandInGroup:
    """Base of a stand-in for a process group, as the functions of this file use one.

    size() and rank() as in torch.distributed; all_to_all_single(recv, send, output_split_sizes,
    input_split_sizes) fills `recv` as dist.all_to_all_single would; ring_exchange(send, recv) posts
    the send of `send` to the next group rank and the receive of `recv` from the previous one, and
    returns objects with wait(), after which `recv` holds the data."""

    def size(self) -> int:
        raise NotImplementedError

    def rank(self) -> int:
        raise NotImplementedError

    def all_to_all_single(self, recv, send, output_split_sizes, input_split_sizes) -> None:
        raise NotImplementedError

    def ring_exchange(self, send: torch.Tensor, recv: torch.Tensor) -> list:
        raise NotImplementedError


def _group_size(group: Any) -> int:
    if isinstance(group, StandInGroup):
        return group.size()
    return 1 if group is None else dist.get_world_size(group)


def _group_rank(group: Any) -> int:
    return group.rank() if isinstance(group, StandInGroup) else dist.get_rank(group)


def _all_to_all(recv: torch.Tensor, send: torch.Tensor, out_splits: list, in_splits: list, group: Any) -> None:
    if isinstance(group, StandInGroup):
        group.all_to_all_single(recv, send, out_splits, in_splits)
    else:
        dist.all_to_all_single(recv, send, output_split_sizes=out_splits, input_split_sizes=in_splits, group=group)


def _ring_exchange(send: torch.Tensor, recv: torch.Tensor, group: Any) -> list:
    """Post: `send` to the next rank of the group, `recv` from the previous one; returns the requests."""
    if isinstance(group, StandInGroup):
        return group.ring_exchange(send, recv)
    ranks, me = dist.get_process_group_ranks(group), dist.get_rank(group)
    nxt, prv = ranks[(me + 1) % len(ranks)], ranks[(me - 1) % len(ranks)]
    return dist.batch_isend_irecv([dist.P2POp(dist.isend, send, nxt, group), dist.P2POp(dist.irecv, recv, prv, group)])


# ---- log-sum-exp merge -------------------------------------------------------------------------
def merge_partial(
    out: torch.Tensor | None, lse: torch.Tensor | None, block_out: torch.Tensor, block_lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a partial attention result (over one key block) into the running one.

    out (B, L, H, D) float32 and lse (B, H, L) float32 are the running values (None at the first
    block); block_out (B, L, H, D) any dtype and block_lse (B, H, L). Returns the new (out, lse);
    `out` is updated in place when given."""
    block_lse = block_lse.float()
    if out is None:
        return block_out.float(), block_lse
    new_lse = torch.logaddexp(lse, block_lse)
    w_old = torch.exp(lse - new_lse).transpose(1, 2).unsqueeze(-1)  # (B, L, H, 1)
    w_new = torch.exp(block_lse - new_lse).transpose(1, 2).unsqueeze(-1)
    out.mul_(w_old).add_(block_out.float() * w_new)
    return out, new_lse


# ---- ulysses -----------------------------------------------------------------------------------
def _seq_to_heads(x: torch.Tensor, group: Any, lengths: Sequence[int]) -> torch.Tensor:
    """(S, B, L_local, H, D) sequence-sharded -> (S, B, L_full, H/n, D) head-sharded.

    S stacks tensors that travel together (q, k, v). Group rank j receives head block j."""
    n = len(lengths)
    s, b, l_local, h, d = x.shape
    hn = h // n
    # (S, B, L, n, hn, D) -> (n, L, S, B, hn, D): dim 0 indexes the destination rank.
    send = x.reshape(s, b, l_local, n, hn, d).permute(3, 2, 0, 1, 4, 5).contiguous()
    send = send.reshape(n * l_local, s, b, hn, d)
    recv = x.new_empty((sum(lengths), s, b, hn, d))
    _all_to_all(recv, send, list(lengths), [l_local] * n, group)
    return recv.permute(1, 2, 0, 3, 4)  # (S, B, L_full, hn, D), the full sequence in rank order


def _heads_to_seq(x: torch.Tensor, group: Any, lengths: Sequence[int], my_rank: int) -> torch.Tensor:
    """(B, L_full, H/n, D) head-sharded -> (B, L_local, H, D) sequence-sharded (inverse of above)."""
    n = len(lengths)
    b, l_full, hn, d = x.shape
    l_local = lengths[my_rank]
    send = x.permute(1, 0, 2, 3).contiguous()  # (L_full, B, hn, D): rank i gets its token range
    recv = x.new_empty((n * l_local, b, hn, d))
    _all_to_all(recv, send, [l_local] * n, list(lengths), group)
    # (n, L, B, hn, D) -> (B, L, n, hn, D) -> (B, L, H, D): head block j came from rank j.
    return recv.reshape(n, l_local, b, hn, d).permute(2, 1, 0, 3, 4).reshape(b, l_local, n * hn, d)


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: Any,
    lengths: Sequence[int],
    local: Callable = sdpa_attention,
) -> torch.Tensor:
    """Ulysses (all-to-all) attention; `lengths[i]` is group rank i's token count."""
    n = _group_size(group)
    if n == 1:
        return local(q, k, v)
    h = q.shape[2]
    if h % n:
        raise ConfigError(f"ulysses attention needs num_heads % group size == 0; got {h} heads, group of {n}")
    me = _group_rank(group)
    if q.shape[1] != lengths[me]:
        raise ValueError(f"ulysses: rank {me} holds {q.shape[1]} tokens but its range has {lengths[me]}")
    qkv = _seq_to_heads(torch.stack([q, k, v]), group, lengths)
    qf, kf, vf = qkv.contiguous().unbind(0)
    out = local(qf, kf, vf)
    return _heads_to_seq(out, group, lengths, me)


# ---- ring --------------------------------------------------------------------------------------
def ring_attention_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: Any,
    lengths: Sequence[int],
    lse_kernel: Callable = attention_with_lse,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ring attention; returns (out float32 (B, L, H, D), lse (B, H, L) float32).

    `lengths[i]` is the K/V length held by group rank i (unequal allowed)."""
    n = _group_size(group)
    if n == 1:
        o, l = lse_kernel(q, k, v)
        return o.float(), l.float()
    me = _group_rank(group)
    if k.shape[1] != lengths[me]:
        raise ValueError(f"ring: rank {me} holds {k.shape[1]} keys but its range has {lengths[me]}")
    b, _, h, d = k.shape
    kv = torch.stack([k, v])  # one message per step: (2, B, Lk, H, D)
    out = lse = None
    for step in range(n):
        reqs = []
        if step < n - 1:
            origin = (me - step - 1) % n  # whose block the previous rank holds now
            incoming = kv.new_empty((2, b, lengths[origin], h, d))
            reqs = _ring_exchange(kv, incoming, group)
        block_out, block_lse = lse_kernel(q, kv[0], kv[1])
        out, lse = merge_partial(out, lse, block_out, block_lse)
        for r in reqs:
            r.wait()
        if reqs:
            kv = incoming
    return out, lse


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: Any,
    lengths: Sequence[int],
    lse_kernel: Callable = attention_with_lse,
) -> torch.Tensor:
    out, _ = ring_attention_lse(q, k, v, group, lengths, lse_kernel)
    return out.to(q.dtype)


# ---- usp ---------------------------------------------------------------------------------------
def usp_plan(
    cp_ranks: Sequence[int], ranges: Sequence[Range], ulysses_ranks: Sequence[int], ring_ranks: Sequence[int]
) -> tuple[list[int], list[int]]:
    """(ulysses lengths, ring lengths) for the usp arrangement; checks that the groups follow it.

    cp_ranks, ulysses_ranks, ring_ranks are global ranks in group-rank order."""
    pos = {g: i for i, g in enumerate(cp_ranks)}
    u, r = len(ulysses_ranks), len(ring_ranks)
    if u * r != len(cp_ranks):
        raise ConfigError(f"usp: ulysses group of {u} x ring group of {r} != cp group of {len(cp_ranks)}")
    lengths = range_lengths(ranges)
    ul_idx = [pos[g] for g in ulysses_ranks]
    if ul_idx != list(range(ul_idx[0], ul_idx[0] + u)) or ul_idx[0] % u:
        raise ConfigError(f"usp: the ulysses group must be {u} consecutive cp ranks; got cp ranks {ul_idx}")
    ring_idx = [pos[g] for g in ring_ranks]
    if any(c % u != ring_idx[0] % u for c in ring_idx):
        raise ConfigError(f"usp: the ring group must hold one cp rank per ulysses group, same index; got {ring_idx}")
    ul_lengths = [lengths[c] for c in ul_idx]
    ring_lengths = [sum(lengths[(c // u) * u + j] for j in range(u)) for c in ring_idx]
    return ul_lengths, ring_lengths


def usp_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ulysses_group: Any,
    ring_group: Any,
    ulysses_lengths: Sequence[int],
    ring_lengths: Sequence[int],
    lse_kernel: Callable = attention_with_lse,
) -> torch.Tensor:
    """Ulysses over `ulysses_group`, ring attention over `ring_group` on the result, ulysses back."""
    n = _group_size(ulysses_group)
    if n == 1:
        return ring_attention(q, k, v, ring_group, ring_lengths, lse_kernel)
    if q.shape[2] % n:
        raise ConfigError(f"usp needs num_heads % ulysses size == 0; got {q.shape[2]} heads, ulysses size {n}")
    me = _group_rank(ulysses_group)
    qkv = _seq_to_heads(torch.stack([q, k, v]), ulysses_group, ulysses_lengths)
    qf, kf, vf = qkv.contiguous().unbind(0)
    out = ring_attention(qf, kf, vf, ring_group, ring_lengths, lse_kernel)
    return _heads_to_seq(out, ulysses_group, ulysses_lengths, me)


# ---- Transformer Engine --------------------------------------------------------------------------
def _import_te():
    try:
        import transformer_engine.pytorch as te  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install failing at import
        raise ConfigError(
            "cp_impl=te needs NVIDIA Transformer Engine, which is not importable here "
            f"({type(exc).__name__}: {exc}); install it with `pip install cosmos-dist[te]` "
            "(or `pip install transformer-engine[pytorch]`), or use cp_impl=ulysses/ring/usp"
        ) from exc
    return te


def check_te_heads(heads: int, cp_comm_type: str, a2a_size: int, flash_attn_installed: bool = False) -> None:
    """TE's head-count rules for its context parallelism: a2a splits the heads over the a2a group, and (TE 2.20.2,
    attention/dot_product_attention/utils.py lines 1371-1379) its FusedAttention needs an even head count with
    a2a and a2a+p2p. Its unfused backend has no context parallelism (lines 1269-1273), so without a flash-attn
    install next to TE an odd head count leaves no backend."""
    if heads % a2a_size:
        raise ConfigError(
            f"Transformer Engine cp_comm_type={cp_comm_type} needs num_heads % {a2a_size} == 0; got {heads} heads"
        )
    if cp_comm_type in ("a2a", "a2a+p2p") and heads % 2 and not flash_attn_installed:
        raise ConfigError(
            f"Transformer Engine's fused attention with cp_comm_type={cp_comm_type} needs an even number of heads "
            f"(got {heads}); set parallel.te_comm_type=p2p or all_gather, or parallel.cp_impl=ulysses/ring/usp"
        )


def _te_flash_attn_installed() -> bool:
    """Whether TE found a flash-attn 2 or 3 install (its own record, set when its attention backends import)."""
    import sys

    utils = sys.modules.get("transformer_engine.pytorch.attention.dot_product_attention.utils")
    fa = getattr(utils, "FlashAttentionUtils", None)
    return bool(getattr(fa, "is_installed", False) or getattr(fa, "v3_is_installed", False))


class TEContextParallelAttention:
    """Callable (q, k, v) -> out around TE DotProductAttention with CP; built on first call (the
    head count and head size come from q). One module serves every layer (no parameters in BF16)."""

    def __init__(
        self,
        group: Any,
        ranges: Sequence[Range],
        cp_comm_type: str = "p2p",
        ulysses_group: Any = None,
        ring_group: Any = None,
        **te_kwargs,
    ):
        self.te = _import_te()
        lengths = range_lengths(ranges)
        if len(set(lengths)) != 1:
            raise ConfigError(
                f"cp_impl=te needs equal token shards on every cp rank; got {lengths} "
                f"({sum(lengths)} tokens over cp={len(lengths)}); use ulysses/ring/usp for this size"
            )
        if lengths[0] % 2:
            raise ConfigError(
                f"cp_impl=te needs an even shard length (tokens divisible by 2*cp); got {lengths[0]} per rank"
            )
        if cp_comm_type not in ("p2p", "a2a", "a2a+p2p", "all_gather"):
            raise ConfigError(f"unknown Transformer Engine cp_comm_type {cp_comm_type!r}")
        self.group = group
        self.cp_ranks = dist.get_process_group_ranks(group)
        self.cp_comm_type = cp_comm_type
        if cp_comm_type == "a2a+p2p":
            if ulysses_group is None or ring_group is None:
                raise ConfigError("cp_comm_type a2a+p2p needs the usp sub-groups (ulysses_group, ring_group)")
            self.cp_group_arg = [ulysses_group, ring_group]
        else:
            self.cp_group_arg = group
        self.a2a_size = {"a2a": len(self.cp_ranks), "a2a+p2p": _group_size(ulysses_group)}.get(cp_comm_type, 1)
        self.te_kwargs = te_kwargs
        self.module = None

    def _build(self, heads: int, head_dim: int):
        check_te_heads(heads, self.cp_comm_type, self.a2a_size, _te_flash_attn_installed())
        kwargs = dict(
            attn_mask_type="no_mask",
            qkv_format="bshd",
            cp_group=self.cp_group_arg,
            cp_global_ranks=self.cp_ranks,
            cp_stream=torch.cuda.Stream(),
            cp_comm_type=self.cp_comm_type,
        )
        kwargs.update(self.te_kwargs)
        module = self.te.DotProductAttention(heads, head_dim, **kwargs)
        return module.eval()  # inference: TE filters its backends by module mode (FlashAttention 3 for FP8)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, l, h, d = q.shape
        if self.module is None:
            self.module = self._build(h, d)
        out = self.module(q.contiguous(), k.contiguous(), v.contiguous())
        return out.view(b, l, h, d)


# ---- choice and construction -------------------------------------------------------------------
def resolve_impl(
    impl: str,
    num_heads: int,
    cp: int,
    cp_fits_in_node: bool = True,
    ulysses_size: int | None = None,
) -> str:
    """Turn `auto` into ulysses / usp / ring (see module docstring); other names pass through."""
    if impl != "auto":
        if impl not in IMPLS and not (impl == "local" and cp == 1):
            raise ConfigError(f"unknown cp implementation {impl!r}; choose auto, {', '.join(IMPLS)}")
        return impl
    if cp == 1:
        return "local"  # nothing to parallelise: the local kernel
    if num_heads % cp == 0 and cp_fits_in_node:
        return "ulysses"
    u = ulysses_size
    if u is not None and 1 < u < cp and cp % u == 0 and num_heads % u == 0:
        return "usp"
    return "ring"


def make_self_attention(
    impl: str,
    group: Any,
    ranges: Sequence[Range],
    local: Callable = sdpa_attention,
    ulysses_group: Any = None,
    ring_group: Any = None,
    *,
    lse_kernel: Callable = attention_with_lse,
    **te_kwargs,
) -> Callable:
    """Self-attention callable for a token shard of the cp `group`.

    impl: ulysses | ring | usp | te | local (cp == 1 only) (resolve `auto` first with `resolve_impl`, or use
    `self_attention_for_layout`). ranges: token range of every cp rank, in group-rank order.
    local: the local kernel of ulysses (bshd in, bshd out). lse_kernel: the local kernel that also
    returns the LSE, for ring and usp. te_kwargs: `cp_comm_type` and DotProductAttention kwargs.
    With a group of one rank (or None) every impl is plain local attention."""
    n = _group_size(group)
    if len(ranges) != n:
        raise ValueError(f"{len(ranges)} token ranges for a cp group of {n} ranks")
    if impl == "te":
        _import_te()  # a missing TE is reported even before there is anything to parallelise
    if n == 1 or impl == "local":
        if n != 1:
            raise ConfigError(f"impl=local cannot serve a cp group of {n} ranks")
        return local
    lengths = range_lengths(ranges)
    if impl == "ulysses":
        return lambda q, k, v: ulysses_attention(q, k, v, group, lengths, local)
    if impl == "ring":
        return lambda q, k, v: ring_attention(q, k, v, group, lengths, lse_kernel)
    if impl == "usp":
        if ulysses_group is None and ring_group is None:
            raise ConfigError("cp_impl=usp needs ulysses_group and ring_group (Layout.cp_subgroups(u))")
        cp_ranks = dist.get_process_group_ranks(group)
        me = dist.get_rank(group)
        ul_ranks = dist.get_process_group_ranks(ulysses_group) if ulysses_group is not None else [cp_ranks[me]]
        ring_ranks = dist.get_process_group_ranks(ring_group) if ring_group is not None else [cp_ranks[me]]
        ul_lengths, ring_lengths = usp_plan(cp_ranks, ranges, ul_ranks, ring_ranks)
        return lambda q, k, v: usp_attention(
            q, k, v, ulysses_group, ring_group, ul_lengths, ring_lengths, lse_kernel
        )
    if impl == "te":
        return TEContextParallelAttention(group, ranges, ulysses_group=ulysses_group, ring_group=ring_group, **te_kwargs)
    raise ConfigError(f"unknown cp implementation {impl!r}; choose one of {', '.join(IMPLS)} (or auto)")


def _layout_ulysses_size(layout: Any) -> int | None:
    return layout.config.ulysses_size or (layout.ulysses_size if layout.ulysses_size > 1 else None)


def impl_for_layout(layout: Any, num_heads: int, impl: str | None = None) -> str:
    """The cp implementation `impl` (default: the layout's parallel.cp_impl) resolves to on this layout."""
    if layout.cp_size == 1:
        return "local"
    return resolve_impl(impl or layout.config.cp_impl, num_heads, layout.cp_size, layout.cp_fits_in_node,
                        _layout_ulysses_size(layout))


def self_attention_for_layout(
    layout: Any,
    grid: Sequence[int],
    num_heads: int,
    impl: str | None = None,
    local: Callable = sdpa_attention,
    lse_kernel: Callable = attention_with_lse,
    **te_kwargs,
) -> tuple[Callable, list[Range], str]:
    """Everything a sampler needs for one patch grid: (self_attention, token ranges, resolved impl).

    Uses the layout's cp group and config (impl defaults to layout.config.cp_impl). Collective when
    usp needs sub-groups that init_layout did not build: call it on every rank in the same order."""
    cp = layout.cp_size
    if cp == 1:
        return local, validate_cp(grid, num_heads, 1, "ring"), "local"
    u = _layout_ulysses_size(layout)
    resolved = impl_for_layout(layout, num_heads, impl)
    te_comm = te_kwargs.get("cp_comm_type", layout.config.te_comm_type)
    if u is None and (resolved == "usp" or (resolved == "te" and te_comm == "a2a+p2p")):
        what = "cp_impl=usp" if resolved == "usp" else "cp_impl=te with te_comm_type=a2a+p2p"
        raise ConfigError(
            f"{what} needs parallel.ulysses_size (a divisor of cp_size={cp} and of {num_heads} heads, "
            f"at most the GPUs of one node)"
        )
    ranges = validate_cp(grid, num_heads, cp, resolved, u)
    ul_group = ring_group = None
    if resolved == "usp" or (resolved == "te" and te_comm == "a2a+p2p"):
        ul_group, ring_group = layout.cp_subgroups(u)
    if resolved == "te":
        te_kwargs["cp_comm_type"] = te_comm
    fn = make_self_attention(
        resolved, layout.cp_group, ranges, local, ul_group, ring_group, lse_kernel=lse_kernel, **te_kwargs
    )
    return fn, ranges, resolved
