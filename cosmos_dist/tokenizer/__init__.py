"""Cosmos-Tokenize1-CV8x8x8-720p: TorchScript loading and latent normalisation."""
from cosmos_dist.tokenizer.tiny import write_tiny_tokenizer
from cosmos_dist.tokenizer.video import (
    LATENT_CHANNELS,
    SIGMA_DATA,
    TOKENIZER_SUBDIR,
    VideoTokenizer,
    frames_to_uint8,
    latent_num_frames,
    pixel_num_frames,
    tokenizer_dir,
)

__all__ = [
    "LATENT_CHANNELS",
    "SIGMA_DATA",
    "TOKENIZER_SUBDIR",
    "VideoTokenizer",
    "frames_to_uint8",
    "latent_num_frames",
    "pixel_num_frames",
    "tokenizer_dir",
    "write_tiny_tokenizer",
]
