"""Sidecar JSON files and the run manifest.

* `write_json_atomic`: an exclusive, hidden temporary in the same directory (cosmos_dist/io/safefiles.py) + fsync
  + `os.replace` (+ directory fsync); a failed write (a full disk) removes the temporary.
* `build_sidecar`: the `{sample_id}.json` written next to each video (DESIGN.md section 5). A sample is done when
  its sidecar exists.
* `Manifest`: `manifest.jsonl`, one JSON object per event (done / failed / skipped / blocked). Several processes
  (ranks, array tasks) may append to one file on one filesystem: each line is written with one `os.write` on an
  `O_APPEND` descriptor while holding an exclusive `flock`. Where the filesystem has no `flock` (Lustre mounted
  `noflock` answers ENOSYS) the line is appended without it: `O_APPEND` alone keeps whole lines whole there.
  A line always starts on a fresh line (after a writer killed mid-line, the fragment is closed first), the
  manifest is opened with `O_NOFOLLOW` (a symlink planted at its name is refused), and the reader skips a torn
  line and still reads a record glued to one by an older writer.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import platform
import socket
import stat
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from cosmos_dist.io.safefiles import UnsafePathError, write_all, write_bytes_atomic

log = logging.getLogger("cosmos_dist")

SIDECAR_SCHEMA = "cosmos-dist/sample/v1"
STATUSES = ("done", "failed", "skipped", "blocked", "interrupted")  # interrupted: a lost rank; still pending


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_default(obj: Any):
    # Paths, numpy/torch scalars and arrays, dtypes, devices: write their readable form rather than fail.
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        try:
            return tolist()
        except (TypeError, ValueError, RuntimeError):
            pass
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return str(obj)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write `obj` as JSON (UTF-8, trailing newline) to `path` through an exclusive temporary + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=indent, ensure_ascii=False, default=_json_default) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"))


def runtime_versions() -> dict[str, str | None]:
    """Versions of python, torch, cosmos_dist (and transformers / CUDA when already imported)."""
    import cosmos_dist

    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "cosmos_dist": getattr(cosmos_dist, "__version__", None),
    }
    try:
        import torch

        versions["torch"] = torch.__version__
        versions["cuda"] = torch.version.cuda
    except ImportError:  # pragma: no cover - torch is a hard dependency
        versions["torch"] = None
    tf = sys.modules.get("transformers")
    if tf is not None:
        versions["transformers"] = getattr(tf, "__version__", None)
    return versions


def build_sidecar(
    *,
    sample_id: str,
    prompt: str,
    negative_prompt: str | None,
    seed: int,
    sample_seed: int,
    model: str | Mapping[str, Any],
    checkpoint: Mapping[str, Any],
    sampler: Mapping[str, Any],
    resolution: Mapping[str, Any] | None = None,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
    fps: float | None = None,
    parallel: Mapping[str, Any] | None = None,
    precision: str | Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
    notes: list[str] | None = None,
    files: Mapping[str, str] | None = None,
    video: str | None = None,
    original_prompt: str | None = None,
    source: Mapping[str, Any] | None = None,
    source_line: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The sidecar record of one generated sample (a JSON-ready dict).

    `model`: the preset name, or a dict (preset, kind...). `checkpoint`: identity of the weights used (path, size,
    mtime or hash of model.pt; tokenizer / T5 dirs). `sampler`: name, steps, guidance, sigma range...
    Size: `height`/`width`/`num_frames`/`fps`, or a `resolution` dict holding any of them (explicit arguments win).
    `parallel`: the world/dp/cfg/cp layout. `precision`: a dtype name or a dict per model. `timings`: seconds per
    stage. `notes`: e.g. prompt truncation. `files`: names of the files written (video, latent...).
    `original_prompt`: the user's prompt when `prompt` differs from it (truncated, upsampled).
    `source` / `source_line`: where the prompt came from. `extra`: pass-through prompts-file keys.
    """
    size = dict(resolution or {})
    for key, value in (("height", height), ("width", width), ("num_frames", num_frames), ("fps", fps)):
        if value is not None:
            size[key] = value
    files_d = dict(files or {})
    files_d.setdefault("video", video if video is not None else f"{sample_id}.mp4")
    record: dict[str, Any] = {
        "schema": SIDECAR_SCHEMA,
        "sample_id": sample_id,
        "video": files_d["video"],
        "files": files_d,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": int(seed),
        "sample_seed": int(sample_seed),
        "model": model if isinstance(model, str) else dict(model),
        "checkpoint": dict(checkpoint),
        "sampler": dict(sampler),
        "resolution": {k: int(size[k]) for k in ("height", "width") if size.get(k) is not None},
        "num_frames": int(size["num_frames"]) if size.get("num_frames") is not None else None,
        "fps": size.get("fps"),
        "parallel": dict(parallel or {}),
        "precision": precision if not isinstance(precision, Mapping) else dict(precision),
        "versions": runtime_versions(),
        "timings_s": {k: round(float(v), 4) for k, v in (timings or {}).items()},
        "notes": list(notes or []),
        "created": utc_now(),
        "host": socket.gethostname(),
    }
    if original_prompt is not None and original_prompt != prompt:
        record["original_prompt"] = original_prompt
    src = dict(source or {})
    if source_line is not None:
        src.setdefault("line", int(source_line))
    if src:
        record["source"] = src
    if extra:
        record["extra"] = dict(extra)
    return record


def rank_info_from_env() -> dict[str, int]:
    """RANK / LOCAL_RANK / WORLD_SIZE (torchrun) or SLURM_* equivalents, where set."""
    info: dict[str, int] = {}
    for key, names in (
        ("rank", ("RANK", "SLURM_PROCID")),
        ("local_rank", ("LOCAL_RANK", "SLURM_LOCALID")),
        ("world_size", ("WORLD_SIZE", "SLURM_NTASKS")),
        ("array_task", ("SLURM_ARRAY_TASK_ID",)),
    ):
        for name in names:
            value = os.environ.get(name)
            if value is not None and value.lstrip("-").isdigit():
                info[key] = int(value)
                break
    return info


class Manifest:
    """Append-only `manifest.jsonl`, safe for several processes on one filesystem."""

    def __init__(self, path: str | os.PathLike, rank_info: Mapping[str, Any] | None = None, *, fsync: bool = True):
        self.path = Path(path)
        self.rank_info = dict(rank_info) if rank_info is not None else rank_info_from_env()
        self.fsync = fsync

    def append(
        self,
        status: str,
        sample_id: str | None,
        *,
        reason: str | None = None,
        line: int | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Append one event and return it. `status` is one of done / failed / skipped / blocked; `line` is the
        1-based line of the prompts file when the sample came from one. Extra keyword fields are stored as given."""
        if status not in STATUSES:
            raise ValueError(f"manifest status must be one of {STATUSES}; got {status!r}")
        entry: dict[str, Any] = {"time": utc_now(), "status": status, "sample_id": sample_id}
        if line is not None:
            entry["line"] = int(line)
        if reason is not None:
            entry["reason"] = str(reason)
        entry.update(fields)
        entry.update({"host": socket.gethostname(), "pid": os.getpid()})
        if self.rank_info:
            entry["rank_info"] = self.rank_info
        self.append_entry(entry)
        return entry

    record = append

    def done(self, sample_id: str, **kw: Any) -> dict[str, Any]:
        return self.record("done", sample_id, **kw)

    def failed(self, sample_id: str | None, reason: str, **kw: Any) -> dict[str, Any]:
        return self.record("failed", sample_id, reason=reason, **kw)

    def skipped(self, sample_id: str | None, reason: str, **kw: Any) -> dict[str, Any]:
        return self.record("skipped", sample_id, reason=reason, **kw)

    def blocked(self, sample_id: str, reason: str, **kw: Any) -> dict[str, Any]:
        return self.record("blocked", sample_id, reason=reason, **kw)

    def append_entry(self, entry: Mapping[str, Any]) -> None:
        """Append one ready-made JSON line: O_APPEND descriptor, exclusive flock where the filesystem has one,
        one os.write of the whole line, preceded by a newline when the file's last line is torn."""
        data = (json.dumps(entry, ensure_ascii=False, default=_json_default) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_manifest(self.path)
        try:
            locked = _lock(fd, self.path)
            try:
                if _ends_torn(fd):
                    data = b"\n" + data
                write_all(fd, data)
                if self.fsync:
                    os.fsync(fd)
            finally:
                if locked:
                    import fcntl

                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(read_manifest(self.path))


def open_manifest(path: str | os.PathLike) -> int:
    """A read-write O_APPEND descriptor (read: the last byte) on the manifest, created if missing; a symlink or non-file there is refused."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(os.fspath(path), flags, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) or os.path.islink(path):
            raise UnsafePathError(
                f"manifest {path} is a symlink; the run writes only inside its output folder: remove the link"
            ) from None
        if exc.errno == errno.ENXIO:  # a FIFO without a reader
            raise UnsafePathError(f"manifest {path} is not a regular file; remove it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(f"manifest {path} is not a regular file; remove it")
    return fd


# Filesystems without flock: remembered per process so the warning is said once.
_NO_FLOCK_ERRNOS = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL}
_flock_unsupported: set[str] = set()


def _lock(fd: int, path: Path) -> bool:
    """Take an exclusive flock on `fd`; False (and go on without it) where the filesystem does not support flock."""
    import fcntl

    key = os.fspath(path.parent)
    if key in _flock_unsupported:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    except OSError as exc:
        if exc.errno not in _NO_FLOCK_ERRNOS:
            raise
        _flock_unsupported.add(key)
        log.warning("%s: flock is not supported here (%s); appending manifest lines without it (O_APPEND keeps "
                    "each line whole)", key, os.strerror(exc.errno))
        return False


def _ends_torn(fd: int) -> bool:
    """True when the file is non-empty and its last byte is not a newline (a writer was killed mid-line)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return False
    return os.pread(fd, 1, size - 1) != b"\n"


def _parse_line(raw: bytes) -> dict | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        return obj
    # A record glued to a torn fragment by a writer that did not start on a fresh line: the record is the
    # tail that starts at its first key.
    cut = raw.rfind(b'{"time"')
    if cut > 0:
        try:
            obj = json.loads(raw[cut:])
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None
    return None


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every readable record of a manifest, in file order; a torn line (a killed writer) is skipped."""
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    with open(p, "rb") as f:
        for raw in f:
            raw = raw.strip()
            if not raw:
                continue
            obj = _parse_line(raw)
            if obj is not None:
                out.append(obj)
    return out


# ---- the latest word per sample, over every manifest of a tree ------------------------------------
def find_manifests(output_dir: str | os.PathLike) -> list[Path]:
    """`manifest*.jsonl` at the top of the tree and in `.shards/` (where per-shard manifests would live)."""
    out = Path(output_dir)
    found = [p for d in (out, out / ".shards") if d.is_dir() for p in sorted(d.glob("manifest*.jsonl"))]
    return [p for p in found if p.is_file() and not p.is_symlink()]


def latest_by_sample(manifests: list[str | os.PathLike]) -> dict[str, dict[str, Any]]:
    """sample id -> its latest event over `manifests` (by time, then file order), with `attempts` (events that
    were not `skipped`) and `first_time`. A `skipped` event (the sample was already done) only counts when the
    sample has no other event."""
    events: list[tuple[str, int, dict]] = []
    order = 0
    for path in manifests:
        for e in read_manifest(path):
            if isinstance(e.get("sample_id"), str):
                events.append((str(e.get("time", "")), order, e))
                order += 1
    events.sort(key=lambda t: (t[0], t[1]))
    merged: dict[str, dict[str, Any]] = {}
    for _, _, e in events:
        sid = e["sample_id"]
        prev = merged.get(sid)
        row = {"sample_id": sid, "status": e.get("status"), "time": e.get("time"), "reason": e.get("reason"),
               "line": e.get("line"), "host": e.get("host"),
               "attempts": (prev or {}).get("attempts", 0), "first_time": (prev or {}).get("first_time", e.get("time"))}
        if e.get("status") == "skipped":
            if prev is None:
                row["status"] = "done"  # skipped means: its sidecar existed
                merged[sid] = row
            continue
        row["attempts"] += 1
        merged[sid] = row
    return merged
