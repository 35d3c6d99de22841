"""Stand-in for generate.py in the Slurm tests: same arguments (Hydra-style key=value), same output
contract (`{id}.mp4` under a temporary name then renamed, then the `{id}.json` sidecar, then a
manifest line), same shard membership and stop handling, but each "video" is a few bytes written
after `fake_seconds` of sleep. Unknown keys are ignored. Rank 0 writes; other ranks only wait."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from cosmos_dist.io.records import Manifest, write_json_atomic
from cosmos_dist.pipeline.preemption import StopFlag
from cosmos_dist.pipeline.work import collect_work, is_done


def main(argv: list[str]) -> int:
    kv = dict(a.split("=", 1) for a in argv if "=" in a)
    cfg = SimpleNamespace(
        prompt=None, prompts_file=kv["prompts_file"], output_dir=kv.get("output_dir", "outputs"),
        num_shards=int(kv.get("num_shards", 1)), shard_index=int(kv.get("shard_index", 0)),
    )
    seconds = float(kv.get("fake_seconds", 1.0))
    time.sleep(float(kv.get("fake_load_s", 0.5)))  # "model loading", before the stop handler exists
    stop = StopFlag.install()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    manifest = Manifest(out / "manifest.jsonl")
    work = collect_work(cfg)
    for item in work.items:
        if is_done(out, item.sample_id):
            continue
        if stop.requested:
            print(f"fake_generate: stopping before {item.sample_id} ({stop.signal_name})", flush=True)
            return 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # a sample in progress finishes even after a stop request
            time.sleep(0.05)
        if rank != 0:
            continue
        mp4 = out / f"{item.sample_id}.mp4"
        tmp = Path(f"{mp4}.tmp-{os.getpid()}.mp4")
        tmp.write_bytes(b"fake video " + item.sample_id.encode())
        os.replace(tmp, mp4)
        write_json_atomic(out / f"{item.sample_id}.json", {"sample_id": item.sample_id, "prompt": item.prompt, "pid": os.getpid()})
        manifest.append(status="done", sample_id=item.sample_id, line=item.line_number)
        print(f"fake_generate: done {item.sample_id}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
