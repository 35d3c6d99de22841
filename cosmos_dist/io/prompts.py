"""Prompt lists: a JSONL file, one object per line.

Keys: `prompt` (required, non-empty string), `id` (optional string or integer, a safe file name), `negative_prompt`
(optional string), `seed` (optional integer); any other key (e.g. `visual_input` for Video2World) is passed through
in `extra`. A bad line becomes a `BadLine` and the others continue; blank lines are skipped.

Sample ids are stable: the given `id`, else `p-` + the first 12 hex digits of the SHA-256 of the canonical JSON of
the line's prompt / negative_prompt / seed / extra, so a prompt gets the same id wherever it sits in the file.
Exact duplicates get `-2`, `-3`, ... in order of appearance. A repeated explicit `id` is a bad line.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from cosmos_dist.errors import InputError

ID_MAX_LEN = 128
_SAFE_ID = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*")
_KNOWN_KEYS = ("prompt", "id", "negative_prompt", "seed")
SEED_LIMIT = 2**63


@dataclass(frozen=True)
class PromptItem:
    line_number: int | None  # 1-based line in the prompts file; None for a prompt given on the command line
    sample_id: str
    prompt: str
    negative_prompt: str | None = None  # None: use the run's default negative prompt
    seed: int | None = None  # None: derive from (base seed, sample id)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BadLine:
    line_number: int
    reason: str


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


def _check_fields(obj: Mapping[str, Any]) -> tuple[str, str | None, int | None, dict[str, Any]]:
    """Validate one line's object; raises InputError with the reason."""
    if "prompt" not in obj:
        raise InputError('missing "prompt"')
    prompt = obj["prompt"]
    if not isinstance(prompt, str):
        raise InputError(f'"prompt" must be a string; got {type(prompt).__name__}')
    if not prompt.strip():
        raise InputError('"prompt" is empty')
    negative = obj.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise InputError(f'"negative_prompt" must be a string; got {type(negative).__name__}')
    seed = obj.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f'"seed" must be an integer; got {seed!r}')
        if not 0 <= seed < SEED_LIMIT:
            raise InputError(f'"seed" must be in [0, 2**63); got {seed}')
    extra = {k: v for k, v in obj.items() if k not in _KNOWN_KEYS}
    return prompt, negative, seed, extra


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


def read_prompts_file(path: str | os.PathLike) -> Iterator[PromptItem | BadLine]:
    """Yield a `PromptItem` or a `BadLine` for every non-blank line of a JSONL prompts file, in order."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"prompts file not found: {p}")
    ids = _IdAllocator()
    with open(p, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield BadLine(number, f"not valid UTF-8: {err}")
                continue
            if number == 1:
                text = text.lstrip("\ufeff")
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except ValueError as err:
                yield BadLine(number, f"invalid JSON: {err}")
                continue
            if not isinstance(obj, dict):
                yield BadLine(number, f"expected a JSON object, got {type(obj).__name__}")
                continue
            try:
                prompt, negative, seed, extra = _check_fields(obj)
                if obj.get("id") is not None:
                    sid = ids.explicit(check_sample_id(obj["id"]))
                else:
                    sid = ids.derived(derive_sample_id(prompt, negative, seed, extra))
            except InputError as err:
                yield BadLine(number, str(err))
                continue
            yield PromptItem(number, sid, prompt, negative, seed, extra)


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
