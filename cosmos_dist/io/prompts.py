"""Prompt lists: a JSONL file, one object per line.

Keys: `prompt` (required, non-empty string), `id` (optional string or integer, a safe file name), `negative_prompt`
(optional string), `seed` (optional integer), `num_videos_per_prompt` (optional integer) or `seeds` (optional list
of integers: one video per seed); any other key (e.g. `visual_input` for Video2World) is passed through in `extra`.
Blank lines are skipped.

A bad line becomes a `BadLine` and the others continue, whatever went wrong: invalid UTF-8 or JSON, a lone
surrogate, nesting too deep for the parser, a wrong type. The cheap check comes first: a line over
`MAX_LINE_BYTES` is refused unparsed (and never read into memory whole).

Prompt ids are stable: the given `id`, else `p-` + the first 12 hex digits of the SHA-256 of the canonical JSON of
the line's prompt / negative_prompt / seed / extra, so a prompt gets the same id wherever it sits in the file and
however many videos it asks for. Exact duplicates get `-2`, `-3`, ... in order of appearance. A repeated explicit
`id` is a bad line. A prompt's samples (one per seed) and their ids: cosmos_dist/io/identity.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from cosmos_dist.config import check_num_videos, check_seed, check_seed_list
from cosmos_dist.errors import ConfigError, InputError

ID_MAX_LEN = 128
_SAFE_ID = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*")
_KNOWN_KEYS = ("prompt", "id", "negative_prompt", "seed", "seeds", "num_videos_per_prompt")
#: A prompt is at most a few thousand bytes (300 words; 512 T5 tokens); a line this long is refused before it is
#: parsed, so a runaway line costs neither the memory nor the time of parsing and counting it.
MAX_LINE_BYTES = 256 * 1024
#: Reasons are one line in logs and the manifest: long error texts are cut.
MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class PromptItem:
    line_number: int | None  # 1-based line in the prompts file; None for a prompt given on the command line
    sample_id: str
    prompt: str
    negative_prompt: str | None = None  # None: use the run's default negative prompt
    seed: int | None = None  # a prompt: the line's seed (None: the run's); a sample: its own seed
    extra: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] | None = None  # the line's `seeds` list
    num_videos: int | None = None  # the line's `num_videos_per_prompt`
    # Set on the samples pipeline.work makes of a prompt: the prompt's id (sample_id is then the sample's) and the
    # sample's io.identity.SampleIdentity.
    prompt_id: str | None = None
    identity: Any = None

    @property
    def noise_key(self) -> str:
        """What the initial noise is keyed by besides the seed: the prompt id, never the settings (so a settings
        sweep shares its noise); for a prompt item not yet expanded, its id."""
        return self.prompt_id or self.sample_id


@dataclass(frozen=True)
class BadLine:
    line_number: int | None  # None: a `prompt=` run's only sample
    reason: str
    sample_id: str | None = None  # set when a valid line's sample failed a check before generation


def check_sample_id(sample_id: Any) -> str:
    """Validate an id (string or integer) as a safe file name; returns it as a string or raises InputError."""
    if isinstance(sample_id, bool) or not isinstance(sample_id, (str, int)):
        raise InputError(f"id must be a string or an integer; got {type(sample_id).__name__}")
    sid = str(sample_id)
    if not sid:
        raise InputError("id is empty")
    if len(sid) > ID_MAX_LEN:
        raise InputError(f"id is {len(sid)} characters long; the limit is {ID_MAX_LEN}")
    if not _SAFE_ID.fullmatch(sid):
        raise InputError(
            f"id {sid!r} is not a safe file name: use letters, digits, '-', '_' and '.', not starting with '.'"
        )
    return sid


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def derive_sample_id(
    prompt: str, negative_prompt: str | None = None, seed: int | None = None, extra: Mapping[str, Any] | None = None
) -> str:
    """`p-` + 12 hex digits of SHA-256 over the canonical JSON of the prompt fields (position independent)."""
    payload = {"prompt": prompt, "negative_prompt": negative_prompt, "seed": seed, "extra": dict(extra or {})}
    return "p-" + hashlib.sha256(_canonical(payload)).hexdigest()[:12]


def _check_text(value: str, key: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(f'"{key}" holds {value[err.start:err.end]!r} at character {err.start}, a lone UTF-16 '
                         "surrogate that is no character; fix the \\uXXXX escape in the line") from None


def _check_fields(obj: Mapping[str, Any]) -> tuple[str, str | None, int | None, dict[str, Any]]:
    """Validate one line's object; raises InputError with the reason."""
    if "prompt" not in obj:
        raise InputError('missing "prompt"')
    prompt = obj["prompt"]
    if not isinstance(prompt, str):
        raise InputError(f'"prompt" must be a string; got {type(prompt).__name__}')
    if not prompt.strip():
        raise InputError('"prompt" is empty')
    _check_text(prompt, "prompt")
    negative = obj.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise InputError(f'"negative_prompt" must be a string; got {type(negative).__name__}')
    if negative is not None:
        _check_text(negative, "negative_prompt")
    seed = obj.get("seed")
    if seed is not None:
        check_seed(seed, '"seed"')  # the command line's rule (ConfigError: this line's failure)
    extra = {k: v for k, v in obj.items() if k not in _KNOWN_KEYS}
    try:
        _canonical(extra)  # the id is derived from it: any value that cannot be written is this line's error
    except UnicodeEncodeError:
        raise InputError("a key or value of the line holds a lone UTF-16 surrogate (no character); fix the "
                         "\\uXXXX escape") from None
    return prompt, negative, seed, extra


def _check_videos(obj: Mapping[str, Any]) -> tuple[tuple[int, ...] | None, int | None]:
    """The line's `seeds` / `num_videos_per_prompt` (InputError when malformed or combined)."""
    seeds = obj.get("seeds")
    num = obj.get("num_videos_per_prompt")
    if seeds is not None:
        if num is not None or obj.get("seed") is not None:
            raise InputError('give "seeds" (one video per seed) or "seed" / "num_videos_per_prompt", not both')
        seeds = tuple(check_seed_list(seeds, '"seeds"'))
    if num is not None:
        num = check_num_videos(num, '"num_videos_per_prompt"')
    return seeds, num


class _IdAllocator:
    def __init__(self):
        self.used: set[str] = set()
        self.derived_count: dict[str, int] = {}

    def explicit(self, sid: str) -> str:
        if sid in self.used:
            raise InputError(f"duplicate id {sid!r} (an earlier line already uses it)")
        self.used.add(sid)
        return sid

    def derived(self, base: str) -> str:
        n = self.derived_count.get(base, 0)
        while True:
            n += 1
            sid = base if n == 1 else f"{base}-{n}"
            if sid not in self.used:
                break
        self.derived_count[base] = n
        self.used.add(sid)
        return sid


def _lines(f, limit: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, bytes or None when over `limit`, length) of each line, reading at most limit + 1 bytes of a
    line into memory (a long line's rest is read and dropped in chunks)."""
    number = 0
    while True:
        raw = f.readline(limit + 1)
        if not raw:
            return
        number += 1
        if len(raw) <= limit or raw.endswith(b"\n"):
            yield number, raw, len(raw)
            continue
        size = len(raw)
        while True:  # skip to the end of this line
            chunk = f.readline(1 << 20)
            size += len(chunk)
            if not chunk or chunk.endswith(b"\n"):
                break
        yield number, None, size


def _short(reason: str) -> str:
    reason = " ".join(reason.split())
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 3] + "..."


def _parse_line(number: int, raw: bytes, ids: "_IdAllocator") -> PromptItem | BadLine | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return BadLine(number, f"not valid UTF-8: {err}")
    if number == 1:
        text = text.lstrip("\ufeff")
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except RecursionError:
        return BadLine(number, "invalid JSON: nested too deeply to read; a line is one flat object")
    except ValueError as err:
        return BadLine(number, f"invalid JSON: {err}")
    if not isinstance(obj, dict):
        return BadLine(number, f"expected a JSON object, got {type(obj).__name__}")
    try:
        prompt, negative, seed, extra = _check_fields(obj)
        seeds, num_videos = _check_videos(obj)
        if obj.get("id") is not None:
            sid = ids.explicit(check_sample_id(obj["id"]))
        else:
            sid = ids.derived(derive_sample_id(prompt, negative, seed, extra))
    except (InputError, ConfigError) as err:
        return BadLine(number, str(err))
    return PromptItem(number, sid, prompt, negative, seed, extra, seeds=seeds, num_videos=num_videos)


def read_prompts_file(path: str | os.PathLike) -> Iterator[PromptItem | BadLine]:
    """Yield a `PromptItem` or a `BadLine` for every non-blank line of a JSONL prompts file, in order.

    Only the file itself can fail the whole read (missing, unreadable: InputError); any error of one line, of
    whatever type, is that line's BadLine."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"prompts file not found: {p}")
    ids = _IdAllocator()
    try:
        f = open(p, "rb")
    except OSError as err:
        raise InputError(f"prompts file {p}: cannot read it ({err.strerror or err})") from None
    with f:
        for number, raw, size in _lines(f, MAX_LINE_BYTES):
            if raw is None:
                yield BadLine(number, f"line is {size} bytes; the limit is {MAX_LINE_BYTES} (a prompt is at most "
                                      "a few thousand): split or shorten it")
                continue
            try:
                entry = _parse_line(number, raw, ids)
            except Exception as err:  # noqa: BLE001 - one line's failure, whatever its type, never the run's
                entry = BadLine(number, f"{type(err).__name__}: {err}")
            if entry is None:
                continue
            if isinstance(entry, BadLine):
                entry = BadLine(entry.line_number, _short(entry.reason))
            yield entry


read_prompts = read_prompts_file


def load_prompts(path: str | os.PathLike) -> tuple[list[PromptItem], list[BadLine]]:
    """All items and bad lines of a prompts file."""
    items: list[PromptItem] = []
    bad: list[BadLine] = []
    for entry in read_prompts_file(path):
        (items if isinstance(entry, PromptItem) else bad).append(entry)
    return items, bad


def single_prompt_item(
    prompt: str,
    negative_prompt: str | None = None,
    seed: int | None = None,
    *,
    name: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> PromptItem:
    """The item of a `prompt=` run: id `name` when given (validated), else derived as for a prompts-file line."""
    obj: dict[str, Any] = dict(extra or {})
    obj.update({"prompt": prompt, "negative_prompt": negative_prompt, "seed": seed})
    prompt, negative, seed, extra_d = _check_fields(obj)
    sid = check_sample_id(name) if name is not None else derive_sample_id(prompt, negative, seed, extra_d)
    return PromptItem(None, sid, prompt, negative, seed, extra_d)
