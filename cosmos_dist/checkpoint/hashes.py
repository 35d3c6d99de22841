"""The hub's published SHA-256 of checkpoint files, and checking a file against it.

`cosmos-dist download` writes `hub-sha256.json` into each folder it fetches: for every LFS file of the
repository that is present, the SHA-256 and size the hub publishes for it (its LFS object id).
`cosmos-dist inspect --verify FILE` hashes FILE and compares it with the record of its folder, before the
file is unpickled. Hashing reads the whole file (minutes for a 28 GB checkpoint on a network filesystem).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cosmos_dist.errors import CheckpointError

HASH_RECORD = "hub-sha256.json"
SCHEMA = "cosmos-dist/hub-sha256/v1"


def write_hash_record(folder: str | os.PathLike, repo_id: str, files: dict[str, tuple[str, int]]) -> Path:
    """Merge {relative path: (sha256, size)} into `folder/hub-sha256.json` (written atomically)."""
    folder = Path(folder)
    path = folder / HASH_RECORD
    record = read_hash_record(folder) or {"schema": SCHEMA, "files": {}}
    for name, (sha, size) in files.items():
        record["files"][name] = {"sha256": str(sha).lower(), "size": int(size), "repo_id": repo_id}
    tmp = folder / f".{HASH_RECORD}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_hash_record(folder: str | os.PathLike) -> dict | None:
    try:
        record = json.loads((Path(folder) / HASH_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("files"), dict) else None


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_file(path: str | os.PathLike) -> str:
    """Check `path` against the hub's SHA-256 recorded next to it; returns a one-line result, raises
    CheckpointError when there is no record for it or it does not match."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    record = read_hash_record(path.parent)
    entry = (record or {}).get("files", {}).get(path.name)
    if entry is None:
        raise CheckpointError(
            f"{path}: no published SHA-256 is recorded for this file ({path.parent / HASH_RECORD} "
            f"{'has no entry for it' if record else 'is missing'}); `cosmos-dist download` records them as it "
            "fetches (use --force to fetch again and record)"
        )
    size = path.stat().st_size
    if size != entry.get("size", size):
        raise CheckpointError(
            f"{path}: {size} bytes, but the hub publishes {entry['size']} for {entry.get('repo_id', '?')}:{path.name}: "
            "the file is truncated or not the published one; download it again (cosmos-dist download --force)"
        )
    got = sha256_of(path)
    if got != entry["sha256"]:
        raise CheckpointError(
            f"{path}: SHA-256 {got} does not match the hub's {entry['sha256']} for "
            f"{entry.get('repo_id', '?')}:{path.name}: the file is damaged or not the published one; download it "
            "again (cosmos-dist download --force)"
        )
    return f"sha256 {got}: matches the hub's published hash for {entry.get('repo_id', '?')}:{path.name}"
