"""Pack an output tree's finished samples into WebDataset tar shards, plus one Parquet index of every sample.

    cosmos-dist pack --output-dir out                      # -> out/webdataset/samples-000000.tar ... + index.parquet
    cosmos-dist pack --output-dir out --dest /data/wds --shard-size 2GB

Each sample is two members of a tar: `{key}.mp4` and `{key}.json` (its sidecar, unchanged). The key is the
sample id with every `.` written `%2E`, because WebDataset splits a member name at its first dot into key
and extension (`%` never occurs in an id, so the mapping is one to one); the JSON's `sample_id` is the id.

The index (`index.parquet`) has a row per sample known to the tree (sidecars and manifests, see
`cosmos-dist manifest`): id, status, reason, the tar and key of a packed sample, the video and sidecar
paths in the tree, prompt, negative prompt, seeds, model, the main settings as columns, all settings and
timings as JSON text.

Safe while shards still run, and idempotent: only samples whose sidecar exists are packed (the sidecar
is written last), temporaries are never read, a tar is written under a hidden name and renamed when
complete, and a rerun packs only samples not yet in the index into new tars (the index is rewritten).
`--repack` rebuilds every tar. Two packs into one destination at once: the second refuses (exit 4).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from cosmos_dist.errors import ConfigError

INDEX_NAME = "index.parquet"
TAR_PREFIX = "samples"
_TAR_RE = re.compile(rf"^{TAR_PREFIX}-(\d{{6,}})\.tar$")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise ConfigError(f"--shard-size {text!r}: give bytes or a size like 500MB, 1GB, 2GiB")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise ConfigError("--shard-size must be positive")
    return value


def tar_key(sample_id: str) -> str:
    return sample_id.replace(".", "%2E")


def sample_id_of_key(key: str) -> str:
    return key.replace("%2E", ".")


def _schema():
    import pyarrow as pa

    return pa.schema([
        ("sample_id", pa.string()), ("status", pa.string()), ("reason", pa.string()),
        ("shard", pa.string()), ("key", pa.string()), ("video", pa.string()), ("sidecar", pa.string()),
        ("prompt", pa.string()), ("negative_prompt", pa.string()), ("seed", pa.int64()), ("sample_seed", pa.int64()),
        ("model", pa.string()), ("num_steps", pa.int64()), ("guidance", pa.float64()), ("height", pa.int64()),
        ("width", pa.int64()), ("num_frames", pa.int64()), ("fps", pa.float64()), ("total_s", pa.float64()),
        ("settings", pa.string()), ("timings", pa.string()), ("created", pa.string()), ("attempts", pa.int64()),
    ])


def _num(value, kind):
    try:
        return kind(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def sidecar_row(sidecar: dict, *, status_row: dict) -> dict[str, Any]:
    """The index row of a finished sample, from its sidecar."""
    model = sidecar.get("model")
    sampler = sidecar.get("sampler") if isinstance(sidecar.get("sampler"), dict) else {}
    res = sidecar.get("resolution") if isinstance(sidecar.get("resolution"), dict) else {}
    timings = sidecar.get("timings_s") if isinstance(sidecar.get("timings_s"), dict) else {}
    settings = {k: sidecar.get(k) for k in ("model", "checkpoint", "sampler", "resolution", "num_frames", "fps",
                                            "precision", "parallel") if k in sidecar}
    return {
        "sample_id": status_row["sample_id"], "status": "done", "reason": None,
        "prompt": sidecar.get("prompt"), "negative_prompt": sidecar.get("negative_prompt"),
        "seed": _num(sidecar.get("seed"), int), "sample_seed": _num(sidecar.get("sample_seed"), int),
        "model": (model.get("preset") if isinstance(model, dict) else model),
        "num_steps": _num(sampler.get("num_steps", sampler.get("steps")), int),
        "guidance": _num(sampler.get("guidance"), float),
        "height": _num(res.get("height"), int), "width": _num(res.get("width"), int),
        "num_frames": _num(sidecar.get("num_frames"), int), "fps": _num(sidecar.get("fps"), float),
        "total_s": _num(timings.get("total_s"), float),
        "settings": json.dumps(settings, sort_keys=True, ensure_ascii=False, default=str),
        "timings": json.dumps(timings, sort_keys=True),
        "created": sidecar.get("created"), "attempts": status_row.get("attempts"),
        "sidecar": status_row.get("sidecar"),
    }


def load_finished(out: Path, status_row: dict) -> tuple[dict, Path] | None:
    """(sidecar, mp4 path) of a finished sample, or None when its files are not a complete, regular pair."""
    from cosmos_dist.io.safefiles import is_temp_name

    side_path = out / status_row["sidecar"]
    try:
        if side_path.is_symlink():
            return None
        sidecar = json.loads(side_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(sidecar, dict) or sidecar.get("sample_id") != status_row["sample_id"]:
        return None
    files = sidecar.get("files") if isinstance(sidecar.get("files"), dict) else {}
    video = files.get("video") or sidecar.get("video") or f"{status_row['sample_id']}.mp4"
    # next to the sidecar (any folder layout), else as recorded relative to the tree's top
    for cand in (side_path.parent / Path(str(video)).name, out / str(video)):
        try:
            cand.resolve().relative_to(out.resolve())
        except ValueError:
            continue
        if cand.is_file() and not cand.is_symlink() and not is_temp_name(cand.name):
            return sidecar, cand
    return None


def read_index(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def existing_tars(dest: Path) -> list[Path]:
    return sorted(p for p in dest.iterdir() if _TAR_RE.match(p.name)) if dest.is_dir() else []


def pack(out: Path, dest: Path, *, shard_size: int, max_count: int, repack: bool = False) -> dict[str, Any]:
    """Pack `out` into `dest`; returns a summary (packed now, packed before, rows, tars written)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    from cosmos_dist.commands.manifest import merged_status
    from cosmos_dist.io.safefiles import fsync_dir, save_atomic, temp_path_for

    status = merged_status(out)
    index_path = dest / INDEX_NAME
    old_rows = {} if repack else {r["sample_id"]: r for r in read_index(index_path) if r.get("shard")}
    old_tars = existing_tars(dest)
    if repack:
        next_shard = 0
    else:
        next_shard = max((int(_TAR_RE.match(p.name).group(1)) + 1 for p in old_tars), default=0)

    staging = temp_path_for(dest / "pack")
    staging.mkdir(parents=True)
    written: list[str] = []
    renames: list[tuple[Path, Path]] = []
    rows: dict[str, dict] = {}
    try:
        def finished_tar(fname: str) -> None:
            tmp = Path(fname)
            renames.append((tmp, dest / tmp.name))

        writer = None
        for sid, st in status.items():
            if sid in old_rows:
                rows[sid] = {**old_rows[sid], "attempts": st.get("attempts")}
                continue
            if st["status"] != "done" or not st.get("sidecar"):
                rows[sid] = {"sample_id": sid, "status": st["status"], "reason": st.get("reason"),
                             "attempts": st.get("attempts")}
                continue
            found = load_finished(out, st)
            if found is None:
                rows[sid] = {"sample_id": sid, "status": "incomplete", "attempts": st.get("attempts"),
                             "reason": "sidecar unreadable, or its video missing / not a regular file in the tree",
                             "sidecar": st.get("sidecar")}
                continue
            sidecar, mp4 = found
            if writer is None:
                writer = wds.ShardWriter(str(staging / f"{TAR_PREFIX}-%06d.tar"), maxcount=max_count,
                                         maxsize=shard_size, start_shard=next_shard, verbose=0, post=finished_tar,
                                         mtime=0.0)  # fixed member times: the same samples make the same bytes
            key = tar_key(sid)
            writer.write({"__key__": key, "mp4": mp4.read_bytes(),
                          "json": json.dumps(sidecar, ensure_ascii=False, indent=2).encode("utf-8")})
            shard_name = Path(writer.fname).name
            row = sidecar_row(sidecar, status_row=st)
            row.update(shard=shard_name, key=key, video=mp4.relative_to(out).as_posix())
            rows[sid] = row
        if writer is not None:
            writer.close()
        for tmp, final in renames:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
            written.append(final.name)
        fsync_dir(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    if repack:  # tars of an earlier pack that this one did not rewrite
        for p in old_tars:
            if p.name not in written:
                p.unlink(missing_ok=True)
    schema = _schema()
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows.values()], schema=schema)
    save_atomic(index_path, lambda f: pq.write_table(table, f))
    packed_now = sum(1 for r in rows.values() if r.get("shard") and r["sample_id"] not in old_rows)
    return {"packed_now": packed_now, "packed_before": len(old_rows), "rows": len(rows), "tars_written": written,
            "index": str(index_path)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cosmos-dist pack", description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", required=True, help="the run's output folder")
    p.add_argument("--dest", default=None, help="where the tars and index go (default: OUTPUT_DIR/webdataset)")
    p.add_argument("--shard-size", default="1GB", help="target size of a tar (default 1GB)")
    p.add_argument("--max-per-shard", type=int, default=100_000, help="at most this many samples in a tar")
    p.add_argument("--repack", action="store_true", help="rewrite every tar instead of adding new ones")
    args = p.parse_args(argv)
    out = Path(args.output_dir)
    if not out.is_dir():
        raise ConfigError(f"--output-dir {out} is not a folder")
    dest = Path(args.dest) if args.dest else out / "webdataset"
    dest.mkdir(parents=True, exist_ok=True)
    if args.max_per_shard < 1:
        raise ConfigError("--max-per-shard must be >= 1")
    from cosmos_dist.pipeline.lease import ShardLease

    with ShardLease(dest / ".pack.lease", what=f"cosmos-dist pack into {dest}"):
        summary = pack(out, dest, shard_size=parse_size(args.shard_size), max_count=args.max_per_shard,
                       repack=args.repack)
    tars = summary["tars_written"]
    print(f"packed {summary['packed_now']} new sample(s) ({summary['packed_before']} packed before) into "
          f"{len(tars)} new tar(s){': ' + ', '.join(tars) if tars else ''}; index of {summary['rows']} samples -> "
          f"{summary['index']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
