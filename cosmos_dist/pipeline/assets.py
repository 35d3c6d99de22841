"""Where a run's model files are, and the tiny random stand-ins created on first use.

Real files follow the reference layout (spec 4.1):
  {checkpoint_dir}/Cosmos-Predict1-7B-Text2World/model.pt
  {checkpoint_dir}/Cosmos-Tokenize1-CV8x8x8-720p/{encoder.jit, decoder.jit, mean_std.pt}
  {checkpoint_dir}/google-t5/t5-11b/   (Hugging Face layout)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cosmos_dist.errors import CheckpointError

log = logging.getLogger("cosmos_dist")

DOWNLOAD_HINT = "see the README's 'Download checkpoints' section (cosmos-dist download)"
RANDOM_WEIGHTS_BANNER = (
    "RANDOM WEIGHTS: model {preset} uses tiny random-weight stand-ins created under {root}. "
    "The video shows noise-like patterns, not a world model's output; for real videos use "
    "model=7b_text2world with the downloaded checkpoints."
)


@dataclass
class AssetPaths:
    dit: Path  # model.pt or model.safetensors
    tokenizer: Path  # directory
    text_encoder: Path  # directory
    random_weights: bool


def find_dit_file(dit_dir: Path) -> Path | None:
    for name in ("model.pt", "model.safetensors"):
        if (dit_dir / name).is_file():
            return dit_dir / name
    return None


def resolve_assets(cfg, announce: bool = True) -> AssetPaths:
    root = Path(cfg.checkpoint_dir)
    m = cfg.model
    dit_dir, tok_dir, t5_dir = root / m.dit_dir, root / m.tokenizer_dir, root / m.text_encoder_dir
    if m.random_weights:
        ensure_tiny_assets(m.preset, dit_dir, tok_dir, t5_dir)
        if announce:
            log.warning(RANDOM_WEIGHTS_BANNER.format(preset=m.preset, root=dit_dir.parent))
    dit = find_dit_file(dit_dir)
    if dit is None:
        raise CheckpointError(
            f"model={m.preset}: no checkpoint at {dit_dir / 'model.pt'} (or model.safetensors); "
            f"set checkpoint_dir=... to the folder holding {m.dit_dir}/, or {DOWNLOAD_HINT}"
        )
    for what, path, must in (
        ("tokenizer", tok_dir, ("encoder.jit", "decoder.jit", "mean_std.pt")),
        ("text encoder", t5_dir, ("config.json",)),
    ):
        missing = [name for name in must if not (path / name).is_file()]
        if missing:
            raise CheckpointError(
                f"{what}: {', '.join(str(path / n) for n in missing)} not found; "
                f"set checkpoint_dir=... to the folder holding {path.relative_to(root)}/, or {DOWNLOAD_HINT}"
            )
    return AssetPaths(dit=dit, tokenizer=tok_dir, text_encoder=t5_dir, random_weights=m.random_weights)


def ensure_tiny_assets(preset: str, dit_dir: Path, tok_dir: Path, t5_dir: Path) -> None:
    """Write the tiny random DiT, tokenizer and T5 in the real layout where missing.

    Each is written to a temporary folder and renamed, so two processes starting at once (torchrun)
    never read a half-written file: the loser of the rename race simply uses the winner's files.
    """
    if not preset.startswith("tiny"):
        raise CheckpointError(f"model.random_weights: only tiny presets have random stand-ins, not {preset}")
    from cosmos_dist.checkpoint import write_random_checkpoint
    from cosmos_dist.models import get_preset
    from cosmos_dist.text import write_tiny_t5
    from cosmos_dist.tokenizer import write_tiny_tokenizer

    dit_cfg = get_preset(preset)
    d_model = dit_cfg.crossattn_emb_channels
    if find_dit_file(dit_dir) is None:
        _atomic_dir(dit_dir, lambda tmp: write_random_checkpoint(tmp / "model.pt", dit_cfg, seed=0))
    if not (tok_dir / "decoder.jit").is_file():
        _atomic_dir(tok_dir, lambda tmp: write_tiny_tokenizer(tmp, seed=0))
    if not (t5_dir / "config.json").is_file():
        _atomic_dir(t5_dir, lambda tmp: write_tiny_t5(tmp, d_model=d_model, seed=0))


def _atomic_dir(final: Path, write) -> None:
    import os
    import shutil
    import tempfile

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        write(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():  # a real failure, not a lost race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def dit_preset(cfg):
    """The DiT's architecture for this run: the model's preset, with model.rope_extrapolation when given."""
    from cosmos_dist.models import get_preset

    preset = get_preset(cfg.model.preset)
    if cfg.model.rope_extrapolation is not None:
        preset = preset.replace(rope_extrapolation=tuple(float(v) for v in cfg.model.rope_extrapolation))
    return preset


def check_dit_file(path: Path, cfg) -> None:
    """A checkpoint of the wrong variant is refused from its index, before T5 (11B) loads."""
    from cosmos_dist.checkpoint import check_checkpoint

    check_checkpoint(path, dit_preset(cfg))
