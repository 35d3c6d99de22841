"""A tiny random T5 encoder directory, laid out like `google-t5/t5-11b`, for tests and CPU runs.

The tokenizer is trained on the spot (a `tokenizers` Unigram model over generated English-like sentences),
built the way T5's tokenizer is (whitespace split + metaspace, `<pad>`=0, `</s>`=1, `<unk>`=2, `</s>` appended),
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


def _corpus(seed: int, n_sentences: int = 1500) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_sentences):
        n = rng.randint(6, 18)
        words = [rng.choice(_WORDS) for _ in range(n)]
        if rng.random() < 0.5:
            words[0] = words[0].capitalize()
        text = " ".join(words)
        if rng.random() < 0.3:
            text += rng.choice([".", ",", "!", "?", ";", ":"])
        if rng.random() < 0.1:
            text += f" {rng.randint(0, 2025)}"
        lines.append(text)
    # Every single character on its own, so any ASCII text tokenizes without <unk>.
    lines.append(" ".join(string.ascii_letters + string.digits + string.punctuation))
    return lines


def _train_tokenizer(seed: int, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    # As T5Tokenizer builds it (so transformers 4.x and 5.x rebuild the same pipeline when loading).
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")]
    )
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
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
