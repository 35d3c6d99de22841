"""Random DiT checkpoints in the exact format of the reference `model.pt` (spec 3.7 and 13).

`checkpoint_plan(cfg, ...)` lists every key and shape such a file holds, without allocating
anything: the network's state dict (built on the meta device, so `net.pos_embedder.seq` is
included), a Transformer Engine `attn_op._extra_state` entry after each self- and
cross-attention of every block, and the three `logvar.*` tensors. `random_checkpoint` fills the
plan with random values generated directly in the output dtype (one copy in memory, also at 14B
scale) and `write_random_checkpoint` saves it as `model.pt` or safetensors.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from cosmos_dist.checkpoint.readers import NET_PREFIX
from cosmos_dist.errors import CheckpointError
from cosmos_dist.models import DiTConfig, build_dit

EXTRA_STATE_FORMS = ("none", "pickled-none", "empty", "bytesio")
FORMATS = ("pt", "safetensors")

# How a planned entry is filled.
INIT_NORMAL = "normal"  # linear weights and position tables: N(0, 0.02)
INIT_ONES = "ones"  # RMSNorm weights
INIT_ARANGE = "arange"  # net.pos_embedder.seq
INIT_EXTRA = "extra_state"
INIT_LOGVAR_FREQS, INIT_LOGVAR_PHASES, INIT_LOGVAR_WEIGHT = "logvar_freqs", "logvar_phases", "logvar_weight"


@dataclass(frozen=True)
class PlannedEntry:
    key: str
    shape: tuple[int, ...]  # () for a BytesIO extra state
    init: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def checkpoint_plan(
    cfg: DiTConfig, extra_state: str = "pickled-none", include_logvar: bool = True
) -> list[PlannedEntry]:
    """Every entry of a real-format checkpoint for `cfg`, in file order. Allocates nothing."""
    if extra_state not in EXTRA_STATE_FORMS:
        raise ValueError(f"extra_state must be one of {EXTRA_STATE_FORMS}, not {extra_state!r}")
    net = build_dit(cfg, device="meta")
    params = {name for name, _ in net.named_parameters()}
    plan: list[PlannedEntry] = []
    pickled_len = len(_pickled_none())
    for name, tensor in net.state_dict().items():
        shape = tuple(tensor.shape)
        if name == "pos_embedder.seq":
            init = INIT_ARANGE
        elif name in params and len(shape) == 1:
            init = INIT_ONES
        elif name in params:
            init = INIT_NORMAL
        else:
            raise AssertionError(f"unplanned buffer {name} in the DiT state dict")
        plan.append(PlannedEntry(NET_PREFIX + name, shape, init))
        # TE keeps the attention op's extra state right after the attention's projections.
        if extra_state != "none" and name.endswith(".block.attn.to_out.0.weight") and ".blocks.2." not in name:
            key = NET_PREFIX + name[: -len("to_out.0.weight")] + "attn_op._extra_state"
            es_shape = {"pickled-none": (pickled_len,), "empty": (0,), "bytesio": ()}[extra_state]
            plan.append(PlannedEntry(key, es_shape, INIT_EXTRA))
    if include_logvar:
        plan += [
            PlannedEntry("logvar.0.freqs", (128,), INIT_LOGVAR_FREQS),
            PlannedEntry("logvar.0.phases", (128,), INIT_LOGVAR_PHASES),
            PlannedEntry("logvar.1.weight", (1, 128), INIT_LOGVAR_WEIGHT),
        ]
    return plan


def plan_parameter_count(plan: list[PlannedEntry]) -> int:
    """Network parameters (what the spec counts): `net.*` tensors except extra state and the seq buffer."""
    return sum(e.numel for e in plan if e.key.startswith(NET_PREFIX) and e.init in (INIT_NORMAL, INIT_ONES))


def _pickled_none() -> bytes:
    return pickle.dumps(None)


def _extra_state_value(form: str):
    if form == "pickled-none":  # TE 1.x, module without FP8 state
        return torch.frombuffer(bytearray(_pickled_none()), dtype=torch.uint8).clone()
    if form == "empty":
        return torch.empty(0, dtype=torch.uint8)
    if form == "bytesio":  # old TE: torch.save of the state into a BytesIO
        buf = io.BytesIO()
        torch.save(None, buf)
        buf.seek(0)
        return buf
    raise ValueError(form)


_CHUNK = 1 << 22  # elements drawn from one generator; fixed, so values do not depend on the thread count


def _seed_for(seed: int, key: str, chunk: int) -> int:
    digest = hashlib.sha256(f"{seed}/{key}/{chunk}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _fill(flat: torch.Tensor, how: str, scale: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    if how == "normal":
        flat.normal_(0.0, scale, generator=gen)
    else:
        flat.uniform_(0.0, scale, generator=gen)


def random_checkpoint(
    cfg: DiTConfig,
    extra_state: str = "pickled-none",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    include_logvar: bool = True,
    workers: int | None = None,
) -> dict:
    """A state dict in the real format with random weights, each tensor generated in `dtype` directly.

    Linear weights and position tables are N(0, 0.02), norm weights 1, `pos_embedder.seq` arange;
    logvar as the reference initialises it (freqs 2*pi*N(0, 1), phases 2*pi*U(0, 1)). Values are
    drawn in fixed chunks of 4M elements, each from a generator seeded by (seed, key, chunk), on
    `workers` threads (default: all CPUs): a tensor's values depend only on the seed and its key,
    not on the extra-state form, the other keys or the number of threads.
    """
    out: dict = {}
    jobs = []  # (flat view, "normal" | "uniform", scale, seed)
    for e in checkpoint_plan(cfg, extra_state, include_logvar):
        if e.init == INIT_EXTRA:
            out[e.key] = _extra_state_value(extra_state)
            continue
        if e.init == INIT_ARANGE:
            out[e.key] = torch.arange(e.shape[0], dtype=torch.float32).to(dtype)
            continue
        if e.init == INIT_ONES:
            out[e.key] = torch.ones(e.shape, dtype=dtype)
            continue
        how, scale = {
            INIT_NORMAL: ("normal", 0.02),
            INIT_LOGVAR_FREQS: ("normal", 2 * math.pi),
            INIT_LOGVAR_PHASES: ("uniform", 2 * math.pi),
            INIT_LOGVAR_WEIGHT: ("normal", 0.02),
        }[e.init]
        t = out[e.key] = torch.empty(e.shape, dtype=dtype)
        flat = t.view(-1)
        for i, start in enumerate(range(0, flat.numel(), _CHUNK)):
            jobs.append((flat[start : start + _CHUNK], how, scale, _seed_for(seed, e.key, i)))
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            _fill(*job)
    else:  # torch releases the GIL inside normal_/uniform_, so threads fill chunks in parallel
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(lambda job: _fill(*job), jobs):
                pass
    return out


def save_state_dict(state: dict, path: str | os.PathLike, fmt: str = "pt", metadata: dict | None = None) -> None:
    """Write `state` atomically (temporary name, then rename) as `model.pt` (torch.save) or safetensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if fmt == "pt":
            torch.save(state, tmp)
        elif fmt == "safetensors":
            from safetensors.torch import save_file

            bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
            if bad:
                raise CheckpointError(
                    f"safetensors holds tensors only; {bad[0]} is a {type(state[bad[0]]).__name__}"
                )
            # Recent safetensors (0.8 here) writes straight from the tensors' memory; older ones copy each first.
            save_file(state, str(tmp), metadata=metadata)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # safetensors creates the file 0600; make it like any other file
        else:
            raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_random_checkpoint(
    path: str | os.PathLike,
    cfg: DiTConfig,
    fmt: str = "pt",
    extra_state: str | None = None,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> dict:
    """Write a random checkpoint for `cfg`; returns {path, keys, parameters, bytes, format, extra_state}.

    `pt` is the reference layout (network + extra state + logvar; extra state defaults to
    "pickled-none"). `safetensors` is what ``cosmos-dist convert`` writes: the network
    tensors only (extra state defaults to "none"; "bytesio" is impossible in safetensors).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    if extra_state is None:
        extra_state = "pickled-none" if fmt == "pt" else "none"
    if fmt == "safetensors" and extra_state == "bytesio":
        raise CheckpointError("safetensors cannot hold io.BytesIO extra state; use --format pt for that form")
    include_logvar = fmt == "pt"
    plan = checkpoint_plan(cfg, extra_state, include_logvar)
    state = random_checkpoint(cfg, extra_state, dtype, seed, include_logvar)
    save_state_dict(state, path, fmt, metadata={"format": "pt"} if fmt == "safetensors" else None)
    n_keys = len(state)
    del state
    return {
        "path": str(path),
        "format": fmt,
        "extra_state": extra_state,
        "keys": n_keys,
        "parameters": plan_parameter_count(plan),
        "bytes": Path(path).stat().st_size,
    }
