"""Deterministic per-sample noise (spec 2.5, pitfall 9).

The reference draws its initial noise from the global RNG after an arbitrary amount of other
consumption (model init, conditioner dropout), so the same seed gives different videos depending
on batch position and offload settings. Here every draw comes from a fresh CPU torch.Generator
whose seed is a hash of (base seed, sample id[, stream name]):

* a sample's noise depends only on those values: not on batch order, rank count, earlier samples,
  torch.manual_seed or anything else drawn before it;
* every rank of a context-parallel group can regenerate the identical full tensor and keep its
  own slice, with no broadcast;
* different streams of one sample ("augment" for the Video2World condition-frame noise, ...) use
  different generators, so they never share draws with each other or with the initial noise.

Noise is always drawn on the CPU in float32 (CUDA generators give different numbers on different
GPU models and library versions); callers move it to their device.
"""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import torch

from .edm import SIGMA_MAX, init_noise_sigma

_SEED_MASK = (1 << 63) - 1  # torch.Generator takes any 64-bit seed; 63 bits stay a positive int64

# Domain tags keep the initial-noise seed and the stream seeds in disjoint hash inputs.
_INITIAL_DOMAIN = b"cosmos_dist/initial-noise/v1"
_STREAM_DOMAIN = b"cosmos_dist/noise-stream/v1"

AUGMENT_STREAM = "augment"  # Video2World condition-frame augmentation noise


def _check_seed_args(base_seed: int, sample_id: str) -> None:
    if isinstance(base_seed, bool) or not isinstance(base_seed, int):
        raise TypeError(f"base_seed must be an int, got {type(base_seed).__name__}")
    if not isinstance(sample_id, str):
        raise TypeError(f"sample_id must be a str, got {type(sample_id).__name__}")


def _hash_seed(domain: bytes, *fields: str) -> int:
    # Each field is length-prefixed so that no two different tuples give the same byte string
    # (("a", "b:c") vs ("a:b", "c")), whatever characters a sample id contains.
    h = hashlib.sha256(domain)
    for field in fields:
        data = field.encode("utf-8")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return int.from_bytes(h.digest()[:8], "big") & _SEED_MASK


def sample_seed(base_seed: int, sample_id: str) -> int:
    """The stable 63-bit seed of a sample's initial noise, from sha256 of (base_seed, sample_id).

    Same inputs give the same seed in every process, Python version and platform (unlike hash()).
    """
    _check_seed_args(base_seed, sample_id)
    return _hash_seed(_INITIAL_DOMAIN, str(base_seed), sample_id)


def stream_seed(base_seed: int, sample_id: str, stream: str) -> int:
    """The stable 63-bit seed of a named extra noise stream of a sample (see fixed_noise)."""
    _check_seed_args(base_seed, sample_id)
    if not isinstance(stream, str) or not stream:
        raise ValueError(f"stream must be a non-empty str, got {stream!r}")
    return _hash_seed(_STREAM_DOMAIN, str(base_seed), sample_id, stream)


def _randn(shape: Sequence[int], seed: int) -> torch.Tensor:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device="cpu")


def initial_noise(
    shape: Sequence[int],
    base_seed: int,
    sample_id: str,
    sigma_max: float = SIGMA_MAX,
    *,
    seed: Optional[int] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """x at sigma_max: float32 CPU standard normal noise times `scale`.

    scale: None gives the Euler sampler's sqrt(sigma_max^2 + 1); RES uses sigma_max itself, so
    prefer SamplerSettings.initial_noise, which picks the scale of its sampler.
    The generator is seeded with sample_seed(base_seed, sample_id); pass `seed` to use an already
    derived seed instead (e.g. one read back from a sidecar), in which case base_seed and
    sample_id are ignored.
    """
    if seed is None:
        seed = sample_seed(base_seed, sample_id)
    return _randn(shape, seed) * (init_noise_sigma(sigma_max) if scale is None else float(scale))


def fixed_noise(shape: Sequence[int], base_seed: int, sample_id: str, stream: str) -> torch.Tensor:
    """Unscaled float32 CPU standard normal noise of one named per-sample stream.

    Video2World draws its condition-frame augmentation noise with stream "augment" once per
    sample and reuses it at every step (the reference regenerates an identical tensor each step).
    """
    return _randn(shape, stream_seed(base_seed, sample_id, stream))
