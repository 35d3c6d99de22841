"""A tiny random T5 encoder directory, laid out like `google-t5/t5-11b`, for tests and CPU runs.

The tokenizer is a `tokenizers` Unigram model over a fixed English-like word list (built, not trained, so it is
the same on every machine), set up the way T5's tokenizer is (whitespace split + metaspace, `<pad>`=0, `</s>`=1, `<unk>`=2, `</s>` appended),
and saved with `save_pretrained` next to a random `T5EncoderModel`, so `T5TextEncoder.from_dir` reads it
through exactly the path it uses for the real checkpoint. Nothing is downloaded.
"""
from __future__ import annotations

import os
import random
import string
from pathlib import Path

_WORDS = """
a an the this that these those some many few every each other another same different
robot arm hand gripper camera lens drone car truck bus train bicycle boat ship plane road street
city town village house building bridge tower window door wall floor roof kitchen table chair desk
shelf box cube ball cup bottle plate bowl knife fork spoon book paper phone screen light lamp
tree forest leaf flower grass field farm garden park river lake sea ocean beach wave sand rock
mountain hill valley cliff cave desert snow ice rain storm cloud sky sun moon star night morning
evening day sunset sunrise fog wind fire smoke water steam dust shadow reflection color
red orange yellow green blue purple pink brown black white gray silver golden bright dark
man woman child person people worker driver chef doctor farmer dog cat bird horse cow fish
walks runs drives flies moves turns stops starts picks places pushes pulls holds opens closes lifts
drops rolls slides falls rises jumps climbs swims looks watches follows crosses enters leaves
slowly quickly gently smoothly steadily suddenly carefully forward backward left right up down
around across along through over under into onto between behind beside near far above below
small large tall short wide narrow long old new modern ancient busy quiet empty crowded clean wet
dry warm cold soft hard smooth rough shiny metal wooden plastic glass stone concrete
scene view shot video footage frame close wide angle aerial tracking static pan zoom focus
in on at of with and or but while as then from to by for is are was were has have
one two three four five ten hundred first second last next front back top bottom side middle
""".split()


def _vocab(seed: int, vocab_size: int) -> list[tuple[str, float]]:
    """The Unigram pieces and log-probabilities, built without training: `tokenizers`' Unigram trainer runs on
    several threads and gives a different vocabulary on every run, which made the tiny preset's videos differ
    between machines. Here every piece and score is a pure function of (seed, vocab_size)."""
    rng = random.Random(seed)
    words = sorted(set(_WORDS))
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    # Whole words (with and without the leading word marker) are likely; single characters are the fallback,
    # so any ASCII text tokenizes without <unk>.
    for w in words:
        pieces.append(("\u2581" + w, -4.0 - rng.random()))
    for w in words:
        if len(pieces) >= vocab_size - 2 * len(_CHARS):
            break
        pieces.append((w, -6.0 - rng.random()))
    for c in _CHARS:
        pieces.append(("\u2581" + c, -10.0 - rng.random()))
        pieces.append((c, -11.0 - rng.random()))
    seen, unique = set(), []
    for piece, score in pieces:  # a piece once (the first, most likely, form wins)
        if piece not in seen:
            seen.add(piece)
            unique.append((piece, score))
    return unique[:vocab_size]


_CHARS = string.ascii_letters + string.digits + string.punctuation


def _train_tokenizer(seed: int, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.Unigram(_vocab(seed, vocab_size), unk_id=2))
    # As T5Tokenizer builds it (so transformers 4.x and 5.x rebuild the same pipeline when loading).
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")]
    )
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    assert (tok.token_to_id("<pad>"), tok.token_to_id("</s>"), tok.token_to_id("<unk>")) == (0, 1, 2)
    tok.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)]
    )
    return tok


def write_tiny_t5(
    path: str | os.PathLike,
    d_model: int = 64,
    seed: int = 0,
    *,
    num_layers: int = 2,
    num_heads: int = 2,
    d_kv: int = 32,
    d_ff: int = 128,
    vocab_size: int = 800,
) -> Path:
    """Write a tiny random T5 encoder + trained fast tokenizer into `path` (created). Returns `path`."""
    import torch
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    backend = _train_tokenizer(seed, vocab_size)
    tokenizer = T5TokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=512,
    )
    tokenizer.save_pretrained(str(out))

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=num_heads,
        feed_forward_proj="relu",  # as t5-11b (T5 v1.0)
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = T5EncoderModel(config)
    finally:
        torch.random.set_rng_state(gen_state)
    model.save_pretrained(str(out))
    return out
