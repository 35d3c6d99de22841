"""What a run has to do: the prompt items, which of them belong to this shard, and which are done.

A sample is done when its sidecar `{output_dir}/{sample_id}.json` exists (it is written last,
atomically, after the mp4). Shard membership depends only on the sample id, so a prompt lands in
the same shard whatever order the file has or how often a job was retried.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from cosmos_dist.errors import ConfigError
from cosmos_dist.io.prompts import BadLine, PromptItem, read_prompts_file, single_prompt_item


@dataclass
class WorkList:
    items: list[PromptItem] = field(default_factory=list)  # this shard's valid items, file order
    bad_lines: list[BadLine] = field(default_factory=list)  # this shard's invalid lines
    total_items: int = 0  # valid items in the whole file, all shards


def shard_of(key: str, num_shards: int) -> int:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def collect_work(cfg) -> WorkList:
    if cfg.prompt:
        item = single_prompt_item(cfg.prompt, name=cfg.name, negative_prompt=None, seed=None)
        return WorkList(items=[item], total_items=1)
    path = Path(cfg.prompts_file)
    if not path.is_file():
        raise ConfigError(f"prompts_file: {path} does not exist (a JSONL file, one {{\"prompt\": ...}} object a line)")
    work = WorkList()
    for entry in read_prompts_file(path):
        if isinstance(entry, BadLine):
            # A bad line has no id; it belongs to the shard of its line number so exactly one
            # shard reports it.
            if shard_of(f"line:{entry.line_number}", cfg.num_shards) == cfg.shard_index:
                work.bad_lines.append(entry)
            continue
        work.total_items += 1
        if shard_of(entry.sample_id, cfg.num_shards) == cfg.shard_index:
            work.items.append(entry)
    return work


def sidecar_path(output_dir: Path, sample_id: str) -> Path:
    return output_dir / f"{sample_id}.json"


def is_done(output_dir: Path, sample_id: str) -> bool:
    return sidecar_path(output_dir, sample_id).is_file()


def check_output_dir(output_dir: Path) -> None:
    """Fail before any model loads if we cannot write results (the run files themselves are checked by
    preemption.check_run_files)."""
    import tempfile

    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        # mkstemp: a fresh random name opened O_CREAT|O_EXCL|O_NOFOLLOW, so a planted symlink is never written through
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=output_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"output_dir: cannot write to {output_dir} ({exc.strerror or exc}); choose a writable folder with output_dir=..."
        ) from None
