"""The full-size random stand-ins tools/measure_memory.py hands to the pipeline, and the adapters that give them
the interfaces the pipeline calls (cosmos_dist/pipeline/components.py, cosmos_dist/guardrails/base.py).

Stand-ins (random weights, real sizes; `tiny=True`: a few-KB version of each for the CPU check):
* DiT: cosmos_dist.models.build_dit of the preset, bf16 on CUDA (the pipeline's network);
* T5-11B encoder: transformers T5EncoderModel with t5-11b's dimensions, float32 (as the reference);
* tokenizer: the pipeline's own CV8x8x8 decoder (cosmos_dist/tokenizer/cv8x8x8.py, 62.7M parameters) and encoder
  (cosmos_dist/tokenizer/cv8x8x8_encoder.py, 42.9M) at full size, random weights, bf16, streaming over time in
  chunks like the pipeline (precision.tokenizer_decode_chunk / tokenizer_encode_chunk; 0 = the whole clip);
* upsampler: a Mistral-NeMo-12B-shaped MistralForCausalLM, bf16 (the Cosmos upsampler's family and size);
* guardrails (`aegis`, the model card's set): LlamaGuard-7B-shaped LlamaForCausalLM bf16 (Aegis),
  SigLIP-so400m SiglipModel float32, and a small convolutional stand-in for RetinaFace (its 27M weights are not
  modelled; its activations at 704x1280 are roughly). `qwen3guard`: cosmos-guardrail 0.3.2's set
  (Qwen3Guard-0.6B float32, no SigLIP filter).

Adapters (what the pipeline calls on them):
* `StandInText`: the TextEncoder interface: `check_prompt` keeps the prompt, `encode_one` runs the T5 stand-in on
  512 token ids drawn from the prompt and returns its (1, 512, C) output;
* `StandInGuardrail`: the GuardrailProvider interface: `check_text` generates `verdict_tokens` tokens with the text
  guard over a moderation prompt of `template_tokens` + one token per word of the prompt; `check_video` runs SigLIP
  over every frame (8 at a time), `blur_faces` the face stand-in over every frame; everything passes;
* `StandInUpsampler`: the PromptUpsampler interface: `upsample` generates `new_tokens` tokens over the instruction
  + prompt and appends one word per generated token, so the guardrail's second check sees a longer prompt.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch


def prompt_ids(text: str, length: int, vocab_size: int, device) -> torch.Tensor:
    """(1, length) token ids drawn from the text (the same text gives the same ids): a tokenizer's stand-in."""
    g = torch.Generator().manual_seed(zlib.crc32(text.encode("utf-8")))
    return torch.randint(0, vocab_size, (1, max(1, int(length))), generator=g).to(device)


# ---- building the stand-ins ------------------------------------------------------------------------------------------
def _build(cls, config, device, dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def build_t5(tiny: bool, device):
    from transformers import T5Config, T5EncoderModel

    if tiny:
        from cosmos_dist.models import get_preset

        d = get_preset("tiny_text2world").crossattn_emb_channels
        cfg = T5Config(vocab_size=128, d_model=d, d_ff=64, d_kv=8, num_heads=4, num_layers=2)
    else:  # google-t5/t5-11b
        cfg = T5Config(vocab_size=32128, d_model=1024, d_ff=65536, d_kv=128, num_heads=128, num_layers=24,
                       feed_forward_proj="relu")
    return _build(T5EncoderModel, cfg, device, torch.float32)


def build_upsampler(tiny: bool, device):
    from transformers import MistralConfig, MistralForCausalLM

    if tiny:
        cfg = MistralConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256)
    else:  # Mistral-NeMo-12B (the Cosmos-UpsamplePrompt1-12B family)
        cfg = MistralConfig(vocab_size=131072, hidden_size=5120, intermediate_size=14336, num_hidden_layers=40,
                            num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=4096)
    cfg.eos_token_id = None
    return _build(MistralForCausalLM, cfg, device, torch.bfloat16 if not tiny else torch.float32)


class FaceStandIn(torch.nn.Module):
    """A small convolutional stand-in for RetinaFace-ResNet50's pass over one 704x1280 frame."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 7, stride=2, padding=3), torch.nn.ReLU(),
            torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(4 * width, 16, 1),
        )

    def forward(self, x):
        return self.net(x)


class GuardStandIn:
    """Text guard (a causal LM judging a long moderation prompt), frame classifier encoder, face detector."""

    def __init__(self, kind: str, tiny: bool, device):
        from transformers import LlamaConfig, LlamaForCausalLM

        self.kind = kind
        self.siglip = None
        if tiny:
            cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
            self.text = _build(LlamaForCausalLM, cfg, device, torch.float32)
        elif kind == "aegis":  # meta-llama/LlamaGuard-7b (+ the Aegis LoRA adapter, merged size), bf16
            cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                              num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
            self.text = _build(LlamaForCausalLM, cfg, device, torch.bfloat16)
        else:  # Qwen/Qwen3Guard-Gen-0.6B, float32 as cosmos-guardrail 0.3.2 loads it
            from transformers import Qwen3Config, Qwen3ForCausalLM

            cfg = Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                              num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=4096)
            self.text = _build(Qwen3ForCausalLM, cfg, device, torch.float32)
        self.text.config.eos_token_id = None
        self.text.generation_config.eos_token_id = None
        if kind == "aegis" or tiny:
            from transformers import SiglipConfig, SiglipModel

            if tiny:
                scfg = SiglipConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                     num_attention_heads=2, vocab_size=64),
                                    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                       num_attention_heads=2, image_size=32, patch_size=8))
            else:  # google/siglip-so400m-patch14-384
                scfg = SiglipConfig(
                    text_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                     num_attention_heads=16, vocab_size=32000, max_position_embeddings=64),
                    vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                       num_attention_heads=16, image_size=384, patch_size=14))
            self.siglip = _build(SiglipModel, scfg, device, torch.float32)
        self.face = FaceStandIn(8 if tiny else 64).to(device).eval().requires_grad_(False)
        self.image_size = 32 if tiny else 384

    def modules(self):
        return [m for m in (self.text, self.siglip, self.face) if m is not None]


def build_tokenizer(tiny: bool, device, dtype, decode_chunk: int, encode_chunk: int = 2):
    """(VideoTokenizer, description). Full size: our CV8x8x8 encoder and decoder (what the pipeline runs) with
    random weights."""
    from cosmos_dist.tokenizer import VideoTokenizer
    from cosmos_dist.tokenizer.cv8x8x8 import CV8x8x8Decoder
    from cosmos_dist.tokenizer.cv8x8x8_encoder import CV8x8x8Encoder

    how = f"{decode_chunk} latent frames per chunk" if decode_chunk else "whole clip"
    enc_how = f"{encode_chunk} latent frames' worth per chunk" if encode_chunk else "whole clip"
    if tiny:
        import tempfile

        from cosmos_dist.tokenizer import write_tiny_tokenizer

        d = Path(tempfile.mkdtemp(prefix="measure-tok-"))
        write_tiny_tokenizer(d, seed=0)
        tok = VideoTokenizer.from_dir(d, device=device, dtype=dtype, decode_chunk_frames=decode_chunk,
                                      encode_chunk_frames=encode_chunk)
        return tok, f"tiny CV8x8x8-layout TorchScript stand-in, encode {enc_how}, decode {how}"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            dec = CV8x8x8Decoder()
            enc = CV8x8x8Encoder()
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        for p in [*dec.parameters(), *enc.parameters()]:
            p.normal_(0, 0.02)
    dec = dec.eval().requires_grad_(False)
    enc = enc.eval().requires_grad_(False)
    tok = VideoTokenizer(enc, dec, torch.zeros(16, 16), torch.ones(16, 16), device=device, dtype=dtype,
                         decode_chunk_frames=decode_chunk, encode_chunk_frames=encode_chunk)
    return tok, (f"decoder: cosmos_dist CV8x8x8Decoder, {dec.num_parameters() / 1e6:.1f}M parameters, random, "
                 f"decode {how}; encoder: cosmos_dist CV8x8x8Encoder, {enc.num_parameters() / 1e6:.1f}M "
                 f"parameters, random, encode {enc_how}")


def build_dit(preset: str, device, compile_blocks: bool, fp8: bool = False):
    from cosmos_dist.models import build_dit as build, get_preset
    from cosmos_dist.models.fp8 import convert_blocks_to_fp8

    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    net = build(get_preset(preset), device=device, dtype=dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.02)
        if fp8:  # as the pipeline's load_dit does for precision=fp8: before compiling
            convert_blocks_to_fp8(net)
    if compile_blocks:
        from cosmos_dist.pipeline.plan import compile_blocks as compile_net

        compile_net(net, fp8=fp8)  # as the pipeline's load_dit does
    return net


# ---- the interfaces the pipeline calls ------------------------------------------------------------------------------
class StandInText:
    """The pipeline's TextEncoder interface over the T5 stand-in: one real forward of 512 tokens per prompt."""

    tokens = 512  # T5's padded length in the pipeline

    def __init__(self, t5, device):
        self.model, self.device = t5, torch.device(device)

    def check_prompt(self, prompt: str, allow_long: bool):
        return prompt, []  # the word and token rules need T5's tokenizer files, which a stand-in has not

    def encode_one(self, prompt: str) -> torch.Tensor:
        ids = prompt_ids(prompt, self.tokens, self.model.config.vocab_size, self.device)
        with torch.no_grad():
            out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        return out.float()  # (1, 512, C); the pipeline casts it to the DiT's dtype


class StandInGuardrail:
    """The GuardrailProvider interface over GuardStandIn's models (see the module docstring); every check passes."""

    def __init__(self, models, device, *, template_tokens: int = 768, verdict_tokens: int = 8):
        self.models, self.device = models, torch.device(device)
        self.name = f"stand-in {models.kind}"
        self.template_tokens, self.verdict_tokens = int(template_tokens), int(verdict_tokens)

    def check_text(self, prompt: str):
        from cosmos_dist.guardrails import Verdict

        text = self.models.text
        ids = prompt_ids(prompt, self.template_tokens + len(prompt.split()), text.config.vocab_size, self.device)
        with torch.no_grad():
            text.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.verdict_tokens,
                          min_new_tokens=self.verdict_tokens, do_sample=False, pad_token_id=0)
        return Verdict.passed()

    def _frames(self, frames: np.ndarray) -> torch.Tensor:
        from cosmos_dist.guardrails.base import check_frames

        return torch.from_numpy(np.ascontiguousarray(check_frames(frames))).to(self.device)

    def check_video(self, frames: np.ndarray):
        from cosmos_dist.guardrails import Verdict

        siglip = self.models.siglip
        if siglip is not None:
            x, s = self._frames(frames), self.models.image_size
            with torch.no_grad():
                for start in range(0, x.shape[0], 8):
                    chunk = x[start : start + 8].permute(0, 3, 1, 2).float() / 127.5 - 1
                    chunk = torch.nn.functional.interpolate(chunk, size=(s, s), mode="bilinear")
                    siglip.get_image_features(pixel_values=chunk)
        return Verdict.passed()

    def blur_faces(self, frames: np.ndarray) -> np.ndarray:
        x = self._frames(frames)
        with torch.no_grad():
            for i in range(x.shape[0]):
                self.models.face(x[i : i + 1].permute(0, 3, 1, 2).float() - 117.0)
        return frames  # it detects no faces

    def modules(self) -> list:
        return self.models.modules()

    def describe(self) -> dict:
        return {"provider": self.name, "note": "random-weight stand-ins of tools/measure_memory.py; not a filter",
                "face_blur": True}


class StandInUpsampler:
    """The PromptUpsampler interface over the upsampler stand-in (see the module docstring)."""

    model_dir = "(in memory: tools/measure_memory.py's random stand-in)"
    instruction_words = 9  # "Upsample the short caption to a long caption:"

    def __init__(self, model, device, *, new_tokens: int = 32):
        self.model, self.device, self.new_tokens = model, torch.device(device), int(new_tokens)

    def upsample(self, prompt: str, seed: int = 0):
        from cosmos_dist.text.upsampler import UpsampleResult

        ids = prompt_ids(prompt, self.instruction_words + len(prompt.split()), self.model.config.vocab_size, self.device)
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.new_tokens,
                                      min_new_tokens=self.new_tokens, do_sample=False, pad_token_id=0)
        words = " ".join(f"w{int(t)}" for t in out[0, ids.shape[1] :].tolist())
        return UpsampleResult(prompt=f"{prompt} {words}", original=prompt, upsampled=True)

    def modules(self) -> list:
        return [self.model]
