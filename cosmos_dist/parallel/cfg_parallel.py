"""Classifier-free guidance split over a cfg pair, and broadcasts from the replica leader.

With `cfg_parallel`, the two ranks of a cfg pair (same replica, same cp rank) run the conditional
(cfg rank 0) and the unconditional (cfg rank 1) forward of the same step at once, each on its own
token shard; `exchange_branch_outputs` gives both of them both results with one all-gather, so
that each can apply the guidance formula and keep its latent shard identical to its partner's.

The text encoder runs once per replica (on the replica leader); `broadcast_tensor` /
`broadcast_object` hand its embeddings to the rest of the replica (`layout.replica_group`).
`src` is always a *global* rank, as in torch.distributed.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def exchange_branch_outputs(f_local: torch.Tensor, layout: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(f_cond, f_uncond) from this rank's branch output and its cfg partner's (one all-gather).

    Both ranks of the pair must pass tensors of the same shape and dtype (the same token shard)."""
    if layout.cfg_size == 1 or layout.cfg_group is None:
        raise ValueError(
            "exchange_branch_outputs needs cfg_parallel (a cfg pair); without it, run both branches locally"
        )
    x = f_local.contiguous()
    parts = [torch.empty_like(x) for _ in range(layout.cfg_size)]
    dist.all_gather(parts, x, group=layout.cfg_group)  # group rank 0 = cond (lower global rank)
    return parts[0], parts[1]


def broadcast_object(obj: Any, src: int, group: Any = None) -> Any:
    """Send a picklable object from global rank `src` to every rank of `group`; returns it.

    With group None and torch.distributed not initialised (one process), returns obj."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    if group is not None and dist.get_world_size(group) == 1:
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src, group=group, device=_comm_device(group))
    return box[0]


def broadcast_tensor(
    t: torch.Tensor | None, src: int, group: Any = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Broadcast a tensor from global rank `src` to `group`; other ranks may pass None.

    The shape and dtype go first (as a small object), then the data. The result is on `device`
    (default: the source keeps its tensor, receivers get the backend's device: cuda for NCCL)."""
    if not (dist.is_available() and dist.is_initialized()) or (
        group is not None and dist.get_world_size(group) == 1
    ):
        if t is None:
            raise ValueError("broadcast_tensor without a process group needs the tensor")
        return t
    is_src = dist.get_rank() == src
    if is_src and t is None:
        raise ValueError(f"rank {src} is the broadcast source but has no tensor")
    meta = broadcast_object((tuple(t.shape), str(t.dtype).removeprefix("torch.")) if is_src else None, src, group)
    shape, dtype_name = meta
    comm_device = _comm_device(group)
    if is_src:
        buf = t.detach().to(comm_device).contiguous()
    else:
        buf = torch.empty(shape, dtype=getattr(torch, dtype_name), device=comm_device)
    dist.broadcast(buf, src=src, group=group)
    out = t if is_src else buf
    return out if device is None else out.to(device)


def _comm_device(group: Any) -> torch.device:
    backend = str(dist.get_backend(group))
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_tensors(tensors: dict[str, torch.Tensor] | None, src: int, group: Any = None) -> dict[str, torch.Tensor]:
    """Broadcast a dict of tensors (e.g. cond/uncond embeddings, masks) field by field."""
    keys = broadcast_object(sorted(tensors) if tensors is not None else None, src, group)
    return {k: broadcast_tensor(tensors[k] if tensors is not None else None, src, group) for k in keys}


__all__ = ["broadcast_object", "broadcast_tensor", "broadcast_tensors", "exchange_branch_outputs"]
