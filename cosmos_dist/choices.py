"""Every closed list of values a configuration key accepts, defined once.

The schema (cosmos_dist/config.py), its validation messages and the modules that act on a choice
(attention kernels, context parallelism, offload levels, ...) import these tuples from here, so a new
choice is added in one place. This module imports nothing from the package and nothing heavy: any
layer may import it.
"""
from __future__ import annotations

from typing import Iterable

#: model.preset
MODEL_PRESETS = (
    "tiny_text2world", "tiny_video2world", "7b_text2world", "7b_video2world", "14b_text2world", "14b_video2world",
)
#: sampler.name: euler (the reference's inference sampler), res (RES 2ab multistep)
SAMPLERS = ("euler", "res")
#: precision.dit_dtype / tokenizer_dtype / text_encoder_dtype, upsampler.dtype (auto = bfloat16 on CUDA,
#: float32 on the CPU)
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: precision.compile, offload.pin_memory: auto decides from the device
AUTO_BOOL = ("auto", "true", "false")
#: precision.attention_kernel: the local (BF16) self-attention kernel; auto = fa3 where an FA3 build runs,
#: else sdpa (cosmos_dist/attention/local.py)
ATTENTION_KERNELS = ("auto", "sdpa", "cudnn", "flash", "efficient", "fa3")
#: precision.fp8_attention_kernel (cosmos_dist/attention/fp8.py); auto = cudnn, else fa3, else triton
FP8_ATTENTION_KERNELS = ("auto", "cudnn", "fa3", "triton", "te")
#: precision.fp8_linear_kernel (cosmos_dist/models/fp8.py); auto = cublas
FP8_LINEAR_KERNELS = ("auto", "cublas", "te")
#: parallel.cp_impl: self-attention across the context-parallel group (cosmos_dist/parallel/context_parallel.py)
CP_IMPLS = ("auto", "ulysses", "ring", "usp", "te")
#: parallel.te_comm_type: Transformer Engine's cp_comm_type when cp_impl=te
TE_COMM_TYPES = ("p2p", "a2a", "a2a+p2p", "all_gather")
#: offload.level, cumulative: each offloads its own component and those of the levels before it
#: (cosmos_dist/pipeline/residency.py)
OFFLOAD_LEVELS = ("none", "upsampler", "guardrails", "text_encoder", "tokenizer", "dit")
#: guardrail.provider
GUARDRAIL_PROVIDERS = ("cosmos", "keyword")
#: device
DEVICES = ("auto", "cpu", "cuda")
#: resize_mode: how a Video2World input is fitted to height x width (cosmos_dist/io/visual_input.py)
RESIZE_MODES = ("stretch", "crop", "pad")
#: num_input_frames: Video2World conditioning frames (an image or a video's last frame, or its last 9)
NUM_INPUT_FRAMES = (1, 9)
#: condition_replacement: what a Video2World condition frame's denoised output is replaced with
#: (cosmos_dist/sampling/condition.py); the first is the default
CONDITION_REPLACEMENTS = ("intended", "reference")
#: cache.policy: step caching (cosmos_dist/pipeline/step_cache.py); none runs every step in full
CACHE_POLICIES = ("none", "teacache", "fbcache")
#: log_level: the cosmos_dist logger's level; debug also lets library banners (megatron-core's) through
LOG_LEVELS = ("debug", "info", "warning", "error")


def one_of(values: Iterable) -> str:
    """`a, b or c`: the tail of a "choose ..." message."""
    values = [str(v) for v in values]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]
