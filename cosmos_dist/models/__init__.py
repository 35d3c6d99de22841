"""The Cosmos-Predict1 DiT as plain nn.Modules (no process groups, no globals)."""
from cosmos_dist.models.dit import CosmosDiT, build_dit
from cosmos_dist.models.presets import PRESET_NAMES, DiTConfig, default_rope_extrapolation, get_preset

__all__ = ["CosmosDiT", "DiTConfig", "PRESET_NAMES", "build_dit", "default_rope_extrapolation", "get_preset"]
