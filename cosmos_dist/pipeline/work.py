"""What a run has to do: the prompt items, which of them belong to this shard, their samples, which are done.

Each prompt (a prompts-file line, or `prompt=`) expands into one sample per seed (cosmos_dist/io/identity.py:
`{prompt_id}_s{seed}_{settings}`). Shard membership depends only on the prompt id, so a prompt and all its
videos land in the same shard whatever the file's order, the seeds or settings, or how often a job was retried.

A sample is done when its sidecar (written last, atomically, after the mp4) exists where the tree's layout puts it
(cosmos_dist/io/paths.py) AND records the same identity fingerprint as this run asks for; `screen_work`
(work_checks.py) turns a sidecar with another fingerprint into that sample's failure before any model loads.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from cosmos_dist.config import check_num_videos, check_seed, check_seed_list
from cosmos_dist.errors import ConfigError
from cosmos_dist.io.identity import (SampleIdentity, fingerprint_differences, generation_settings, seeds_for,
                                     settings_hash)
from cosmos_dist.io.paths import resolve_layout, sample_paths
from cosmos_dist.io.prompts import BadLine, PromptItem, read_prompts_file, single_prompt_item


@dataclass
class WorkList:
    items: list[PromptItem] = field(default_factory=list)  # this shard's samples, file order (a prompt's in seed order)
    bad_lines: list[BadLine] = field(default_factory=list)  # this shard's invalid lines (and failed checks)
    total_items: int = 0  # valid prompts in the whole file, all shards
    layout: str = "flat"  # the output tree's folder layout (io/paths.py)


def shard_of(key: str, num_shards: int) -> int:
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def _get(cfg, key: str, default):
    """A run setting, or `default` where the config-like object has none (status tools pass a few fields)."""
    try:
        value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    except Exception:  # noqa: BLE001 - a struct config without the key
        return default
    return default if value is None and default is not None else value


def _run_seeds(cfg) -> tuple[int, list[int] | None, int]:
    """The run's seed, seeds list and videos per prompt (command line / config), checked."""
    seed = check_seed(_get(cfg, "seed", 1), "seed")
    seeds = _get(cfg, "seeds", None)
    seeds = check_seed_list(list(seeds), "seeds") if seeds else None
    num = check_num_videos(_get(cfg, "num_videos_per_prompt", 1))
    return seed, seeds, num


def expand_prompt(item: PromptItem, cfg, settings: dict, digest: str) -> list[PromptItem]:
    """The samples of one prompt: one PromptItem per seed, under its sample id, with its identity."""
    run_seed, run_seeds, run_num = _run_seeds(cfg)
    seeds = seeds_for(item.seed, list(item.seeds) if item.seeds else None, item.num_videos, run_seed, run_seeds,
                      run_num)
    negative = item.negative_prompt if item.negative_prompt is not None else _get(cfg, "negative_prompt", None)
    out = []
    for n, seed in enumerate(seeds):
        ident = SampleIdentity(prompt_id=item.sample_id, video_index=n, seed=seed, settings=settings,
                               settings_digest=digest, prompt=item.prompt, negative_prompt=negative)
        out.append(replace(item, sample_id=ident.sample_id, seed=seed, prompt_id=item.sample_id, identity=ident))
    return out


def api_samples(item: PromptItem, cfg, input_sha256: str | None = None) -> list[PromptItem]:
    """The samples of one Python API prompt, under the ids a run with `cfg` gives them (so `GeneratedVideo.save`
    into a run's tree is found finished by the run); `input_sha256`: Video2World's input content hash."""
    settings = generation_settings(cfg)
    samples = expand_prompt(item, cfg, settings, settings_hash(settings))
    if input_sha256 is None:
        return samples
    return [replace(s, identity=replace(s.identity, input_sha256=input_sha256)) for s in samples]


def _is_video2world(cfg) -> bool:
    model = _get(cfg, "model", None)
    return str(getattr(model, "preset", "")).endswith("_video2world")


def collect_work(cfg) -> WorkList:
    """This shard's samples (prompts expanded by seed, under their ids) and bad lines. `cfg`: the run's config;
    status tools may pass an object with only prompt / prompts_file / num_shards / shard_index (+ output_dir):
    the settings part of the ids is then that of an empty settings set."""
    settings = generation_settings(cfg)
    digest = settings_hash(settings)
    out = _get(cfg, "output_dir", None)
    layout = resolve_layout(out, _get(cfg, "output_layout", "auto")) if out else "flat"
    _run_seeds(cfg)  # a bad seeds / num_videos_per_prompt is the run's error, before the file is read
    if cfg.prompt:
        # Video2World: the input is part of the prompt's identity (the same prompt on two images: two prompts).
        extra = {"input_path": cfg.input_path} if _is_video2world(cfg) else None
        item = single_prompt_item(cfg.prompt, name=_get(cfg, "name", None), negative_prompt=None, seed=None,
                                  extra=extra)
        return WorkList(items=expand_prompt(item, cfg, settings, digest), total_items=1, layout=layout)
    path = Path(cfg.prompts_file)
    if not path.is_file():
        raise ConfigError(f"prompts_file: {path} does not exist (a JSONL file, one {{\"prompt\": ...}} object a line)")
    work = WorkList(layout=layout)
    for entry in read_prompts_file(path):
        if isinstance(entry, BadLine):
            # A bad line has no id; it belongs to the shard of its line number so exactly one
            # shard reports it.
            if shard_of(f"line:{entry.line_number}", cfg.num_shards) == cfg.shard_index:
                work.bad_lines.append(entry)
            continue
        work.total_items += 1
        if shard_of(entry.sample_id, cfg.num_shards) == cfg.shard_index:
            work.items.extend(expand_prompt(entry, cfg, settings, digest))
    return work


RUN_KEYS = ("prompts_file", "output_dir", "num_shards", "shard_index")


def compose_run_config(overrides: list[str], prompts_file: str, output_dir: str, num_shards: int):
    """A run's configuration as the command line composes it from its Hydra `overrides`, for the status tools: the
    sample ids depend on its generation settings, seeds and videos per prompt. ConfigError when they do not
    compose (the run itself would have refused them)."""
    from cosmos_dist.configure import compose_config

    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in RUN_KEYS]
    run = [f"prompts_file={prompts_file}", f"output_dir={output_dir}", f"num_shards={num_shards}"]
    try:
        return compose_config([*keep, *run])
    except Exception as exc:  # noqa: BLE001 - Hydra's many error types: one line
        raise ConfigError(f"the run's overrides {' '.join(keep)!r} do not compose ({' '.join(str(exc).split())}); "
                          "give the run's overrides after `--`") from None


def sidecar_path(output_dir: Path, sample_id: str, layout: str = "flat") -> Path:
    return sample_paths(output_dir, sample_id, layout).sidecar


def read_sidecar_identity(path: Path) -> tuple[bool, dict | None]:
    """(exists, the sidecar's `identity` block or None when it has none or cannot be read)."""
    try:
        with open(path, "rb") as f:
            data = f.read(4 * 1024 * 1024)
    except FileNotFoundError:
        return False, None
    except OSError:
        return True, None
    try:
        rec = json.loads(data)
    except (ValueError, RecursionError):
        return True, None
    ident = rec.get("identity") if isinstance(rec, dict) else None
    return True, ident if isinstance(ident, dict) else None


def sidecar_differences(path: Path, fingerprint: dict | None) -> list[str] | None:
    """None when no sidecar stands at `path`; else the keys whose recorded identity differs from `fingerprint`
    (empty: the same sample; an unreadable sidecar or one without identity differs)."""
    exists, ident = read_sidecar_identity(path)
    if not exists:
        return None
    return fingerprint_differences(fingerprint or {}, (ident or {}).get("fingerprint"))


def is_done(output_dir: Path, item, layout: str = "flat") -> bool:
    """`item`'s sidecar exists and records the fingerprint this run asks for. A sample id (str) alone is done when
    its sidecar exists (status tools that do not know the settings)."""
    if isinstance(item, str):
        return sidecar_path(Path(output_dir), item, layout).is_file()
    exists, ident = read_sidecar_identity(sidecar_path(Path(output_dir), item.sample_id, layout))
    if not exists:
        return False
    expected = item.identity.fingerprint() if item.identity is not None else None
    return expected is None or (ident is not None and ident.get("fingerprint") == expected)


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
