"""The loaded models of a pipeline, held in one `Components` object that `load_components` returns.

Loading order follows the residency level (pipeline/residency.py): the offloaded models first (into pinned CPU
memory; the TorchScript tokenizer is loaded on the run device, whose graphs may hold device constants, and moved
out at once), then the resident ones, so the device never holds an offloaded model and a resident one at load
time more than it must. T5, the guardrails and the prompt upsampler exist on the replica leader only (the leader
shares embeddings and verdicts with its replica); every rank holds the DiT and the tokenizer.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from cosmos_dist.errors import ConfigError
from cosmos_dist.pipeline.assets import AssetPaths, dit_preset
from cosmos_dist.pipeline.plan import PrecisionPlan, compile_blocks, resolve_dtype
from cosmos_dist.pipeline.residency import Residency

log = logging.getLogger("cosmos_dist")


class TextEncoder:
    """T5 with the prompt rules (word and token limits)."""

    def __init__(self, encoder):
        self.encoder = encoder

    def check_prompt(self, prompt: str, allow_long: bool):
        from cosmos_dist.text import check_prompt

        return check_prompt(prompt, self.encoder.tokenizer, allow_long=allow_long)

    def encode_one(self, prompt: str) -> torch.Tensor:
        emb, _ = self.encoder.encode([prompt])
        return emb


class Tokenizer:
    """The video tokenizer: decode a latent to uint8 frames; encode a pixel clip (Video2World)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def decode_to_uint8(self, latent: torch.Tensor) -> np.ndarray:
        from cosmos_dist.tokenizer import frames_to_uint8

        return frames_to_uint8(self.tokenizer.decode(latent)[0])

    def encode(self, clip: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.encode(clip)


@dataclass
class Components:
    net: Any  # the DiT (CosmosDiT), FP8-converted and compiled per the plan
    checkpoint_info: dict  # identity of the DiT file, for the sidecar
    tokenizer: Tokenizer
    residency: Residency
    text: Optional[TextEncoder] = None  # replica leader only
    guardrail: Any = None  # a GuardrailProvider, replica leader only, None when guardrails are off
    upsampler: Any = None  # a PromptUpsampler, replica leader only, None when off
    load_seconds: float = 0.0


# ---- optional models -----------------------------------------------------------------------------
def upsampler_enabled(cfg) -> bool:
    up = cfg.get("upsampler") if hasattr(cfg, "get") else getattr(cfg, "upsampler", None)
    return bool(up is not None and up.enabled)


def resolve_upsampler_dir(cfg) -> Path:
    p = Path(str(cfg.upsampler.model_dir)).expanduser()
    if not p.is_absolute() and not p.exists():
        p = Path(cfg.checkpoint_dir) / p
    return p


def check_upsampler(cfg) -> None:
    """A missing upsampler folder is an error before any model loads."""
    if not upsampler_enabled(cfg):
        return
    p = resolve_upsampler_dir(cfg)
    if not p.is_dir():
        raise ConfigError(
            f"upsampler.model_dir: {p} does not exist; give a local Hugging Face-format causal language model "
            "directory (absolute, or under checkpoint_dir), or upsampler.enabled=false"
        )


# ---- the three checkpoints --------------------------------------------------------------------------
def load_text_encoder(path: Path, device, dtype) -> TextEncoder:
    import transformers

    from cosmos_dist.text import T5TextEncoder

    transformers.utils.logging.disable_progress_bar()  # our own bars only; one line per run
    return TextEncoder(T5TextEncoder.from_dir(path, device=device, dtype=dtype))


def load_tokenizer(path: Path, device, dtype, *, decode_chunk_frames: int = 2, encode_chunk_frames: int = 2,
                   load_encoder: bool = False) -> Tokenizer:
    """decode_chunk_frames: latent frames per decoder chunk (precision.tokenizer_decode_chunk); encode_chunk_frames:
    latent frames' worth of pixels per encoder chunk (precision.tokenizer_encode_chunk); 0 = whole clip."""
    from cosmos_dist.tokenizer import VideoTokenizer

    return Tokenizer(VideoTokenizer.from_dir(path, device=device, dtype=dtype, load_encoder=load_encoder,
                                             decode_chunk_frames=decode_chunk_frames,
                                             encode_chunk_frames=encode_chunk_frames))


def load_dit(path: Path, cfg, plan: PrecisionPlan, load_device) -> tuple[Any, dict]:
    """The DiT on `load_device` (the CPU when offload=dit streams it), FP8-converted and compiled per the plan."""
    from cosmos_dist.checkpoint import checkpoint_identity, load_dit as load

    if plan.fp8_linear_kernel == "te" and torch.device(load_device).type != plan.device.type:
        raise ConfigError("precision.fp8_linear_kernel=te: Transformer Engine's layers are built on the GPU, but "
                          "offload=dit loads the DiT on the CPU to stream it; use "
                          "precision.fp8_linear_kernel=cublas with this offload level, or a level above dit")
    net = load(path, cfg=dit_preset(cfg), device=load_device, dtype=plan.dit_dtype)
    if plan.fp8_linear_kernel is not None:
        from cosmos_dist.models.fp8 import convert_blocks_to_fp8

        # Before compiling, so the compiled blocks see the FP8 layers.
        from cosmos_dist.models.fp8 import fp8_linear_counts

        convert_blocks_to_fp8(net, keep_high_precision=plan.fp8_high_precision_steps > 0, kernel=plan.fp8_linear_kernel)
        plan.fp8_linear_layers = fp8_linear_counts(net)
    if plan.compile:
        compile_blocks(net, fp8=plan.fp8)
    return net, checkpoint_identity(path).to_dict()


def load_components(cfg, plan: PrecisionPlan, assets: AssetPaths, runtime, *, video2world: bool) -> Components:
    """Every model of the run, placed by residency level. Video2World also loads the tokenizer's encoder."""
    import time

    from cosmos_dist.guardrails import load_provider

    t0 = time.perf_counter()
    device = plan.device
    res = Residency.from_config(cfg, device)
    leader = runtime.is_replica_leader

    guardrail = load_provider(cfg) if leader else None
    if guardrail is not None:
        res.register("guardrails", guardrail.modules())

    upsampler = None
    if leader and upsampler_enabled(cfg):
        from cosmos_dist.text.upsampler import PromptUpsampler

        up = cfg.upsampler
        upsampler = PromptUpsampler.from_dir(
            resolve_upsampler_dir(cfg), device=device, dtype=resolve_dtype(str(up.dtype), device),
            load_device=res.load_device("upsampler"), max_new_tokens=int(up.max_new_tokens),
            temperature=float(up.temperature), word_limit=int(up.word_limit),
        )
        res.register("upsampler", upsampler.modules())

    text = None
    if leader:
        text = load_text_encoder(assets.text_encoder, res.load_device("text_encoder"), plan.text_dtype)
        text.encoder.device = device  # inputs go to the run device; the weights come in for the stage
        res.register("text_encoder", [text.encoder.model])

    tokenizer = load_tokenizer(assets.tokenizer, device, plan.tokenizer_dtype, load_encoder=video2world,
                               decode_chunk_frames=int(cfg.precision.tokenizer_decode_chunk),
                               encode_chunk_frames=int(cfg.precision.tokenizer_encode_chunk))
    res.register("tokenizer", [tokenizer.tokenizer.encoder, tokenizer.tokenizer.decoder])

    net, checkpoint_info = load_dit(assets.dit, cfg, plan, res.load_device("dit"))
    res.register("dit", [net], stream_blocks=net.blocks)
    if res.level != "none":
        log.info("offload=%s: %s wait in %s CPU memory between their stages", res.level,
                 ", ".join(n for n, c in res.components.items() if c.offloaded and c.tensors) or "no model",
                 "pinned" if res.pin else "pageable")
    return Components(net=net, checkpoint_info=checkpoint_info, tokenizer=tokenizer, residency=res, text=text,
                      guardrail=guardrail, upsampler=upsampler, load_seconds=time.perf_counter() - t0)
