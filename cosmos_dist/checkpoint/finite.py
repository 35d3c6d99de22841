"""Non-finite numbers (NaN, inf) in weights and results: a damaged checkpoint must not make `done` samples.

- `nonfinite_tensors(named)`: the names of the tensors holding NaN or inf, checked on whatever device they
  are on. load_dit runs it on every network tensor after the cast to the run dtype and the move to the run
  device, so on a GPU it reads device memory. Cost, an ESTIMATE scaled from a small timing, not measured at
  14B: torch.isfinite(t).all() ran at about 0.13 GB/s on one core of the (shared, busy) development CPU, timed
  over 1 GiB of bfloat16; the 28 GB of a 14B DiT in bfloat16 would so take roughly 3.5 min single-threaded
  on a CPU (less with more threads). On a GPU the same pass reads HBM at terabytes per second: well under a
  second for 14B (about a thousand tensors, one small sync each), small next to reading the file.
- `check_finite_latent(latent, net)`: a sampled latent with NaN/inf fails its sample with a message that
  points at the checkpoint (the pipeline calls it right after sampling, before anything is decoded).
"""
from __future__ import annotations

from typing import Iterable

import torch

from cosmos_dist.errors import CheckpointError


def nonfinite_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors that hold at least one NaN or inf."""
    return [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def nonfinite_weights_message(path, names: list[str], dtype: torch.dtype) -> str:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (
        f"{path}: {len(names)} network tensor(s) hold NaN or inf values in {str(dtype).replace('torch.', '')} "
        f"({shown}); every video made with them would be invalid. The file is damaged or was saved from a "
        f"diverged model: download it again (`cosmos-dist download --force`) and check it with "
        f"`cosmos-dist inspect --verify {path}`"
    )


def check_finite_latent(latent: torch.Tensor | None, net=None) -> torch.Tensor | None:
    """Return `latent` unchanged, or raise CheckpointError (the sample fails, the run goes on) when it holds
    NaN or inf. `None` (a rank that does not hold the gathered latent) passes."""
    if latent is None or bool(torch.isfinite(latent).all()):
        return latent
    bad = int((~torch.isfinite(latent)).sum())
    ident = getattr(net, "checkpoint_identity", None)
    where = f"the DiT checkpoint {ident.path}" if ident is not None else "the DiT checkpoint"
    raise CheckpointError(
        f"the sampled latent has {bad} of {latent.numel()} values NaN or inf, so no video was written: "
        f"{where} (or the precision settings) produce invalid numbers; check the file with "
        f"`cosmos-dist inspect --verify`, or try precision.dit_dtype=float32"
    )
