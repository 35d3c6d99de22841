"""The pipeline's view of a multi-process job (same methods as pipeline.runtime.SingleProcess).

World = dp x cfg x cp (see layout.py). What each rank does:
- replicas (dp) take every dp-th pending sample, so each sample is made exactly once and its
  result does not depend on dp (noise comes from (seed, sample id) only);
- inside a replica, the replica leader runs the text encoder and broadcasts the embeddings (and
  any prompt error, so every rank of the replica skips the same sample); it alone decodes, writes
  files and appends to the manifest;
- the cp ranks each hold one contiguous token shard of the latent for the whole sampling loop; it
  is gathered once, for decoding;
- with cfg_parallel the two halves of a cfg pair run the conditional and unconditional passes and
  exchange outputs once per step.
"""
from __future__ import annotations

import logging
import traceback
from typing import Any, Callable

import torch

from cosmos_dist.errors import CosmosDistError, error_reason
from cosmos_dist.parallel.cfg_parallel import broadcast_object, broadcast_tensor, exchange_branch_outputs
from cosmos_dist.parallel.layout import ParallelConfig, destroy_layout, init_layout
from cosmos_dist.parallel.sharding import gather_tokens, token_ranges

log = logging.getLogger("cosmos_dist")


class SampleError(CosmosDistError):
    """One sample could not be made (its error happened on the replica leader); the run goes on."""


class DistributedRuntime:
    def __init__(self, layout):
        self.layout = layout
        self._attention: dict[tuple, tuple] = {}

    @classmethod
    def create(cls, parallel_cfg) -> "DistributedRuntime":
        return cls(init_layout(ParallelConfig.from_node(parallel_cfg)))  # every parallel.* key

    # ---- roles ---------------------------------------------------------------------------------
    @property
    def is_global_leader(self) -> bool:
        return self.layout.rank == 0

    @property
    def is_replica_leader(self) -> bool:
        return self.layout.is_replica_leader

    @property
    def local_device_index(self) -> int:
        d = self.layout.device
        return d.index if d.type == "cuda" and d.index is not None else 0

    def my_items(self, items):
        return list(items)[self.layout.dp_rank :: self.layout.dp_size]

    # ---- leader work, shared with the replica ----------------------------------------------------
    def on_leader(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the replica leader and hand its result to every rank of the replica. Any error there
        (a prompt too long, an unreadable or hostile input file: a Pillow DecompressionBombError, ...) belongs
        to the sample: it is raised on every rank of the replica as a `SampleError`, so all of them record the
        sample failed and go on together. Only the broadcast itself failing (a lost rank) ends the job."""
        lay = self.layout
        if len(lay.replica_ranks) == 1:  # a replica of one rank (pure data parallel)
            return fn()
        if lay.is_replica_leader:
            try:
                box = ("ok", fn())
            except Exception as exc:  # noqa: BLE001 - every sample-level error, whatever its type
                if not isinstance(exc, CosmosDistError):
                    log.error("on the replica leader:\n%s", "".join(traceback.format_exception(exc)).rstrip())
                box = ("error", error_reason(exc))
        else:
            box = None
        box = broadcast_object(box, src=lay.replica_leader, group=lay.replica_group)
        if box[0] == "error":
            raise SampleError(box[1])
        return box[1]

    def share_tensor(self, t: torch.Tensor | None) -> torch.Tensor:
        lay = self.layout
        if len(lay.replica_ranks) == 1:
            return t
        return broadcast_tensor(t, src=lay.replica_leader, group=lay.replica_group, device=lay.device)

    def barrier(self) -> None:
        torch.distributed.barrier()

    def agree_stop(self, requested: bool) -> bool:
        """True on every rank of the replica when any of them was asked to stop (one all-reduce
        per sample; replicas run different numbers of samples, so only inside the replica)."""
        if len(self.layout.replica_ranks) == 1:
            return requested
        flag = torch.tensor([1 if requested else 0], device=self.layout.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self.layout.replica_group)
        return bool(flag.item())

    # ---- sharded sampling ------------------------------------------------------------------------
    def _ranges(self, num_tokens: int):
        return token_ranges(num_tokens, self.layout.cp_size)

    def token_range(self, num_tokens: int):
        if self.layout.cp_size == 1:
            return None
        return self._ranges(num_tokens)[self.layout.cp_rank]

    def cp_impl_for(self, num_heads: int) -> str:
        """The context-parallel implementation self-attention will use (local, ulysses, ring, usp, te)."""
        from cosmos_dist.parallel.context_parallel import impl_for_layout

        return impl_for_layout(self.layout, num_heads)

    def denoiser_options(self, parallel_cfg, grid=None, num_heads=None, local=None, lse_kernel=None) -> dict:
        """`local` / `lse_kernel`: the local attention kernels (default SDPA / cuDNN with LSE)."""
        from cosmos_dist.parallel.context_parallel import self_attention_for_layout

        key = (tuple(grid), num_heads, local, lse_kernel)
        if key not in self._attention:
            kernels = {} if local is None else {"local": local}
            if lse_kernel is not None:
                kernels["lse_kernel"] = lse_kernel
            self._attention[key] = self_attention_for_layout(self.layout, grid, num_heads, **kernels)
        attn, _, impl = self._attention[key]
        self.cp_impl = impl
        if self.layout.cfg_size == 2:
            return {
                "self_attention": attn,
                "mode": "cfg_parallel",
                "cfg_branch": self.layout.cfg_rank,
                "exchange": lambda f: exchange_branch_outputs(f, self.layout),
            }
        return {"self_attention": attn, "mode": "batch" if parallel_cfg.batch_cfg else "sequential"}

    def gather_tokens(self, tokens: torch.Tensor):
        """The full token sequence on the replica leader (None on the other ranks)."""
        lay = self.layout
        full = tokens if lay.cp_size == 1 else gather_tokens(tokens, lay.cp_group, self._ranges(self._num_tokens(tokens)))
        return full if lay.is_replica_leader else None

    def sum_over_shards(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over the cp ranks of this replica (a statistic of the token shards, e.g. for a step-caching
        decision that every cp rank must take alike); the same tensor on every cp rank."""
        if self.layout.cp_size == 1:
            return t
        t = t.clone()
        torch.distributed.all_reduce(t, group=self.layout.cp_group)
        return t

    def _num_tokens(self, tokens: torch.Tensor) -> int:
        # Every cp rank holds its own range; the full length is the sum over the group.
        n = torch.tensor([tokens.shape[1]], device=tokens.device)
        torch.distributed.all_reduce(n, group=self.layout.cp_group)
        return int(n.item())

    # ---- failures and teardown -------------------------------------------------------------------
    def ends_job(self, exc: BaseException) -> bool:
        """Whether `exc`, raised on this rank while its replica works on a sample together, ends the job. Errors
        of the sample (CosmosDistError, which on_leader raises alike on every rank of the replica) do not. Anything
        else may have hit this rank only, or be a lost peer: its replica's ranks would wait for each other in
        a collective, so the job ends. A replica of one rank waits for nobody: every error is the sample's."""
        return len(self.layout.replica_ranks) > 1 and not isinstance(exc, CosmosDistError)

    def interrupt(self, exc: BaseException, manifest, item) -> None:
        """End the job for `exc` (see ends_job): the sample is recorded `interrupted` (not failed: it stays
        pending and a resubmission makes it) and `exc` is raised again for run_guarded, which names the rank
        that died or hung and exits with EXIT_INTERRUPTED."""
        if self.layout.is_replica_leader and manifest is not None:
            try:
                manifest.append(status="interrupted", sample_id=item.sample_id, line=item.line_number,
                                reason=f"the job ended: {error_reason(exc)}")
            except Exception as rec_exc:  # noqa: BLE001 - the job is ending either way
                log.warning("could not record sample %s as interrupted: %s", item.sample_id, rec_exc)
        raise exc

    def after_failure(self, exc: BaseException) -> None:
        """Called after a sample failed: raise `exc` again when it ends the job (see ends_job)."""
        if self.ends_job(exc):
            raise exc

    def guarded(self, fn: Callable[[], Any]) -> Any:
        """fn() under the failure guard: a rank that fails or hangs ends the job with `rank R failed: cause`."""
        from cosmos_dist.parallel.guard import run_guarded

        return run_guarded(fn, self.layout)

    def describe(self) -> dict:
        d = self.layout.as_dict()
        d["cp_impl"] = getattr(self, "cp_impl", d.get("cp_impl"))
        return d

    def close(self) -> None:
        # Wait for the whole job before leaving: a rank that exits first with "some sample failed"
        # (code 1) would make torchrun stop the others, perhaps while the leader writes a file. Guarded like
        # the run: a peer that died or hung (in pure data parallelism the others only meet it here) ends the
        # job with the same one-line `rank R failed` report and EXIT_INTERRUPTED, not a traceback.
        from cosmos_dist.parallel.guard import run_guarded

        try:
            run_guarded(torch.distributed.barrier, self.layout)
        finally:
            destroy_layout(self.layout)
