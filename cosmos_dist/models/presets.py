"""Network configurations of the Cosmos-Predict1 DiT (spec section 3.1).

A `DiTConfig` holds every number that decides the network's shapes and arithmetic. The presets
`tiny`, `7b` and `14b` exist for Text2World and Video2World; Video2World differs only by one extra
input channel (the condition mask).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class DiTConfig:
    model_channels: int  # D
    num_blocks: int
    num_heads: int
    mlp_ratio: float = 4.0
    latent_channels: int = 16  # channels of the tokenizer latent, in and out
    video2world: bool = False  # adds the condition-mask input channel
    crossattn_emb_channels: int = 1024  # T5-11B d_model
    patch_spatial: int = 2
    patch_temporal: int = 1
    adaln_lora_dim: int = 256
    # Learnable axis tables: max_img_h/w are in pixels-of-latent / patch, i.e. 240 / 2 = 120 rows.
    max_img_h: int = 240
    max_img_w: int = 240
    max_frames: int = 128
    rope_seq_len: int = 128  # length of the `pos_embedder.seq` buffer (arange)
    # NTK extrapolation ratios of the 3D RoPE, in (t, h, w) order.
    rope_extrapolation: tuple[float, float, float] = (2.0, 1.0, 1.0)
    base_fps: float = 24.0
    eps: float = 1e-6
    name: str = "custom"

    @property
    def head_dim(self) -> int:
        return self.model_channels // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.model_channels * self.mlp_ratio)

    @property
    def patch_volume(self) -> int:
        return self.patch_temporal * self.patch_spatial * self.patch_spatial

    @property
    def in_channels(self) -> int:
        """Channels the patch embedder sees: latent, [condition mask], padding mask."""
        return self.latent_channels + (1 if self.video2world else 0) + 1

    @property
    def patch_in_features(self) -> int:
        return self.in_channels * self.patch_volume

    @property
    def patch_out_features(self) -> int:
        return self.latent_channels * self.patch_volume

    @property
    def pos_table_sizes(self) -> tuple[int, int, int]:
        """Rows of the learnable (t, h, w) tables: (max_frames / pt, max_img_h / p, max_img_w / p)."""
        return (
            self.max_frames // self.patch_temporal,
            self.max_img_h // self.patch_spatial,
            self.max_img_w // self.patch_spatial,
        )

    def validate(self) -> None:
        if self.model_channels % self.num_heads:
            raise ValueError(f"model_channels {self.model_channels} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 12:
            raise ValueError(f"head_dim {self.head_dim} must be even and at least 12 for the 3D RoPE split")

    def replace(self, **changes) -> "DiTConfig":
        return dataclasses.replace(self, **changes)


_BASE = {
    # Tiny: a few MB, same wiring, for CPU tests and the embedded default run. head_dim 32 splits
    # into RoPE (t, h, w) = (12, 10, 10) by the same rule as 128 -> (44, 42, 42).
    "tiny": DiTConfig(
        model_channels=128, num_blocks=2, num_heads=4, adaln_lora_dim=32, crossattn_emb_channels=64, name="tiny"
    ),
    "7b": DiTConfig(model_channels=4096, num_blocks=28, num_heads=32, rope_extrapolation=(2.0, 1.0, 1.0), name="7b"),
    "14b": DiTConfig(model_channels=5120, num_blocks=36, num_heads=40, rope_extrapolation=(2.0, 2.0, 2.0), name="14b"),
}

PRESET_NAMES = tuple(f"{size}_{kind}" for size in _BASE for kind in ("text2world", "video2world"))


def get_preset(name: str) -> DiTConfig:
    """`tiny_text2world`, `7b_video2world`, ... (also accepts `7b` alone for Text2World)."""
    size, _, kind = name.partition("_")
    kind = kind or "text2world"
    if size not in _BASE or kind not in ("text2world", "video2world"):
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    cfg = _BASE[size]
    return cfg.replace(video2world=kind == "video2world", name=f"{size}_{kind}")


def default_rope_extrapolation(model_channels: int) -> tuple[float, float, float]:
    """Extrapolation ratios the reference uses for a network of this width (7B-sized or 14B-sized)."""
    return (2.0, 2.0, 2.0) if model_channels >= 5120 else (2.0, 1.0, 1.0)
