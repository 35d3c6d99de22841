"""The latest status of every sample of an output tree, merged over its manifests and sidecars.

    cosmos-dist manifest --output-dir out                       # counts per status
    cosmos-dist manifest --output-dir out --status failed       # the failed ids with their reasons
    cosmos-dist manifest --output-dir out --write status.parquet   # or .jsonl: one row per sample

The manifest is append-only (a line per event, from every shard and rank): this takes each sample's
latest event (`done`, `failed`, `blocked`, ...; `skipped` only when nothing else is known) and lets
the sidecars have the last word, since a sample is done exactly when its sidecar exists. Safe to run
while shards are still running: it only reads.

Exit status: 0; 2 for a missing output folder.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from cosmos_dist.errors import ConfigError


def merged_status(output_dir: str | Path) -> dict[str, dict[str, Any]]:
    """sample id -> {sample_id, status, time, reason, line, attempts, first_time, sidecar}, sorted by id."""
    from cosmos_dist.io.records import find_manifests, latest_by_sample
    from cosmos_dist.io.paths import iter_sidecars

    out = Path(output_dir)
    rows = latest_by_sample(find_manifests(out))
    for sid, path in iter_sidecars(out):
        row = rows.setdefault(sid, {"sample_id": sid, "time": None, "reason": None, "line": None, "attempts": 0,
                                    "first_time": None, "host": None})
        row["status"] = "done"
        row["reason"] = None
        row["sidecar"] = path.relative_to(out).as_posix()
    for row in rows.values():
        row.setdefault("sidecar", None)
        if row["status"] == "done" and row["sidecar"] is None:
            # the manifest says done but the sidecar is gone (deleted, or the tree was moved): not done now
            row["status"], row["reason"] = "missing", "manifest says done but the sidecar is not in the tree"
    return dict(sorted(rows.items()))


def write_rows(rows: list[dict], path: Path) -> None:
    from cosmos_dist.io.safefiles import save_atomic

    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows, schema=pa.schema([
            ("sample_id", pa.string()), ("status", pa.string()), ("time", pa.string()), ("reason", pa.string()),
            ("line", pa.int64()), ("attempts", pa.int64()), ("first_time", pa.string()), ("host", pa.string()),
            ("sidecar", pa.string())]))
        save_atomic(path, lambda f: pq.write_table(table, f))
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        save_atomic(path, lambda f: f.write(text.encode("utf-8")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cosmos-dist manifest", description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", required=True)
    p.add_argument("--status", default=None, help="list the samples with this status (done, failed, blocked ...)")
    p.add_argument("--write", default=None, metavar="FILE", help="write one row per sample to FILE (.parquet or .jsonl)")
    p.add_argument("--json", action="store_true", help="print every row as JSON lines")
    args = p.parse_args(argv)
    out = Path(args.output_dir)
    if not out.is_dir():
        raise ConfigError(f"--output-dir {out} is not a folder")
    rows = list(merged_status(out).values())
    if args.write:
        write_rows(rows, Path(args.write))
    shown = [r for r in rows if args.status is None or r["status"] == args.status]
    if args.json:
        for r in shown:
            print(json.dumps(r, ensure_ascii=False))
        return 0
    counts = Counter(r["status"] for r in rows)
    print(f"{len(rows)} samples: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if args.status is not None:
        for r in shown:
            print(f"{r['sample_id']}\t{r['reason'] or ''}")
    if args.write:
        print(f"wrote {len(rows)} rows -> {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
