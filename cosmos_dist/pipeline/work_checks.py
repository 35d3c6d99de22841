"""Fail fast: every sample of the run's share is checked before any model loads.

`screen_work` runs in the pipeline's `prepare`, after the model files are resolved and before any is loaded. Per
prompt, cheapest first: words (a split), then T5 tokens (the tokenizer files only, not the 11B model). Per
Video2World input: the keys, the file's type and header (an image's size; a video's frame count, enough for
`num_input_frames`), and its content hash, which joins the sample's identity. Then a finished sample whose sidecar
records another identity under the same id is refused with the differing keys and the fix.

A sample that fails a check leaves `work.items` for `work.bad_lines` (recorded `failed` by the run at once), so a
run with nothing valid loads nothing. Any error of one sample, whatever its type (a decompression bomb, a
truncated file), is that sample's failure. A `prompt=` run's input error is the run's error (InputError), as
before the models.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

from cosmos_dist.errors import InputError, error_reason
from cosmos_dist.io.paths import sample_paths
from cosmos_dist.io.prompts import BadLine

log = logging.getLogger("cosmos_dist")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def probe_input(path: Path, num_input_frames: int) -> None:
    """The input can be read and has enough frames, from its header (an image) or a frame count (a video);
    InputError otherwise, whatever the underlying error."""
    from cosmos_dist.io.visual_input import check_visual_input

    kind = check_visual_input(path, num_input_frames)
    if kind == "image":
        from PIL import Image

        try:
            with Image.open(path) as im:  # header only; Pillow refuses decompression bombs here
                w, h = im.size
        except Exception as exc:  # noqa: BLE001 - whatever Pillow raises, this sample's failure
            raise InputError(f"input {path}: could not read it as an image ({error_reason(exc)})") from None
        if w < 1 or h < 1:
            raise InputError(f"input {path}: image of size {w}x{h}")
        return
    try:
        from cosmos_dist.io.video import probe_video

        frames = probe_video(path).frames
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - an unreadable file is this sample's failure, whatever the error
        raise InputError(f"input {path}: cannot be read ({error_reason(exc)}); give a readable image or video") from None
    if frames < num_input_frames:
        raise InputError(f"input {path}: the video has {frames} frames but num_input_frames={num_input_frames}; "
                         "give a longer video or num_input_frames=1")


class _PromptChecker:
    """Words, then tokens, once per distinct prompt; the tokenizer loads only when a prompt needs it."""

    def __init__(self, tokenizer_dir: Path | None, allow_long: bool):
        self.tokenizer_dir = tokenizer_dir
        self.allow_long = allow_long
        self.tokenizer = None
        self.tokenizer_failed = False
        self.seen: dict[str, str | None] = {}

    def _tokenizer(self):
        if self.tokenizer is None and not self.tokenizer_failed and self.tokenizer_dir is not None:
            try:
                from cosmos_dist.text.t5 import load_t5_tokenizer

                self.tokenizer = load_t5_tokenizer(self.tokenizer_dir)
            except Exception as exc:  # noqa: BLE001 - the model load reports it properly; words are still checked
                log.warning("prompt token counts are checked when T5 loads: %s", error_reason(exc))
                self.tokenizer_failed = True
        return self.tokenizer

    def __call__(self, prompt: str) -> str | None:
        """None when the prompt passes, else the reason."""
        if prompt not in self.seen:
            self.seen[prompt] = self._check(prompt)
        return self.seen[prompt]

    def _check(self, prompt: str) -> str | None:
        from cosmos_dist.text.prompt_rules import MAX_WORDS, check_prompt, word_count

        if self.allow_long:
            return None  # over-long prompts are cut to what T5 sees, never refused
        if word_count(prompt) > MAX_WORDS:  # cheap first: a huge prompt never reaches the tokenizer
            try:
                check_prompt(prompt, None)
            except Exception as exc:  # noqa: BLE001
                return error_reason(exc)
        tok = self._tokenizer()
        if tok is None:
            return None
        try:
            check_prompt(prompt, tok)
        except Exception as exc:  # noqa: BLE001
            return error_reason(exc)
        return None


def screen_work(work, cfg, tokenizer_dir: Path | None, *, output_dir: Path,
                input_of: Callable | None = None) -> None:
    """Check every sample of `work` (see the module doc); moves the failing ones to `work.bad_lines`."""
    check_words = _PromptChecker(Path(tokenizer_dir) if tokenizer_dir is not None else None,
                                 bool(cfg.allow_long_prompts))
    hashes: dict[tuple, str] = {}
    single = bool(cfg.prompt)
    kept = []
    for item in work.items:
        stage = "prompt"
        try:
            reason = check_words(item.prompt)
            if reason is not None:
                raise InputError(reason)
            if input_of is not None:
                stage = "input"
                spec = None
                try:
                    spec = input_of(item)
                    from cosmos_dist.io.visual_input import check_visual_input

                    check_visual_input(spec.path, spec.num_input_frames)  # type, then existence: the clearer error
                    st = os.stat(spec.path)
                    key = (str(spec.path), st.st_size, st.st_mtime_ns, spec.num_input_frames)
                    if key not in hashes:
                        probe_input(spec.path, spec.num_input_frames)
                        hashes[key] = file_sha256(spec.path)
                except FileNotFoundError:
                    raise InputError(f"input {spec.path if spec else ''}: file not found (give an existing image or video)") from None
                except InputError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    raise InputError(f"input: {error_reason(exc)}") from None
                if item.identity is not None:
                    item = replace(item, identity=replace(item.identity, input_sha256=hashes[key]))
            stage = "sidecar"
            conflict = sidecar_conflict(output_dir, item, work.layout)
            if conflict:
                raise InputError(conflict)
        except Exception as exc:  # noqa: BLE001 - one sample's failure, whatever its type
            if single and stage == "input":
                raise  # a `prompt=` run's input is the run's input: its error stops the run before the models
            work.bad_lines.append(BadLine(item.line_number, error_reason(exc), sample_id=item.sample_id))
            continue
        kept.append(item)
    work.items = kept
    work.bad_lines.sort(key=lambda b: (b.line_number or 0, b.sample_id or ""))


def sidecar_conflict(output_dir: Path, item, layout: str) -> str | None:
    """None when `item` has no sidecar yet or its sidecar records the same identity; else the one-line refusal."""
    from cosmos_dist.pipeline.work import sidecar_differences

    if item.identity is None:
        return None
    paths = sample_paths(output_dir, item.sample_id, layout)
    diff = sidecar_differences(paths.sidecar, item.identity.fingerprint())
    if not diff:
        return None
    return (f"sample {item.sample_id} exists ({paths.relative}) but was made with another {', '.join(diff)}: "
            f"to make it again with this run's values delete {item.sample_id}.* in {paths.folder}, or give the line "
            "a new \"id\" (or use another output_dir) to keep both")
