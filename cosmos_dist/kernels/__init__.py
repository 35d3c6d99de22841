"""Leaf helpers that both the attention kernels and the models use: FP8 number formats and quantisers
(`fp8_numerics`) and NVIDIA Transformer Engine's availability, backends and recipes (`te`). They import torch
and nothing of cosmos_dist, so models/ and attention/ can share them without an arrow between the two."""
