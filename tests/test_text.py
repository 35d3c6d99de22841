"""T5 text encoder: tiny directory written then loaded through the real loader; masking, batching, cache, rules."""
import shutil

import pytest
import torch

from cosmos_dist.errors import CheckpointError, InputError
from cosmos_dist.text import (
    T5_SUBDIR,
    T5TextEncoder,
    check_prompt,
    count_tokens,
    load_t5_tokenizer,
    word_count,
    write_tiny_t5,
)

PROMPTS = [
    "A robot arm picks up a red cube from the wooden table.",
    "Aerial view of a city street at night, rain, cars drive past 123 people!",
    "dog",
    "the camera moves slowly across the river " * 30,
]


@pytest.fixture(scope="module")
def t5_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    write_tiny_t5(root / T5_SUBDIR, d_model=64, seed=0)  # ~0.2 s once transformers is imported
    return root


@pytest.fixture(scope="module")
def encoder(t5_root):
    return T5TextEncoder.from_dir(t5_root / T5_SUBDIR, "cpu")


def test_tiny_dir_loads_like_the_real_one(t5_root, encoder):
    d = t5_root / T5_SUBDIR
    assert (d / "config.json").is_file() and (d / "tokenizer.json").is_file()
    tok = encoder.tokenizer
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens(1) == "</s>"
    assert encoder.d_model == 64
    assert encoder.model.config.num_layers == 2 and encoder.model.config.num_heads == 2
    assert encoder.model.config.vocab_size == len(tok)
    assert next(encoder.model.parameters()).dtype == torch.float32
    # A checkpoint directory holding google-t5/t5-11b is accepted as well.
    enc2 = T5TextEncoder.from_dir(t5_root, "cpu")
    assert torch.equal(enc2.encode(["dog"])[0], encoder.encode(["dog"])[0])
    # Same seed, same weights.
    ids = tok("a robot arm", return_tensors="pt").input_ids
    assert ids[0, -1].item() == 1  # </s> appended


def test_missing_files_are_checkpoint_errors(tmp_path, t5_root):
    missing = tmp_path / "nothing" / T5_SUBDIR
    with pytest.raises(CheckpointError) as err:
        T5TextEncoder.from_dir(missing, "cpu")
    assert str(missing) in str(err.value) and "Download checkpoints" in str(err.value)

    partial = tmp_path / "partial"
    shutil.copytree(t5_root / T5_SUBDIR, partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(CheckpointError) as err:
        T5TextEncoder.from_dir(partial, "cpu")
    assert "weights" in str(err.value) and str(partial) in str(err.value)

    (partial / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_t5_tokenizer(partial)


def test_encode_shapes_and_zero_padding(encoder):
    emb, lengths = encoder.encode(PROMPTS)
    assert emb.shape == (len(PROMPTS), 512, 64) and emb.dtype == torch.float32
    assert lengths.dtype == torch.long
    for i, p in enumerate(PROMPTS):
        n = int(lengths[i])
        assert n == count_tokens(encoder.tokenizer, p)  # all under 512 here
        assert torch.all(emb[i, n:] == 0)
        assert not torch.signbit(emb[i, n:]).any()  # +0.0, not -0.0
        assert torch.all(emb[i, :n].abs().sum(-1) > 0)


def test_masked_padding_matches_unpadded_forward(encoder):
    # The padded, masked forward must agree with running T5 on the real tokens alone.
    p = PROMPTS[1]
    emb, lengths = encoder.encode([p])
    n = int(lengths[0])
    ids = encoder.tokenizer(p, return_tensors="pt").input_ids
    assert ids.shape[1] == n
    with torch.no_grad():
        ref = encoder.model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(emb[0, :n], ref[0], rtol=1e-5, atol=1e-5)


def test_batched_equals_one_at_a_time(t5_root):
    batched = T5TextEncoder.from_dir(t5_root, "cpu", cache_size=0)
    emb, lengths = batched.encode(PROMPTS)
    single = T5TextEncoder.from_dir(t5_root, "cpu", cache_size=0, max_batch=1)
    for i, p in enumerate(PROMPTS):
        e1, l1 = single.encode([p])  # the reference encodes one prompt per call
        assert int(l1[0]) == int(lengths[i])
        assert torch.equal(e1[0], emb[i]), f"prompt {i}: max diff {(e1[0] - emb[i]).abs().max().item()}"


def test_cache_hits_and_bound(t5_root):
    enc = T5TextEncoder.from_dir(t5_root, "cpu", cache_size=2)
    neg = "static, blurry, low quality"
    a, _ = enc.encode([PROMPTS[0], neg])
    info = enc.cache_info()
    assert (info.hits, info.misses, info.size) == (0, 2, 2)
    b, _ = enc.encode([PROMPTS[2], neg])  # the negative prompt is not re-encoded
    assert enc.cache_info().hits == 1 and enc.cache_info().misses == 3
    assert torch.equal(a[1], b[1])
    # Bounded LRU: PROMPTS[0] was the least recently used and is gone.
    assert enc.cache_info().size == 2 and PROMPTS[0] not in enc._cache
    # Changing a returned tensor does not change the cache.
    b.zero_()
    c, _ = enc.encode([neg])
    assert torch.equal(c[0], a[1])
    # Exact text: a trailing space is another prompt.
    enc.encode([neg + " "])
    assert enc.cache_info().misses == 4
    # Duplicates inside one call are encoded once.
    d, _ = enc.encode(["x y", "x y"])
    assert torch.equal(d[0], d[1]) and enc.cache_info().misses == 5


def test_word_and_token_counts(encoder):
    assert word_count("  a  robot\narm\tmoves ") == 4
    n = encoder.count_tokens("dog")
    assert n == len(encoder.tokenizer("dog").input_ids) and n >= 2  # includes </s>
    long = "the camera moves " * 400
    assert encoder.count_tokens(long) > 512  # no truncation when counting


def test_prompt_rules(encoder):
    assert encoder.check_prompt("A robot arm picks up a cube.") == ("A robot arm picks up a cube.", [])
    # The module function takes a tokenizer or the encoder itself.
    assert check_prompt("A dog.", encoder.tokenizer) == encoder.check_prompt("A dog.") == ("A dog.", [])

    for empty in ("", "   \n\t"):
        with pytest.raises(InputError, match="empty"):
            encoder.check_prompt(empty)

    many_words = " ".join(["dog"] * 301)
    with pytest.raises(InputError) as err:
        check_prompt(many_words)  # words need no tokenizer
    assert "300" in str(err.value) and "allow_long_prompts=true" in str(err.value)
    assert check_prompt(" ".join(["dog"] * 300)) == (" ".join(["dog"] * 300), [])
    prompt, notes = check_prompt(many_words, allow_long=True)
    assert prompt == many_words and len(notes) == 1 and "301 words" in notes[0]

    # Over 512 tokens but under 300 words.
    long = "Zebra xylophone " * 100
    assert word_count(long) <= 300 and encoder.count_tokens(long) > 512
    with pytest.raises(InputError) as err:
        encoder.check_prompt(long)
    assert "512" in str(err.value) and "allow_long_prompts=true" in str(err.value)

    cut, notes = encoder.check_prompt(long, allow_long=True)
    assert any("truncated" in n for n in notes)
    assert long.startswith(cut) and len(cut) < len(long)
    assert encoder.count_tokens(cut) <= 512
    # The truncated text is what T5 sees when it truncates the full prompt itself.
    full = encoder.tokenizer(long, truncation=True, max_length=512).input_ids
    assert encoder.tokenizer(cut).input_ids == full
    # And the embeddings agree.
    e_full, _ = encoder.encode([long])
    e_cut, _ = encoder.encode([cut])
    assert torch.equal(e_full, e_cut)
