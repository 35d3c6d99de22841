"""Readers for DiT checkpoint files: the reference `model.pt` and safetensors.

Both readers are lazy. `model.pt` is opened with `torch.load(mmap=True, weights_only=True)`, so
tensors are views of the page cache until someone touches them (every rank of a node shares the
same pages); safetensors files are read through `safe_open`, one tensor at a time. The format is
decided by the file's first bytes, not by its name.

Whatever goes wrong while opening a file (missing, empty, truncated, not a checkpoint, pickled
objects a weights-only load refuses) is raised as one `CheckpointError` naming the path, what is
wrong and what to do; torch's own traceback is not chained onto it.
"""
from __future__ import annotations

import io
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from cosmos_dist.errors import CheckpointError

# Key classes (spec 4.2 and DESIGN section 4): everything but the network tensors is ignored.
NETWORK, EXTRA_STATE, LOGVAR, IGNORED = "network", "extra_state", "logvar", "ignored"
IGNORED_KEYS = frozenset({"net.pos_embedder.seq"})
NET_PREFIX = "net."

CONVERT_HINT = (
    "convert it once with `cosmos-dist convert {path} --output OUT.safetensors "
    "--allow-unsafe-pickle` and use OUT.safetensors, or load it with allow_unsafe_pickle=True "
    "(`--allow-unsafe-pickle` on the tools; the load stays weights-only, with io.BytesIO the one class allowed)"
)

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
    "F8_E5M2": getattr(torch, "float8_e5m2", None),
}


def classify_key(key: str) -> str:
    """`network`, `extra_state` (Transformer Engine metadata), `logvar` or `ignored` (pos_embedder.seq)."""
    if "_extra_state" in key:
        return EXTRA_STATE
    if key.startswith("logvar."):
        return LOGVAR
    if key in IGNORED_KEYS:
        return IGNORED
    return NETWORK


@dataclass(frozen=True)
class EntryInfo:
    """What one state-dict entry is, without reading its data."""

    key: str
    shape: tuple[int, ...] | None  # None when the value is not a tensor
    dtype: torch.dtype | None
    type_name: str  # "Tensor", or the Python type of a non-tensor value (e.g. "BytesIO")

    @property
    def is_tensor(self) -> bool:
        return self.shape is not None

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape or ():
            n *= s
        return n

    @property
    def kind(self) -> str:
        return classify_key(self.key)


class CheckpointReader:
    """A checkpoint opened for reading: `entries` (key -> EntryInfo, file order) and `tensor(key)`."""

    format: str = "?"

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, EntryInfo] = {}

    def tensor(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def value(self, key: str):
        """The raw value (a tensor, or for .pt files possibly another object such as a BytesIO)."""
        return self.tensor(key)

    def shapes(self) -> dict[str, tuple[int, ...] | None]:
        return {k: e.shape for k, e in self.entries.items()}

    def dtypes(self) -> dict[str, torch.dtype | None]:
        return {k: e.dtype for k, e in self.entries.items()}

    def keys_of(self, kind: str) -> list[str]:
        return [k for k, e in self.entries.items() if e.kind == kind]

    def close(self) -> None:
        pass

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TorchReader(CheckpointReader):
    """A `torch.save`d state dict (the reference `model.pt`), memory-mapped when the format allows."""

    format = "pt"

    def __init__(self, path: Path, state: Mapping, mmapped: bool, unsafe: bool):
        super().__init__(path)
        self._state = state
        self.mmapped = mmapped
        self.unsafe_pickle_used = unsafe
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                self.entries[key] = EntryInfo(key, tuple(value.shape), value.dtype, "Tensor")
            else:
                self.entries[key] = EntryInfo(key, None, None, type(value).__name__)

    def value(self, key: str):
        return self._state[key]

    def tensor(self, key: str) -> torch.Tensor:
        value = self._state[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{self.path}: entry {key} is a {type(value).__name__}, not a tensor")
        return value

    def close(self) -> None:
        self._state = {}


class SafetensorsReader(CheckpointReader):
    format = "safetensors"

    def __init__(self, path: Path):
        super().__init__(path)
        from safetensors import safe_open

        try:
            self._handle = safe_open(str(path), framework="pt", device="cpu")
            keys = list(self._handle.keys())
            for key in keys:
                sl = self._handle.get_slice(key)
                dtype = _SAFETENSORS_DTYPES.get(sl.get_dtype())
                self.entries[key] = EntryInfo(key, tuple(sl.get_shape()), dtype, "Tensor")
            self.metadata = dict(self._handle.metadata() or {})
        except Exception as e:  # SafetensorError has no stable import path across versions
            raise CheckpointError(
                f"{path}: cannot read this safetensors file ({_first_line(e)}); it is probably truncated or "
                "corrupted: copy or convert it again"
            ) from None

    def tensor(self, key: str) -> torch.Tensor:
        try:
            return self._handle.get_tensor(key)
        except Exception as e:
            raise CheckpointError(f"{self.path}: cannot read tensor {key} ({_first_line(e)})") from None

    def close(self) -> None:
        self._handle = None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def sniff_format(path: str | os.PathLike) -> str:
    """`torch-zip`, `torch-legacy` or `safetensors`, from the file's first bytes; CheckpointError otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; pass the checkpoint file itself (e.g. {path}/model.pt)")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the file ({_first_line(e)})") from None
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); the download or copy did not finish")
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 0 < header_len <= size - 8:
            return "safetensors"
        raise CheckpointError(
            f"{path}: looks like a safetensors file, but its header claims {header_len} bytes and the file "
            f"has only {size}; the file is truncated: copy or convert it again"
        )
    if head[:1] == b"\x80":  # a pickle (protocol >= 2): torch's legacy, pre-1.6 format
        return "torch-legacy"
    raise CheckpointError(
        f"{path}: not a checkpoint (neither a PyTorch file nor safetensors; it starts with {head[:8]!r})"
    )


def _torch_load(path: Path, mmap: bool, weights_only: bool):
    return torch.load(path, map_location="cpu", mmap=mmap, weights_only=weights_only)


#: Python objects the released checkpoints hold besides tensors: an old Transformer Engine's `_extra_state`
#: as a pickled io.BytesIO (whose class pickles as `_io.BytesIO`). Nothing else is ever needed to load them.
BENIGN_GLOBALS = frozenset({"_io.BytesIO", "io.BytesIO"})
# torch's wordings of a refused global: "Unsupported global: GLOBAL x.y" and "unsupported GLOBAL x.y ...".
_GLOBAL_IN_MESSAGE = re.compile(r"[Uu]nsupported global:? GLOBAL ([\w.]+)")


def pickled_globals(path: Path, message: str = "") -> list[str]:
    """Every global the file's pickle names that a weights-only load refuses, found without running anything:
    torch's own scan of a zip checkpoint's data.pkl, plus what torch's error message named (legacy files)."""
    found = set(_GLOBAL_IN_MESSAGE.findall(message))
    try:
        found.update(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # a legacy (non-zip) file or a damaged one: the message is all we have
        pass
    return sorted(found)


def _describe_torch_failure(path: Path, e: BaseException) -> CheckpointError:
    text = str(e)
    if "central directory" in text:
        what = "the file is truncated or corrupted (its zip index is missing); download or copy it again"
    elif isinstance(e, EOFError) or "unexpected eof" in text.lower() or "truncated" in text.lower():
        what = "the file is truncated (it ends before its data does); download or copy it again"
    elif "not in a subdirectory" in text or "data.pkl" in text or "failed locating file" in text:
        what = "it is a zip archive, but not a PyTorch checkpoint"
    else:
        what = f"torch.load failed ({_first_line(e)})"
    return CheckpointError(f"{path}: cannot load this checkpoint: {what}")


def refusal_message(path: Path, offenders: list[str]) -> str:
    """Why a file with pickled objects other than io.BytesIO is not loaded. It recommends nothing that would
    unpickle the file: a checkpoint naming e.g. `posix.system` runs that call when unpickled."""
    named = ", ".join(offenders[:8]) + (f" and {len(offenders) - 8} more" if len(offenders) > 8 else "")
    what = f"pickled references to {named}" if named else "pickled Python objects"
    return (
        f"{path}: refusing to load: the file holds {what}, which no Cosmos checkpoint contains (the released "
        "files hold tensors and, at most, io.BytesIO extra state). Unpickling it could run code from the file, "
        "and --allow-unsafe-pickle does not load it. Get the file again from its source "
        "(`cosmos-dist download`, then `cosmos-dist inspect --verify FILE`)."
    )


def _load_torch(path: Path, fmt: str, allow_unsafe_pickle: bool, trust_file: bool = False) -> TorchReader:
    mmap = fmt == "torch-zip"  # the legacy format cannot be memory-mapped
    unsafe = False
    try:
        try:
            state = _torch_load(path, mmap, weights_only=True)
        except pickle.UnpicklingError as e:
            offenders = pickled_globals(path, str(e))
            if trust_file:  # the user vouched for this file: full unpickling (it can run any code in the file)
                state = _torch_load(path, mmap, weights_only=False)
            elif offenders and set(offenders) <= BENIGN_GLOBALS:
                if not allow_unsafe_pickle:
                    raise CheckpointError(
                        f"{path}: this checkpoint stores Transformer Engine `_extra_state` entries as pickled "
                        "io.BytesIO objects (written by an old Transformer Engine), which "
                        "torch.load(weights_only=True) refuses to unpickle. The entries are ignored at "
                        "inference; " + CONVERT_HINT.format(path=path) + "."
                    ) from None
                # Still a weights-only load: io.BytesIO is the one class allowed besides tensors, so
                # nothing in the file can call anything else.
                with torch.serialization.safe_globals([io.BytesIO]):
                    state = _torch_load(path, mmap, weights_only=True)
            elif offenders or "Weights only load failed" in str(e):
                raise CheckpointError(refusal_message(path, offenders)) from None
            else:
                raise
            unsafe = True
    except CheckpointError:
        raise
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError, UnpicklingError ... here
        raise _describe_torch_failure(path, e) from None
    if isinstance(state, torch.Tensor):
        raise CheckpointError(
            f"{path}: holds a single tensor of shape {tuple(state.shape)}, not a state dict; a DiT checkpoint "
            "is a dict of `net.*` tensors"
        )
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{path}: holds a {type(state).__name__}, not a state dict; a DiT checkpoint is a dict of `net.*` tensors"
        )
    bad = [k for k in state if not isinstance(k, str)]
    if bad:
        raise CheckpointError(f"{path}: state dict has non-string keys (e.g. {bad[0]!r}); not a DiT checkpoint")
    if state and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = [k for k, v in state.items() if isinstance(v, Mapping)]
        hint = (
            f"; it looks like a wrapped training checkpoint (top-level keys {sorted(state)[:6]}), while a DiT "
            "checkpoint is a plain dict of `net.*` tensors"
            if inner
            else ""
        )
        raise CheckpointError(f"{path}: holds no tensors{hint}")
    return TorchReader(path, state, mmap, unsafe)


def open_checkpoint(
    path: str | os.PathLike, allow_unsafe_pickle: bool = False, trust_file: bool = False
) -> CheckpointReader:
    """Open a DiT checkpoint (`model.pt` or `.safetensors`) lazily.

    `allow_unsafe_pickle=True` accepts the one known benign form a weights-only load refuses: old
    Transformer Engine `io.BytesIO` extra state. The load stays weights-only (io.BytesIO is allowed, nothing
    else), so a file that names any other global (e.g. `posix.system`) is still refused, naming it.
    `trust_file=True` unpickles the file fully (`weights_only=False`) whatever it holds: unpickling can run
    arbitrary code, so only for a file you made yourself or otherwise know to be safe.
    """
    path = Path(path)
    fmt = sniff_format(path)
    if fmt == "safetensors":
        return SafetensorsReader(path)
    return _load_torch(path, fmt, allow_unsafe_pickle, trust_file)
