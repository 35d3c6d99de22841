"""Loading a DiT checkpoint into `CosmosDiT`, checkpoint identity, inspection and conversion.

`load_dit` builds the network on the meta device, opens the file lazily (mmap for `model.pt`,
`safe_open` for safetensors), validates keys and shapes strictly, converts each tensor to the run
dtype and device one at a time and assigns them (`load_state_dict(assign=True)`), so the host
never holds two full copies of the weights. A `model.pt` tensor already in the run dtype on the
CPU stays a view of the page cache, shared by every process of the node that maps the same file.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from cosmos_dist.checkpoint.finite import nonfinite_tensors, nonfinite_weights_message
from cosmos_dist.checkpoint.readers import (
    EXTRA_STATE,
    IGNORED,
    LOGVAR,
    NET_PREFIX,
    NETWORK,
    CheckpointReader,
    open_checkpoint,
)
from cosmos_dist.checkpoint.synthetic import save_state_dict
from cosmos_dist.checkpoint.validation import (
    ValidationReport,
    describe_variant,
    detect_variant,
    expected_shapes,
    mismatch_message,
    preset_for,
    validate_shapes,
)
from cosmos_dist.errors import CheckpointError
from cosmos_dist.models import CosmosDiT, DiTConfig, build_dit

FINGERPRINT_CHUNK = 1 << 20  # 1 MiB from each end


@dataclass(frozen=True)
class CheckpointIdentity:
    """Cheap identity of a checkpoint file for sidecars (no full hash of a 14 GB file)."""

    path: str
    size: int
    mtime: float
    mtime_iso: str
    fingerprint: str  # "sha256:<hex>" of (size, first MiB, last MiB)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def checkpoint_identity(path: str | os.PathLike) -> CheckpointIdentity:
    """Path, size, mtime and sha256 over the size and the first and last MiB of the file."""
    p = Path(path)
    try:
        st = p.stat()
        h = hashlib.sha256(st.st_size.to_bytes(8, "little"))
        with open(p, "rb") as f:
            h.update(f.read(FINGERPRINT_CHUNK))
            if st.st_size > FINGERPRINT_CHUNK:
                f.seek(max(FINGERPRINT_CHUNK, st.st_size - FINGERPRINT_CHUNK))
                h.update(f.read(FINGERPRINT_CHUNK))
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read the checkpoint file ({e.strerror or e})") from None
    mtime_iso = _dt.datetime.fromtimestamp(st.st_mtime, tz=_dt.timezone.utc).isoformat()
    return CheckpointIdentity(str(p.resolve()), st.st_size, st.st_mtime, mtime_iso, "sha256:" + h.hexdigest())


def _detect(reader: CheckpointReader) -> tuple[DiTConfig | None, str | None]:
    try:
        return detect_variant(reader.shapes()), None
    except CheckpointError as e:
        return None, str(e)


def _validate(reader: CheckpointReader, cfg: DiTConfig, net: CosmosDiT | None = None) -> ValidationReport:
    return validate_shapes(
        reader.shapes(), cfg, {k: e.type_name for k, e in reader.entries.items()}, reader.dtypes(),
        expected_shapes(cfg, net),
    )


def check_checkpoint(
    path: str | os.PathLike, cfg: DiTConfig, allow_unsafe_pickle: bool = False, trust_file: bool = False
) -> None:
    """Validate `path` against `cfg` from the file's index alone (no tensor data is read), so a
    pipeline can refuse a wrong checkpoint before it loads anything large. Raises CheckpointError
    with the same message as `load_dit`."""
    with open_checkpoint(path, allow_unsafe_pickle, trust_file) as reader:
        detected, detect_error = _detect(reader)
        report = _validate(reader, cfg)
    if not report.ok:
        raise CheckpointError(mismatch_message(path, report, detected, detect_error))


def detect_checkpoint(path: str | os.PathLike, allow_unsafe_pickle: bool = False, trust_file: bool = False) -> DiTConfig:
    """The configuration of the network stored in `path`, from its shapes alone."""
    with open_checkpoint(path, allow_unsafe_pickle, trust_file) as reader:
        cfg, err = _detect(reader)
    if cfg is None:
        raise CheckpointError(f"{path}: cannot tell which network this checkpoint holds: {err}")
    return cfg


def _materialize_buffers(net: CosmosDiT, state: dict, device, dtype: torch.dtype) -> None:
    """Add the buffers that are not taken from the file: `pos_embedder.seq` is always arange."""
    state["pos_embedder.seq"] = torch.arange(net.config.rope_seq_len, dtype=torch.float32, device=device).to(dtype)


def load_dit(
    path: str | os.PathLike,
    cfg: DiTConfig | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    allow_unsafe_pickle: bool = False,
    trust_file: bool = False,
    **build_kwargs,
) -> CosmosDiT:
    """Build a `CosmosDiT` and load the checkpoint at `path` (`model.pt` or `.safetensors`) into it.

    cfg=None builds the network the file's shapes describe (see `detect_variant`). With a cfg,
    any key or shape mismatch raises CheckpointError naming the variant the file looks like.
    The result is in eval mode without gradients; `net.checkpoint_identity` holds the file's
    `CheckpointIdentity` and `net.checkpoint_format` "pt" or "safetensors". Extra keyword
    arguments go to `build_dit` (e.g. rope_in_model_dtype).
    """
    identity = checkpoint_identity(path) if Path(path).is_file() else None
    reader = open_checkpoint(path, allow_unsafe_pickle, trust_file)
    try:
        detected, detect_error = _detect(reader)
        if cfg is None:
            if detected is None:
                raise CheckpointError(f"{path}: cannot tell which network this checkpoint holds: {detect_error}")
            cfg = detected
        net = build_dit(cfg, device="meta", **build_kwargs)
        report = _validate(reader, cfg, net)
        if not report.ok:
            raise CheckpointError(mismatch_message(path, report, detected, detect_error))

        state: dict[str, torch.Tensor] = {}
        for key, entry in reader.entries.items():
            if entry.kind != NETWORK:
                continue
            # One tensor at a time: read (a page-cache view for mmapped .pt), cast, move.
            state[key[len(NET_PREFIX) :]] = reader.tensor(key).to(device=device, dtype=dtype)
        bad = nonfinite_tensors((NET_PREFIX + k, t) for k, t in state.items())  # cheap on the device; see finite.py
        if bad:
            raise CheckpointError(nonfinite_weights_message(path, bad, dtype))
        _materialize_buffers(net, state, device, dtype)
        net.load_state_dict(state, strict=True, assign=True)
        del state
    finally:
        reader.close()

    leftover = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t.device.type == "meta"]
    if leftover:  # a buffer the model gained that this loader does not know how to fill: a bug here
        raise RuntimeError(f"load_dit left tensors on the meta device: {leftover[:5]}")
    net.eval().requires_grad_(False)
    net.checkpoint_identity = identity
    net.checkpoint_format = reader.format
    return net


def inspect_checkpoint(
    path: str | os.PathLike, model: DiTConfig | None = None, allow_unsafe_pickle: bool = False, trust_file: bool = False
) -> dict:
    """A JSON-ready summary: format, size, variant, parameters, dtypes, key counts and validation."""
    with open_checkpoint(path, allow_unsafe_pickle, trust_file) as reader:
        detected, detect_error = _detect(reader)
        entries = list(reader.entries.values())
        target = model or detected
        report = _validate(reader, target) if target is not None else None
        fmt = reader.format
    kinds = Counter(e.kind for e in entries)
    network = [e for e in entries if e.kind == NETWORK]
    extra_forms = Counter(
        (f"{e.dtype} tensor of {e.numel} bytes" if e.is_tensor else e.type_name)
        for e in entries
        if e.kind == EXTRA_STATE
    )
    ident = checkpoint_identity(path)
    out = {
        "path": str(path),
        "format": fmt,
        "size_bytes": ident.size,
        "fingerprint": ident.fingerprint,
        "variant": detected.name if detected else None,
        "variant_description": describe_variant(detected) if detected else None,
        "detect_error": detect_error,
        "config": _config_dict(detected) if detected else None,
        "parameters": sum(e.numel for e in network if e.is_tensor),
        "dtypes": dict(Counter(str(e.dtype).replace("torch.", "") for e in network if e.is_tensor)),
        "keys": {
            "total": len(entries),
            NETWORK: kinds.get(NETWORK, 0),
            EXTRA_STATE: kinds.get(EXTRA_STATE, 0),
            LOGVAR: kinds.get(LOGVAR, 0),
            IGNORED: kinds.get(IGNORED, 0),
        },
        "extra_state_forms": dict(extra_forms),
        "validated_against": target.name if target is not None else None,
        "valid": bool(report and report.ok),
        "validation": report.to_dict() if report else None,
        "validation_message": (
            None if report is None or report.ok else mismatch_message(path, report, detected, detect_error)
        ),
    }
    if report is None:
        out["validation_message"] = f"{path}: cannot tell which network this checkpoint holds: {detect_error}"
    return out


def _config_dict(cfg: DiTConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["rope_extrapolation"] = list(cfg.rope_extrapolation)
    return d


def convert_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, allow_unsafe_pickle: bool = False, trust_file: bool = False
) -> dict:
    """`model.pt` -> safetensors (network tensors only, `net.` prefix kept) plus `dst` with suffix .json.

    Drops `_extra_state` and `logvar.*` entries; keeps `net.pos_embedder.seq` (ignored on load).
    The source is validated against the variant its shapes describe first. Returns the JSON record.
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"{dst}: the output name must end in .safetensors")
    if dst.resolve() == src.resolve():
        raise CheckpointError(f"{dst}: output and input are the same file")
    with open_checkpoint(src, allow_unsafe_pickle, trust_file) as reader:
        detected, detect_error = _detect(reader)
        if detected is None:
            raise CheckpointError(f"{src}: cannot tell which network this checkpoint holds: {detect_error}")
        report = _validate(reader, detected)
        if not report.ok:
            raise CheckpointError(mismatch_message(src, report, detected))
        # Tensors stay page-cache views of the source; safetensors writes from their memory.
        tensors = {k: reader.tensor(k).contiguous() for k, e in reader.entries.items() if e.kind in (NETWORK, IGNORED)}
        dropped = Counter(e.kind for e in reader.entries.values() if e.kind in (EXTRA_STATE, LOGVAR))
        dtypes = dict(Counter(str(t.dtype).replace("torch.", "") for t in tensors.values()))
        source = checkpoint_identity(src).to_dict()
        record = {
            "config": _config_dict(detected),
            "variant": detected.name,
            "preset": preset_for(detected),
            "source": source,
            "tensors": len(tensors),
            "dtypes": dtypes,
            "dropped": {EXTRA_STATE: dropped.get(EXTRA_STATE, 0), LOGVAR: dropped.get(LOGVAR, 0)},
        }
        metadata = {
            "format": "pt",
            "cosmos_dist.variant": detected.name,
            "cosmos_dist.source_fingerprint": source["fingerprint"],
        }
        save_state_dict(tensors, dst, "safetensors", metadata=metadata)
        del tensors
    record["output"] = checkpoint_identity(dst).to_dict()
    json_path = dst.with_suffix(".json")
    tmp = json_path.with_name(f".{json_path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, json_path)
    record["json"] = str(json_path)
    return record
