"""The T5-11B text encoder of Cosmos-Predict1 (spec section 4.4).

The reference loads `T5TokenizerFast` and `T5EncoderModel` from `{checkpoint_dir}/google-t5/t5-11b` in fp32,
tokenizes with `padding="max_length", max_length=512, truncation=True`, passes the attention mask, and sets
every position at or past the true token length to zero. It encodes one prompt per call; rows here are
encoded in small batches, which gives the same numbers because every row is padded to the same 512 tokens
and masked on its own (checked in tests/test_text.py).

`transformers` is imported inside the functions that need it, so importing this module is cheap.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from cosmos_dist.errors import CheckpointError
from cosmos_dist.text.prompt_rules import check_prompt, count_tokens

#: Where the T5 directory lives under `checkpoint_dir` (spec 4.1).
T5_SUBDIR = os.path.join("google-t5", "t5-11b")
#: Token budget of the reference (including the closing `</s>`).
MAX_LENGTH = 512

_CONFIG_FILES = ("config.json",)
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
_DOWNLOAD_HINT = 'See the README\'s "Download checkpoints" section.'


def t5_dir(checkpoint_dir: str | os.PathLike) -> Path:
    """The T5 directory inside a checkpoint directory: `{checkpoint_dir}/google-t5/t5-11b`."""
    return Path(checkpoint_dir) / T5_SUBDIR


def _resolve_dir(path: str | os.PathLike) -> Path:
    """Accept either the T5 directory itself or a checkpoint directory holding `google-t5/t5-11b`."""
    p = Path(path)
    if not (p / "config.json").is_file() and (p / T5_SUBDIR).is_dir():
        return p / T5_SUBDIR
    return p


def _check_dir(path: Path, need_model: bool) -> None:
    if not path.is_dir():
        raise CheckpointError(
            f"T5 text encoder directory not found: {path} (expected a Hugging Face snapshot of "
            f"google-t5/t5-11b at {{checkpoint_dir}}/{T5_SUBDIR}). {_DOWNLOAD_HINT}"
        )
    missing = []
    if need_model:
        if not any((path / f).is_file() for f in _CONFIG_FILES):
            missing.append("config.json")
        if not any((path / f).is_file() for f in _WEIGHT_FILES):
            missing.append("weights (" + " or ".join(_WEIGHT_FILES) + ")")
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        missing.append("tokenizer (" + " or ".join(_TOKENIZER_FILES) + ")")
    if missing:
        raise CheckpointError(
            f"T5 text encoder directory {path} is incomplete; missing: {', '.join(missing)}. {_DOWNLOAD_HINT}"
        )


def load_t5_tokenizer(path: str | os.PathLike):
    """Load only the T5 tokenizer (cheap), e.g. to check prompt lengths before the 11B model is loaded."""
    from transformers import T5TokenizerFast

    p = _resolve_dir(path)
    _check_dir(p, need_model=False)
    try:
        return T5TokenizerFast.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, ImportError) as err:
        raise CheckpointError(f"could not load the T5 tokenizer from {p}: {err}. {_DOWNLOAD_HINT}") from err


def _dtype_kwarg() -> str:
    """`from_pretrained` takes `dtype=` from transformers 4.56 on, `torch_dtype=` before."""
    import transformers

    parts = transformers.__version__.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        return "dtype"
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


@dataclass
class CacheInfo:
    hits: int
    misses: int
    size: int
    max_size: int


class T5TextEncoder:
    """T5 encoder + tokenizer with the reference's padding/masking and an LRU cache by exact prompt text.

    `encode(prompts)` returns `(emb, lengths)`: `emb` is (B, 512, d_model) float32 on the encoder's device,
    exactly zero at positions >= the prompt's token count; `lengths` is an int64 CPU tensor (B,) of token
    counts including `</s>` (at most 512).
    """

    def __init__(
        self,
        tokenizer,
        model: torch.nn.Module,
        device: torch.device | str = "cpu",
        *,
        max_length: int = MAX_LENGTH,
        cache_size: int = 16,
        max_batch: int = 8,
    ):
        self.tokenizer = tokenizer
        self.model = model
        self.device = torch.device(device)
        self.max_length = int(max_length)
        self.max_batch = max(1, int(max_batch))
        self.cache_size = max(0, int(cache_size))
        self._cache: OrderedDict[str, tuple[torch.Tensor, int]] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dir(
        cls,
        path: str | os.PathLike,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        **kwargs,
    ) -> "T5TextEncoder":
        """Load from the T5 directory (`{checkpoint_dir}/google-t5/t5-11b`; a checkpoint directory holding
        that sub-path is accepted too). Local files only; never the hub. The reference runs T5 in fp32."""
        from transformers import T5EncoderModel

        p = _resolve_dir(path)
        _check_dir(p, need_model=True)
        tokenizer = load_t5_tokenizer(p)
        try:
            model = T5EncoderModel.from_pretrained(str(p), local_files_only=True, **{_dtype_kwarg(): dtype})
        except (OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"could not load the T5 encoder from {p}: {err}. {_DOWNLOAD_HINT}") from err
        model = model.to(device=device, dtype=dtype).eval()
        model.requires_grad_(False)
        return cls(tokenizer, model, device, **kwargs)

    @property
    def d_model(self) -> int:
        return int(self.model.config.d_model)

    # ------------------------------------------------------------------ prompt rules
    def count_tokens(self, prompt: str) -> int:
        return count_tokens(self.tokenizer, prompt)

    def check_prompt(self, prompt: str, **kwargs):
        kwargs.setdefault("max_tokens", self.max_length)
        return check_prompt(prompt, tokenizer=self.tokenizer, **kwargs)

    # ------------------------------------------------------------------ cache
    def cache_info(self) -> CacheInfo:
        return CacheInfo(self.cache_hits, self.cache_misses, len(self._cache), self.cache_size)

    def clear_cache(self) -> None:
        self._cache.clear()

    def _cache_put(self, text: str, row: torch.Tensor, length: int) -> None:
        if self.cache_size == 0:
            return
        self._cache[text] = (row, length)
        self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    def _encode_batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, list[int]]:
        tok = self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
            return_attention_mask=True,
        )
        ids = tok["input_ids"].to(self.device)
        mask = tok["attention_mask"].to(self.device)
        out = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        out = out.masked_fill(mask[..., None] == 0, 0.0)
        lengths = [int(n) for n in tok["attention_mask"].sum(dim=1).tolist()]
        return out, lengths

    def encode(self, prompts: Sequence[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode prompts -> (emb (B, 512, d_model) float32, lengths (B,) int64 on CPU)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        for p in prompts:
            if not isinstance(p, str):
                raise TypeError(f"prompts must be strings, got {type(p).__name__}")
        rows: dict[str, tuple[torch.Tensor, int]] = {}
        todo: list[str] = []
        for p in prompts:
            if p in rows or p in todo:
                continue
            hit = self._cache.get(p)
            if hit is not None:
                self._cache.move_to_end(p)
                self.cache_hits += 1
                rows[p] = hit
            else:
                self.cache_misses += 1
                todo.append(p)
        for start in range(0, len(todo), self.max_batch):
            chunk = todo[start : start + self.max_batch]
            out, lengths = self._encode_batch(chunk)
            for i, text in enumerate(chunk):
                row = out[i].clone()
                rows[text] = (row, lengths[i])
                self._cache_put(text, row, lengths[i])
        if not prompts:
            return torch.zeros(0, self.max_length, self.d_model, device=self.device), torch.zeros(0, dtype=torch.long)
        emb = torch.stack([rows[p][0] for p in prompts])
        lengths_t = torch.tensor([rows[p][1] for p in prompts], dtype=torch.long)
        return emb, lengths_t

    __call__ = encode
