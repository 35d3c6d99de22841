"""Loading a run's models by residency level, and the optional ones (guardrails, prompt upsampler).

Order: the offloaded models first (into pinned CPU memory; the TorchScript tokenizer is loaded on the run device,
whose graphs may hold device constants, and moved out at once), then the resident ones, so the device never holds
an offloaded model and a resident one at load time more than it must. Plain PyTorch models that are offloaded are
built on the CPU directly. Guardrails and the upsampler exist on the replica leader only.
"""
from __future__ import annotations

import logging
from pathlib import Path

from cosmos_dist.errors import ConfigError

log = logging.getLogger("cosmos_dist")


def _get(node, key, default=None):
    if node is None:
        return default
    return node.get(key, default) if hasattr(node, "get") else getattr(node, key, default)


def upsampler_enabled(cfg) -> bool:
    return bool(_get(_get(cfg, "upsampler"), "enabled", False))


def resolve_upsampler_dir(cfg) -> Path:
    p = Path(str(cfg.upsampler.model_dir)).expanduser()
    if not p.is_absolute() and not p.exists():
        p = Path(cfg.checkpoint_dir) / p
    return p


def check_upsampler(cfg) -> None:
    if not upsampler_enabled(cfg):
        return
    p = resolve_upsampler_dir(cfg)
    if not p.is_dir():
        raise ConfigError(
            f"upsampler.model_dir: {p} does not exist; give a local Hugging Face-format causal language model "
            "directory (absolute, or under checkpoint_dir), or upsampler.enabled=false"
        )


def load_with_residency(pipe, assets) -> None:
    """Sets pipe.residency, .guardrail, .upsampler, .text, .tokenizer, .net, .checkpoint_info."""
    from cosmos_dist.guardrails import load_provider
    from cosmos_dist.pipeline import stages
    from cosmos_dist.pipeline.residency import Residency

    cfg, layout, device = pipe.cfg, pipe.layout, pipe.device
    res = pipe.residency = Residency.from_config(cfg, device)
    leader = layout.is_replica_leader

    pipe.guardrail = load_provider(cfg) if leader else None
    if pipe.guardrail is not None:
        res.register("guardrails", pipe.guardrail.modules())

    pipe.upsampler = None
    if leader and upsampler_enabled(cfg):
        from cosmos_dist.text.upsampler import PromptUpsampler

        up = cfg.upsampler
        pipe.upsampler = PromptUpsampler.from_dir(
            resolve_upsampler_dir(cfg), device=device, dtype=stages.resolve_dtype(str(up.dtype), device),
            load_device=res.load_device("upsampler"), max_new_tokens=int(up.max_new_tokens),
            temperature=float(up.temperature), word_limit=int(up.word_limit),
        )
        res.register("upsampler", pipe.upsampler.modules())

    pipe.text = stages.load_text_encoder(assets.text_encoder, res.load_device("text_encoder"), pipe.text_dtype, layout)
    if pipe.text is not None:
        pipe.text.encoder.device = device  # inputs go to the run device; the weights come in for the stage
        res.register("text_encoder", [pipe.text.encoder.model])

    pipe.tokenizer = stages.load_tokenizer(assets.tokenizer, device, pipe.tokenizer_dtype, layout,
                                           decode_chunk_frames=int(cfg.precision.tokenizer_decode_chunk),
                                           encode_chunk_frames=int(cfg.precision.tokenizer_encode_chunk))
    tok = pipe.tokenizer.tokenizer
    res.register("tokenizer", [tok.encoder, tok.decoder])

    pipe.net, pipe.checkpoint_info = stages.load_dit(
        assets.dit, cfg, res.load_device("dit"), pipe.dit_dtype, compile_device=device
    )
    res.register("dit", [pipe.net], stream_blocks=pipe.net.blocks)
    if res.level != "none":
        log.info("offload=%s: %s wait in %s CPU memory between their stages", res.level,
                 ", ".join(n for n, c in res.components.items() if c.offloaded and c.tensors) or "no model",
                 "pinned" if res.pin else "pageable")
