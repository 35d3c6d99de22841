"""Prompt rules: word and T5-token limits, checked before any GPU work.

The reference silently truncates at 512 T5 tokens (`truncation=True`). Here a prompt over the word or token
limit is an `InputError` unless `allow_long_prompts=true`; then it is accepted and, when over the token
limit, cut to exactly the text T5 sees, with a note for the sidecar.
"""
from __future__ import annotations

from cosmos_dist.errors import InputError

MAX_WORDS = 300
MAX_TOKENS = 512
_FIX = "set allow_long_prompts=true to accept it (T5 then sees only the first {max_tokens} tokens)"


def word_count(prompt: str) -> int:
    """Words as the reference counts them: `len(prompt.split())`."""
    return len(prompt.split())


def count_tokens(tokenizer, prompt: str) -> int:
    """T5 tokens of `prompt` without truncation, including the closing `</s>`."""
    return len(tokenizer(prompt, truncation=False, add_special_tokens=True, verbose=False)["input_ids"])


def _truncate_to_tokens(tokenizer, prompt: str, max_tokens: int) -> str:
    """The prefix of `prompt` that T5 sees when truncating to `max_tokens` (the last slot holds `</s>`)."""
    enc = tokenizer(
        prompt, truncation=False, add_special_tokens=False, return_offsets_mapping=True, verbose=False
    )
    offsets = enc["offset_mapping"]
    keep = max_tokens - 1
    if keep <= 0:
        return ""
    if len(offsets) <= keep:
        return prompt
    end = offsets[keep - 1][1]
    return prompt[:end].rstrip()


def check_prompt(
    prompt: str,
    tokenizer=None,
    *,
    max_words: int = MAX_WORDS,
    max_tokens: int = MAX_TOKENS,
    allow_long: bool = False,
    what: str = "prompt",
) -> tuple[str, list[str]]:
    """Check a prompt against the limits; returns `(prompt_to_use, notes)`.

    `tokenizer` is a T5 tokenizer (`load_t5_tokenizer`, or a `T5TextEncoder`'s `.tokenizer`); without one only
    words are checked. Raises `InputError` for an empty prompt, and for a prompt over `max_words` words or
    `max_tokens` T5 tokens unless `allow_long`. With `allow_long`, a prompt over the token limit is cut to exactly
    the text T5 sees, and the notes (for the sidecar) say so.
    """
    if not isinstance(prompt, str):
        raise InputError(f"{what} must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise InputError(f"{what} is empty; give a non-empty text prompt")
    words = word_count(prompt)
    tokens = count_tokens(tokenizer, prompt) if tokenizer is not None else None
    notes: list[str] = []
    fix = _FIX.format(max_tokens=max_tokens)
    if words > max_words:
        if not allow_long:
            raise InputError(f"{what} has {words} words; the limit is {max_words} words. Shorten it, or {fix}")
        notes.append(f"{what} has {words} words (over the {max_words}-word limit; accepted by allow_long_prompts)")
    out = prompt
    if tokens is not None and tokens > max_tokens:
        if not allow_long:
            raise InputError(
                f"{what} is {tokens} T5 tokens; the limit is {max_tokens} tokens. Shorten it, or {fix}"
            )
        out = _truncate_to_tokens(tokenizer, prompt, max_tokens)
        notes.append(
            f"{what} truncated from {tokens} to {max_tokens} T5 tokens (allow_long_prompts); "
            f"{len(prompt) - len(out)} trailing characters were dropped"
        )
    return out, notes
