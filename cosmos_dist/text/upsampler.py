"""Prompt upsampler: a local causal language model rewrites a short prompt into a detailed one (spec section 8).

Any Hugging Face-format causal LM directory works (`AutoModelForCausalLM` + `AutoTokenizer`, local files only):
an instruct model of your choice, or a Hugging Face-format copy of the Cosmos upsampler. The reference's own
`Cosmos-UpsamplePrompt1-12B-Text2World/` folder holds a `model.pt` in NVIDIA's own layout, which transformers
cannot read: it is refused with that explanation.

What is done, as the reference's Text2World upsampler:
* the instruction "Upsample the short caption to a long caption: {prompt}" as one user turn (through the
  tokenizer's chat template when it has one, else as plain text);
* decoding with a token budget (512, the reference's max_gen_len); greedy by default (the reference samples at
  temperature 0.01, which is nearly greedy); with `temperature > 0` sampling is seeded per sample;
* the output cleaned: newlines become spaces, short markdown heading bullets ("- **Title**") are dropped,
  leading "Caption:", "####", "- ", "* ", "," are stripped, whitespace collapsed and quotes/dashes trimmed;
* prompts of more than `word_limit` (250) words are left as they are.

Video2World note: the reference upsamples Video2World prompts with a vision-language model (Pixtral-12B) that
looks at the input image and discards the user's text; this upsampler is text-only and rewrites the user's
prompt for both kinds.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from cosmos_dist.errors import CheckpointError

INSTRUCTION = "Upsample the short caption to a long caption: {prompt}"
WORD_LIMIT = 250
MAX_NEW_TOKENS = 512


@dataclass
class UpsampleResult:
    prompt: str  # the prompt to use (upsampled, or the original when skipped)
    original: str
    upsampled: bool
    skipped_reason: Optional[str] = None

    def record(self) -> dict:
        out = {"upsampled": self.upsampled, "original_prompt": self.original}
        if self.upsampled:
            out["upsampled_prompt"] = self.prompt
        if self.skipped_reason:
            out["skipped"] = self.skipped_reason
        return out


_BOLD_BULLET = re.compile(r"-\s*\*\*[^*]*\*\*:?")
_LEADING = ("caption:", "#####", "####", "###", "##", "#", "- ", "* ", ",")
_TRIM = " -,*:\"'\u201c\u201d"


def clean_text(text: str) -> str:
    """The reference's post-processing of the upsampler output, restated."""
    text = text.replace("\r", " ").replace("\n", " ")
    # A "- **Heading**" bullet with fewer than 10 words after it until the next one is a heading: drop it.
    parts = re.split(r"(?=-\s*\*\*)", text)
    kept = []
    for part in parts:
        if _BOLD_BULLET.match(part.strip()) and len(_BOLD_BULLET.sub("", part.strip(), count=1).split()) < 10:
            continue
        kept.append(_BOLD_BULLET.sub("", part, count=1) if _BOLD_BULLET.match(part.strip()) else part)
    text = " ".join(kept)
    text = re.sub(r"\s+", " ", text).strip()
    changed = True
    while changed:
        changed = False
        for lead in _LEADING:
            if text.lower().startswith(lead):
                text = text[len(lead):].lstrip()
                changed = True
    text = text.replace("**", "")
    text = re.sub(r"\s+", " ", text)
    return text.strip(_TRIM)


def _dtype_kwarg() -> str:
    from cosmos_dist.text.t5 import _dtype_kwarg as kw

    return kw()


class PromptUpsampler:
    def __init__(
        self,
        model,
        tokenizer,
        device: torch.device | str = "cpu",
        *,
        max_new_tokens: int = MAX_NEW_TOKENS,
        temperature: float = 0.0,
        word_limit: int = WORD_LIMIT,
        model_dir: str | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.word_limit = int(word_limit)
        self.model_dir = model_dir

    @classmethod
    def from_dir(
        cls, path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
        load_device: torch.device | str | None = None, **kwargs,
    ) -> "PromptUpsampler":
        """Load from a local Hugging Face-format directory; `load_device` (default `device`) is where the
        weights are put (the CPU when the upsampler is offloaded)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        p = Path(path)
        if not p.is_dir():
            raise CheckpointError(f"upsampler.model_dir: {p} is not a directory (a Hugging Face-format causal LM)")
        if not (p / "config.json").is_file():
            if (p / "model.pt").is_file():
                raise CheckpointError(
                    f"upsampler.model_dir: {p} holds a model.pt in NVIDIA's own checkpoint layout (the reference's "
                    "Cosmos-UpsamplePrompt1 format), which transformers cannot read; give a Hugging Face-format "
                    "directory (config.json + weights + tokenizer), e.g. an instruct model of the Mistral-NeMo family"
                )
            raise CheckpointError(f"upsampler.model_dir: {p} has no config.json (not a Hugging Face model directory)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True, **{_dtype_kwarg(): dtype})
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise CheckpointError(f"could not load the prompt upsampler from {p}: {err}") from err
        model = model.to(load_device if load_device is not None else device).eval()
        model.requires_grad_(False)
        return cls(model, tokenizer, device, model_dir=str(p), **kwargs)

    def modules(self) -> list:
        return [self.model]

    def _inputs(self, prompt: str) -> dict:
        text = INSTRUCTION.format(prompt=prompt)
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            ids = {k: v for k, v in dict(ids).items() if k in ("input_ids", "attention_mask")}
        else:
            ids = dict(tok(text, return_tensors="pt"))
            ids = {k: v for k, v in ids.items() if k in ("input_ids", "attention_mask")}
        return {k: v.to(self.device) for k, v in ids.items()}

    @torch.no_grad()
    def generate_text(self, prompt: str, seed: int = 0) -> str:
        inputs = self._inputs(prompt)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        kwargs = dict(max_new_tokens=self.max_new_tokens, pad_token_id=pad)
        if self.temperature > 0:
            torch.manual_seed(int(seed) % (2**63))
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        out = self.model.generate(**inputs, **kwargs)
        new = out[0, inputs["input_ids"].shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True)

    def upsample(self, prompt: str, seed: int = 0) -> UpsampleResult:
        words = len(prompt.split())
        if words > self.word_limit:
            return UpsampleResult(prompt, prompt, False,
                                  f"{words} words > upsampler.word_limit {self.word_limit} (the reference skips these)")
        text = clean_text(self.generate_text(prompt, seed))
        if not text:
            return UpsampleResult(prompt, prompt, False, "the upsampler's output was empty after cleaning; the original prompt is used")
        return UpsampleResult(text, prompt, True)
