"""Prompt upsampler: a tiny random causal LM (Llama layout) and a word-level tokenizer trained here, saved with
save_pretrained, loaded through transformers from the local folder; the reference's rules (instruction, 250-word
skip, output cleanup) and the pipeline record of both prompts."""
from __future__ import annotations

import json

import pytest
import torch

from cosmos_dist.errors import CheckpointError, ConfigError
from cosmos_dist.text.upsampler import INSTRUCTION, PromptUpsampler, clean_text
from pipeline_helpers import Recorder, manifest_by_id, recording_pipeline, small_cfg, write_prompts

WORDS = ("a the robot arm walks through sunlit warehouse with tall shelves and boxes red ball rolls across wooden "
         "floor camera pans slowly left right cat sleeps on warm window sill rain falls city street at night").split()
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}<|assistant|>"


def write_tiny_causal_lm(path, chat_template: bool = True, seed: int = 0) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [" ".join(WORDS), INSTRUCTION.format(prompt="a red ball"), "<|user|> <|assistant|>"]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "</s>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=fast.pad_token_id, eos_token_id=None, bos_token_id=None)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = None  # a random model: generate the whole budget
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-lm")
    write_tiny_causal_lm(d)
    return d


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tmp_path_factory.mktemp("upsampler-ckpt")


def test_clean_text_like_the_reference():
    assert clean_text("Caption: A cat\nsleeps.") == "A cat sleeps."
    assert clean_text('#### "A red ball rolls."') == "A red ball rolls."
    assert clean_text("- **Scene** A robot walks through a warehouse full of tall shelves and many boxes today.") == (
        "A robot walks through a warehouse full of tall shelves and many boxes today.")
    assert clean_text("- **Title**\n- **Setting** short") == ""
    assert clean_text("  * ,  spaced   out  ") == "spaced out"


def test_upsample_short_prompt_greedy_and_deterministic(lm_dir):
    up = PromptUpsampler.from_dir(lm_dir, max_new_tokens=8)
    inputs = up._inputs("a red ball")
    text = up.tokenizer.decode(inputs["input_ids"][0])
    # (the word-level tokenizer decodes with spaces between pieces)
    assert text.replace(" ", "") == "<|user|>Upsampletheshortcaptiontoalongcaption:aredball<|assistant|>"
    r1, r2 = up.upsample("a red ball"), up.upsample("a red ball")
    assert r1.upsampled and r1.prompt == r2.prompt and r1.prompt and r1.original == "a red ball"
    assert set(r1.prompt.lower().split()) <= set(w.lower() for w in WORDS) | {"upsample", "short", "caption", "to",
                                                                               "long", ":", "<|user|>", "<|assistant|>"}
    assert r1.record() == {"upsampled": True, "original_prompt": "a red ball", "upsampled_prompt": r1.prompt}


def test_over_250_words_is_not_upsampled(lm_dir):
    up = PromptUpsampler.from_dir(lm_dir, max_new_tokens=4)
    long = " ".join(["word"] * 251)
    r = up.upsample(long)
    assert not r.upsampled and r.prompt == long and "251 words > upsampler.word_limit 250" in r.skipped_reason
    assert up.upsample(" ".join(["cat"] * 250)).upsampled


def test_plain_prompt_without_chat_template_and_bad_dirs(tmp_path):
    d = tmp_path / "plain"
    write_tiny_causal_lm(d, chat_template=False, seed=1)
    up = PromptUpsampler.from_dir(d, max_new_tokens=4)
    assert up.tokenizer.decode(up._inputs("a cat")["input_ids"][0]).replace(" ", "") == "Upsampletheshortcaptiontoalongcaption:acat"
    (tmp_path / "cosmos").mkdir()
    (tmp_path / "cosmos" / "model.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="NVIDIA's own checkpoint layout"):
        PromptUpsampler.from_dir(tmp_path / "cosmos")
    with pytest.raises(CheckpointError, match="not a directory"):
        PromptUpsampler.from_dir(tmp_path / "missing")


def test_pipeline_records_both_prompts_and_checks_the_upsampled_one(ckpt, lm_dir, tmp_path, monkeypatch):
    prompts = write_prompts(tmp_path / "p.jsonl", [
        {"prompt": "a red ball", "id": "short"}, {"prompt": " ".join(["cat"] * 260), "id": "long"},
    ])
    out = tmp_path / "out"
    rec = Recorder()
    cfg = small_cfg(ckpt, out, f"prompts_file={prompts}", "upsampler.enabled=true", f"upsampler.model_dir={lm_dir}",
                    "upsampler.max_new_tokens=8", "offload=upsampler", "allow_long_prompts=true")
    summary = recording_pipeline(cfg, rec, monkeypatch).run()
    assert sorted(summary.done) == ["long", "short"], manifest_by_id(out)
    side = json.loads((out / "short.json").read_text())
    up = side["extra"]["upsampler"]
    assert side["original_prompt"] == "a red ball" and up["original_prompt"] == "a red ball"
    assert up["upsampled"] and side["prompt"] == up["upsampled_prompt"] != "a red ball"
    assert up["model_dir"] == str(lm_dir)
    # the guardrail saw the user's prompt first, then the upsampled one; T5 encoded the upsampled one
    assert ("guard_text", "a red ball") in rec.events and ("guard_text", side["prompt"]) in rec.events
    assert rec.events.index(("guard_text", "a red ball")) < rec.events.index(("guard_text", side["prompt"]))
    assert ("encode", side["prompt"]) in rec.events and ("encode", "a red ball") not in rec.events
    assert side["extra"]["guardrail"]["checks"]["text"] == ["prompt: passed", "upsampled prompt: passed"]
    # the upsampler moved in once for the chunk (offload=upsampler), and only it
    assert [e for e in rec.events if e[0] in ("in", "out")] == [("in", "upsampler"), ("out", "upsampler")]
    long_side = json.loads((out / "long.json").read_text())
    assert "original_prompt" not in long_side and not long_side["extra"]["upsampler"]["upsampled"]
    assert any("prompt upsampler skipped: 260 words" in n for n in long_side["notes"])


def test_config_needs_a_model_dir(tmp_path):
    from cosmos_dist.config import validate_config
    from cosmos_dist.pipeline.components import check_upsampler
    from pipeline_helpers import compose

    with pytest.raises(ConfigError, match="upsampler.model_dir"):
        validate_config(compose("model=tiny_text2world", "prompt=x", "upsampler.enabled=true"))
    cfg = compose("model=tiny_text2world", "prompt=x", "upsampler.enabled=true", f"upsampler.model_dir={tmp_path}/none")
    with pytest.raises(ConfigError, match="does not exist"):
        check_upsampler(cfg)
