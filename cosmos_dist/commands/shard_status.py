#!/usr/bin/env python
"""Which shards of a sharded run are finished, and the sbatch line that runs only the others.

    cosmos-dist shard-status --prompts-file prompts.jsonl --output-dir out --num-shards 1000
    cosmos-dist shard-status ... --retry-failed -- model=7b_text2world guidance=7

Per shard: done (sidecar exists), failed / blocked (no sidecar; the manifest's last word on the
sample), pending (never tried, or interrupted), bad lines, and the shard's marker from
`{output_dir}/.shards/` (done, or stopped with the next sample and why). A shard is unfinished
while it has pending samples (with --retry-failed: or failed ones). A shard whose lease is live
(a process is running it, pipeline/lease.py) is `running`: it is never offered for resubmission and
--clean-temp leaves its temporary files alone. The printed sbatch line passes the Hydra overrides
given after `--`, else the ones recorded in the newest marker.

Exit status: 0; with --check, 3 while samples are pending, else 1 when samples failed (the codes of `generate`).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path


from cosmos_dist.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_SAMPLES_FAILED, CosmosDistError
from cosmos_dist.io.identity import generation_settings, settings_hash
from cosmos_dist.io.paths import iter_sidecars
from cosmos_dist.io.prompts import BadLine, read_prompts_file
from cosmos_dist.io.safefiles import is_temp_name
from cosmos_dist.pipeline.lease import describe_holder, read_lease, shard_lease_path
from cosmos_dist.pipeline.preemption import (
    ShardProgress,
    classify,
    last_events,
    read_run_record,
    read_shard_markers,
    marker_dir,
)
from cosmos_dist.pipeline.work import RUN_KEYS, compose_run_config, expand_prompt, shard_of



def compress_ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (Slurm's --array syntax)."""
    parts: list[str] = []
    idx = sorted(set(indices))
    i = 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        parts.append(str(idx[i]) if i == j else f"{idx[i]}-{idx[j]}")
        i = j + 1
    return ",".join(parts)


def collect(prompts_file: str, output_dir: str, num_shards: int, cfg=None) -> list[ShardProgress]:
    """Progress of every shard, from one pass over the prompts file, one walk of the sidecars and the manifest.
    `cfg`: the run's configuration (run_config), which the sample ids depend on; None: an empty settings set."""
    from types import SimpleNamespace

    cfg = cfg if cfg is not None else SimpleNamespace(output_dir=output_dir)
    settings = generation_settings(cfg)
    digest = settings_hash(settings)
    items: list[list] = [[] for _ in range(num_shards)]
    shards = [ShardProgress(i, num_shards) for i in range(num_shards)]
    for entry in read_prompts_file(prompts_file):
        if isinstance(entry, BadLine):  # same rule as cosmos_dist.pipeline.work.collect_work
            shards[shard_of(f"line:{entry.line_number}", num_shards)].bad_lines.append(entry.line_number)
        else:
            items[shard_of(entry.sample_id, num_shards)].extend(expand_prompt(entry, cfg, settings, digest))
    done = {sid for sid, _ in iter_sidecars(output_dir)}
    events = last_events(Path(output_dir) / "manifest.jsonl")
    for shard, its in zip(shards, items):
        classify(shard, its, done, events)
    return shards


_FINAL_SUFFIXES = (".latent.pt", ".mp4", ".json")


def temp_leftovers(output_dir: str) -> list[Path]:
    """Files left under a temporary name (`.{final name}.tmp-...`, cosmos_dist/io/safefiles.py) anywhere in the
    tree: by a killed writer, or by one still writing (see `removable_temps`)."""
    out = Path(output_dir)
    found: list[Path] = []
    stack = [out, marker_dir(out)]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for e in entries:
            if is_temp_name(e.name) and e.is_file(follow_symlinks=False):
                found.append(Path(e.path))
            elif not e.name.startswith(".") and e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
    return sorted(found)


def temp_sample_id(path: Path) -> str | None:
    """The sample a temporary belongs to: `.p-abc.mp4.tmp-12-9f3a.mp4` -> `p-abc`; None when unknown."""
    final = path.name[1:].split(".tmp-", 1)[0]
    for suffix in _FINAL_SUFFIXES:
        if final.endswith(suffix):
            return final[: -len(suffix)]
    return None


def removable_temps(temps: list[Path], running: set[int], num_shards: int, live_samples: set[str]) -> list[Path]:
    """The temporaries --clean-temp may delete: none of a running shard's samples or of a sample whose
    `prompt=` run is live, and no marker temporary while any shard runs."""
    out = []
    for t in temps:
        if t.parent.name == ".shards" and running:
            continue
        sid = temp_sample_id(t)
        if sid is not None and (sid in live_samples or shard_of(sid, num_shards) in running):
            continue
        out.append(t)
    return out


def live_prompt_runs(output_dir: str) -> set[str]:
    """Sample ids of the `prompt=` runs (no prompts file) that hold a live lease."""
    d = Path(output_dir)
    return {p.name[1:-len(".lease")] for p in (d.glob(".*.lease") if d.is_dir() else ())
            if (read_lease(p) or {}).get("live")}


def running_shards(output_dir: str, num_shards: int) -> dict[int, dict]:
    """shard index -> its live lease record, for the shards some process is running now."""
    d = marker_dir(output_dir)
    found: dict[int, dict] = {}
    if not d.is_dir():
        return found
    for i in range(num_shards) if num_shards <= 4096 else ():
        rec = read_lease(shard_lease_path(output_dir, i, num_shards))
        if rec and rec["live"]:
            found[i] = rec
    if num_shards > 4096:  # one listing instead of a stat per shard
        from cosmos_dist.pipeline.preemption import shard_tag

        by_tag = {shard_tag(i, num_shards): i for i in range(num_shards)}
        for path in d.glob("shard-*.lease"):
            i = by_tag.get(path.name[: -len(".lease")])
            rec = read_lease(path) if i is not None else None
            if rec and rec["live"]:
                found[i] = rec
    return found


def unfinished(shards: list[ShardProgress], retry_failed: bool, running: set[int] | frozenset = frozenset()) -> list[int]:
    return [s.shard_index for s in shards
            if s.shard_index not in running and (s.pending or (retry_failed and s.failed))]


def shard_state(s: ShardProgress, running: set[int] | frozenset = frozenset()) -> str:
    if s.shard_index in running:
        return "running"
    if s.pending:
        return "pending"
    if s.failed or s.bad_lines:
        return "failed"
    return "done"


def marker_note(marker: dict | None) -> str:
    if not marker:
        return "-"
    if marker.get("kind") == "done":
        return "done"
    slurm = marker.get("slurm") or {}
    job = slurm.get("array_job_id") and f"{slurm['array_job_id']}_{slurm.get('array_task_id')}" or slurm.get("job_id")
    why = marker.get("reason") or (f"exit {marker['exit_code']}" if marker.get("exit_code") is not None else "?")
    note = f"stopped ({why}) before {marker.get('next_sample')}"
    return note + (f" [job {job}]" if job else "")


def sbatch_line(args, indices: list[int], overrides: list[str]) -> str:
    array = compress_ranges(indices)
    if args.max_parallel:
        array += f"%{args.max_parallel}"
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in RUN_KEYS]
    run = [f"prompts_file={args.prompts_file}", f"output_dir={args.output_dir}", f"num_shards={args.num_shards}"]
    words = ["sbatch", f"--array={array}", *args.sbatch_option, args.script, *run, *keep]
    return " ".join(shlex.quote(w) for w in words)


def default_array_script() -> str:
    """The checkout's slurm/generate_array.sbatch, as a path relative to the working directory."""
    checkout = Path(__file__).resolve().parents[2] / "slurm" / "generate_array.sbatch"
    return os.path.relpath(checkout) if checkout.exists() else "slurm/generate_array.sbatch"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] | None = None
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Hydra overrides for the sbatch line go after `--`.")
    p.add_argument("--prompts-file", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--num-shards", type=int, required=True)
    p.add_argument("--script", default=default_array_script(),
                   help="the array script for the printed line (default: slurm/generate_array.sbatch of the checkout)")
    p.add_argument("--sbatch-option", action="append", default=[], metavar="OPT",
                   help="extra sbatch option for the printed line, e.g. --sbatch-option=--time=04:00:00 (repeatable)")
    p.add_argument("--max-parallel", type=int, default=None, help="append %%N to --array (at most N elements at once)")
    p.add_argument("--retry-failed", action="store_true", help="count shards with failed samples as unfinished")
    p.add_argument("--all", action="store_true", help="list finished shards too")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--clean-temp", action="store_true",
                   help="delete files left under temporary names by killed writers (those of running shards are kept)")
    p.add_argument("--check", action="store_true",
                   help="exit 3 while samples are pending (as an interrupted run does), else 1 when samples failed, else 0")
    args = p.parse_args(argv)
    if args.num_shards < 1:
        p.error("--num-shards must be >= 1")
    if not Path(args.prompts_file).is_file():
        p.error(f"--prompts-file {args.prompts_file} does not exist")

    markers = read_shard_markers(args.output_dir, args.num_shards)
    overrides_known = overrides is not None
    if overrides is None:
        # The newest record of the run's overrides: a shard's end marker, or the record an element writes
        # as it starts (so a run whose elements are all still running or were killed has them too).
        records = [*markers.values(), read_run_record(args.output_dir, args.num_shards) or {}]
        newest = max((r for r in records if "overrides" in r), key=lambda m: str(m.get("time", "")), default=None)
        overrides = list((newest or {}).get("overrides") or [])
        # None recorded (a run started by hand, or by scripts older than the start record): the printed line
        # would silently fall back to the defaults (model=7b_text2world, ...), so say so next to it.
        overrides_known = newest is not None
    try:
        # The sample ids depend on the run's settings: compose them as generate.py does.
        cfg = compose_run_config(overrides, args.prompts_file, args.output_dir, args.num_shards)
        shards = collect(args.prompts_file, args.output_dir, args.num_shards, cfg)
    except CosmosDistError as exc:
        p.error(str(exc))
    leases = running_shards(args.output_dir, args.num_shards)
    running = set(leases)
    todo = unfinished(shards, args.retry_failed, running)
    temps = temp_leftovers(args.output_dir)
    removed: list[Path] = []
    if args.clean_temp:
        removed = removable_temps(temps, running, args.num_shards, live_prompt_runs(args.output_dir))
        for t in removed:
            t.unlink(missing_ok=True)
    line = sbatch_line(args, todo, overrides) if todo else None

    if args.json:
        print(json.dumps({
            "shards": [{"shard": s.shard_index, "state": shard_state(s, running), **s.counts(),
                        "next_sample": s.pending[0] if s.pending else None,
                        "marker": (markers.get(s.shard_index) or {}).get("kind"),
                        "lease": leases.get(s.shard_index)} for s in shards],
            "unfinished": todo,
            "running": sorted(running),
            "temp_files": [os.path.relpath(t, args.output_dir) for t in temps],
            "temp_files_removed": [os.path.relpath(t, args.output_dir) for t in removed],
            "sbatch": line,
            "overrides_recorded": overrides_known,
        }, indent=1))
    else:
        totals = {k: sum(s.counts()[k] for s in shards) for k in ("total", "done", "failed", "blocked", "pending", "bad_lines")}
        print(f"{'shard':>6} {'state':<8} {'total':>6} {'done':>6} {'failed':>6} {'blocked':>7} {'pending':>7} {'badln':>5}  marker")
        for s in shards:
            if not args.all and shard_state(s, running) == "done":
                continue
            c = s.counts()
            note = (f"running ({describe_holder(leases[s.shard_index])})" if s.shard_index in running
                    else marker_note(markers.get(s.shard_index)))
            print(f"{s.shard_index:>6} {shard_state(s, running):<8} {c['total']:>6} {c['done']:>6} {c['failed']:>6} "
                  f"{c['blocked']:>7} {c['pending']:>7} {c['bad_lines']:>5}  {note}")
        states = [shard_state(s, running) for s in shards]
        print(f"shards: {states.count('done')} done, {states.count('failed')} with failures, {states.count('pending')} pending, "
              f"{states.count('running')} running "
              f"(of {len(shards)}); samples: {totals['done']}/{totals['total']} done, {totals['failed']} failed, "
              f"{totals['blocked']} blocked, {totals['pending']} pending, {totals['bad_lines']} bad lines")
        if temps:
            if args.clean_temp:
                kept = len(temps) - len(removed)
                print(f"{len(removed)} temporary file(s) removed" + (f"; {kept} kept (of running shards)" if kept else ""))
            else:
                print(f"{len(temps)} temporary file(s) left by killed or running writers (--clean-temp removes "
                      f"those of shards not running)")
        if line:
            if not overrides_known:
                print("note: no shard marker or start record holds this run's Hydra overrides (a run not started "
                      "by slurm/*.sbatch, or by older scripts); the line below has none, so add yours after `--`, e.g. "
                      "`cosmos-dist shard-status ... -- model=14b_text2world guidance=5`")
            print("resubmit the unfinished shards with:")
            print(line)
        else:
            print("every shard is finished" + ("" if args.retry_failed or not totals["failed"] else
                                                "; --retry-failed resubmits the shards with failed samples"))
    if not args.check:
        return EXIT_OK
    if any(s.pending for s in shards):
        return EXIT_INTERRUPTED  # the exit codes of cosmos_dist/errors.py: a rerun has work to do
    return EXIT_SAMPLES_FAILED if any(s.failed or s.bad_lines for s in shards) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
