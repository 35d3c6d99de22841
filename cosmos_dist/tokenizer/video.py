"""The Cosmos-Tokenize1-CV8x8x8-720p video tokenizer (spec sections 4.3 and 12).

`encoder.jit` / `decoder.jit` are TorchScript modules loaded with `torch.jit.load`, put in eval mode and cast to
the run dtype (bf16 in the reference). `mean_std.pt` holds `(mean, std)`; each is viewed as (latent_ch, -1): one
column per latent frame, per channel. The latent the DiT sees is

    z = sigma_data * (encoder(x)[0] - mean[c, t]) / std[c, t]        (sigma_data = 0.5)

and decoding inverts it. The tokenizer is causal: pixel frame 0 alone forms latent frame 0, then every 8 pixel
frames form one latent frame, so F = 1 + 8k pixel frames give 1 + k latent frames (121 -> 16).

Decoding: when `decoder.jit` holds the CV8x8x8 decoder (its state dict has that layout), its weights go into our
own implementation (cosmos_dist/tokenizer/cv8x8x8.py), which decodes `decode_chunk_frames` latent frames at a
time carrying the causal state between chunks: the same numbers as the whole clip (up to float rounding) at a
fraction of the memory (the whole 121x704x1280 clip at once peaks at ~30 GB of GPU memory). 0 or None decodes
the whole clip in one pass. Any other layout (a user's own tokenizer, the old tiny stand-in) runs as the
TorchScript module, whole clip. The load log says which path is taken.

Encoding, likewise: when `encoder.jit` holds the CV8x8x8 encoder, its weights go into our own implementation
(cosmos_dist/tokenizer/cv8x8x8_encoder.py), which encodes `encode_chunk_frames` latent frames' worth of pixel
frames at a time (1 + 8k first, then 8k) with the causal state carried between chunks: the whole clip's latent
(up to float rounding) without the whole clip's activations (the v2w peak at full offload otherwise). 0 or None
encodes the whole clip in one pass; other layouts run as the TorchScript module, whole clip.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from cosmos_dist.errors import CheckpointError, InputError
from cosmos_dist.tokenizer.cv8x8x8 import CV8x8x8Decoder
from cosmos_dist.tokenizer.cv8x8x8_encoder import CV8x8x8Encoder

log = logging.getLogger("cosmos_dist")

#: Where the tokenizer lives under `checkpoint_dir` (spec 4.1; the reference ignores --tokenizer_dir).
TOKENIZER_SUBDIR = "Cosmos-Tokenize1-CV8x8x8-720p"
SIGMA_DATA = 0.5
TEMPORAL_COMPRESSION = 8
SPATIAL_COMPRESSION = 8
LATENT_CHANNELS = 16
#: Latent frames per decoder chunk (config: precision.tokenizer_decode_chunk). 2 = 1 + 8 then 16 pixel frames.
DEFAULT_DECODE_CHUNK_FRAMES = 2
#: Latent frames' worth of pixel frames per encoder chunk (config: precision.tokenizer_encode_chunk): 2 = 17 then
#: 16 pixel frames.
DEFAULT_ENCODE_CHUNK_FRAMES = 2

_DOWNLOAD_HINT = 'See the README\'s "Download checkpoints" section.'


def tokenizer_dir(checkpoint_dir: str | os.PathLike) -> Path:
    """`{checkpoint_dir}/Cosmos-Tokenize1-CV8x8x8-720p`."""
    return Path(checkpoint_dir) / TOKENIZER_SUBDIR


def latent_num_frames(num_frames: int, temporal_compression: int = TEMPORAL_COMPRESSION) -> int:
    """Latent frames for `num_frames` pixel frames (which must be 1 + 8k): 1 + (F - 1) / 8."""
    if num_frames < 1 or (num_frames - 1) % temporal_compression != 0:
        raise InputError(
            f"the video tokenizer needs 1 + {temporal_compression}k frames (1, 9, 17, ..., 121); got {num_frames}"
        )
    return 1 + (num_frames - 1) // temporal_compression


def pixel_num_frames(latent_frames: int, temporal_compression: int = TEMPORAL_COMPRESSION) -> int:
    """Pixel frames decoded from `latent_frames` latent frames: 1 + 8 (T - 1)."""
    if latent_frames < 1:
        raise InputError(f"a latent needs at least one frame; got {latent_frames}")
    return 1 + temporal_compression * (latent_frames - 1)


def frames_to_uint8(video: torch.Tensor) -> np.ndarray:
    """Decoded video in [-1, 1] -> numpy uint8 (F, H, W, 3), as the reference does it (spec 1.2 f).

    `video` is (3, F, H, W) or (1, 3, F, H, W). `((1 + x).clamp(0, 2) / 2 * 255)` is computed in the video's own
    dtype (bf16 in the reference) and then truncated (not rounded) to uint8.
    """
    if video.dim() == 5:
        if video.shape[0] != 1:
            raise ValueError(f"frames_to_uint8 takes one video; got a batch of {video.shape[0]} (index it first)")
        video = video[0]
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a (3, F, H, W) or (1, 3, F, H, W) video, got shape {tuple(video.shape)}")
    x = (1 + video).clamp(0, 2) / 2
    x = (x.permute(1, 2, 3, 0) * 255).to(torch.uint8)
    return x.cpu().numpy()


def _load_jit(path: Path, device: torch.device, dtype: torch.dtype) -> torch.jit.ScriptModule:
    if not path.is_file():
        raise CheckpointError(f"video tokenizer file not found: {path}. {_DOWNLOAD_HINT}")
    try:
        with warnings.catch_warnings():
            # torch >= 2.10 marks TorchScript deprecated; the released tokenizer files are TorchScript archives.
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit")
            module = torch.jit.load(str(path), map_location=device)
    except Exception as err:  # TorchScript raises RuntimeError and friends for bad archives
        raise CheckpointError(f"could not load the TorchScript module {path}: {err}") from err
    module.eval()
    return module.to(dtype)


def _native(cls, jit: torch.nn.Module, path: Path, chunk_frames: int | None, role: str, chunk_unit: str) -> torch.nn.Module:
    """Our CV8x8x8 `cls` (encoder or decoder) holding the weights of `jit` (same device and dtype) when its
    state dict has that layout, else `jit` itself. Logs which one runs."""
    try:
        native = cls.from_state_dict(jit.state_dict())
    except ValueError as err:
        log.info("video %s: %s runs as TorchScript, whole clip (%s)", role, path.name, str(err).splitlines()[0])
        return jit
    how = f"streaming {chunk_frames} {chunk_unit} per chunk" if chunk_frames else "whole clip"
    log.info("video %s: %s has the CV8x8x8 layout (%.1fM parameters): own implementation, %s",
             role, path.name, native.num_parameters() / 1e6, how)
    return native


def _native_decoder(jit: torch.nn.Module, path: Path, chunk_frames: int | None) -> torch.nn.Module:
    return _native(CV8x8x8Decoder, jit, path, chunk_frames, "decoder", "latent frames")


def _native_encoder(jit: torch.nn.Module, path: Path, chunk_frames: int | None) -> torch.nn.Module:
    return _native(CV8x8x8Encoder, jit, path, chunk_frames, "encoder", "latent frames' worth of pixels")


def _load_mean_std(path: Path, latent_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"video tokenizer statistics not found: {path}. {_DOWNLOAD_HINT}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"could not read {path}: {err}") from err
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj)):
        raise CheckpointError(f"{path} must hold a tuple (mean, std) of two tensors; got {type(obj).__name__}")
    mean, std = obj
    if mean.numel() != std.numel() or mean.numel() % latent_channels != 0:
        raise CheckpointError(
            f"{path}: mean ({mean.numel()} values) and std ({std.numel()} values) must have the same size, "
            f"a multiple of {latent_channels} latent channels"
        )
    mean = mean.detach().float().reshape(latent_channels, -1)
    std = std.detach().float().reshape(latent_channels, -1)
    if not bool((std > 0).all()):
        raise CheckpointError(f"{path}: std has values <= 0")
    return mean, std


class VideoTokenizer:
    """Causal video tokenizer: `encode` pixels -> normalised latents, `decode` latents -> pixels.

    Either half may be left out (`load_encoder=False`: Text2World only decodes).
    """

    def __init__(
        self,
        encoder: torch.nn.Module | None,
        decoder: torch.nn.Module | None,
        mean: torch.Tensor,
        std: torch.Tensor,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        *,
        sigma_data: float = SIGMA_DATA,
        temporal_compression: int = TEMPORAL_COMPRESSION,
        spatial_compression: int = SPATIAL_COMPRESSION,
        max_enc_batch: int = 8,
        max_dec_batch: int = 4,
        decode_chunk_frames: int | None = DEFAULT_DECODE_CHUNK_FRAMES,
        encode_chunk_frames: int | None = DEFAULT_ENCODE_CHUNK_FRAMES,
    ):
        self.encoder = encoder
        self.decoder = decoder
        self.device = torch.device(device)
        self.dtype = dtype
        # (C, T_stats), float32 on CPU; cast per call to the run dtype, as the reference keeps them in bf16.
        self.mean = mean
        self.std = std
        self.sigma_data = float(sigma_data)
        self.temporal_compression = int(temporal_compression)
        self.spatial_compression = int(spatial_compression)
        self.max_enc_batch = max(1, int(max_enc_batch))
        self.max_dec_batch = max(1, int(max_dec_batch))
        # Used by our CV8x8x8 decoder only (a TorchScript decoder always decodes the whole clip); may be changed.
        self.decode_chunk_frames = decode_chunk_frames
        # Used by our CV8x8x8 encoder only, likewise.
        self.encode_chunk_frames = encode_chunk_frames
        self._stats_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_dir(
        cls,
        path: str | os.PathLike,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        *,
        latent_channels: int = LATENT_CHANNELS,
        load_encoder: bool = True,
        load_decoder: bool = True,
        **kwargs,
    ) -> "VideoTokenizer":
        """Load `encoder.jit`, `decoder.jit` and `mean_std.pt` from the tokenizer directory (a checkpoint directory
        holding `Cosmos-Tokenize1-CV8x8x8-720p/` is accepted too). A decoder.jit in the CV8x8x8 layout decodes
        through our own module (`decode_chunk_frames=` in kwargs, default 2), an encoder.jit in the CV8x8x8 layout
        encodes through ours (`encode_chunk_frames=`, default 2); see the module docstring."""
        p = Path(path)
        if not (p / "mean_std.pt").exists() and (p / TOKENIZER_SUBDIR).is_dir():
            p = p / TOKENIZER_SUBDIR
        if not p.is_dir():
            raise CheckpointError(
                f"video tokenizer directory not found: {p} (expected {{checkpoint_dir}}/{TOKENIZER_SUBDIR} with "
                f"encoder.jit, decoder.jit and mean_std.pt). {_DOWNLOAD_HINT}"
            )
        device = torch.device(device)
        mean, std = _load_mean_std(p / "mean_std.pt", latent_channels)
        encoder = None
        if load_encoder:
            jit = _load_jit(p / "encoder.jit", device, dtype)
            chunk = kwargs.get("encode_chunk_frames", DEFAULT_ENCODE_CHUNK_FRAMES)
            encoder = _native_encoder(jit, p / "encoder.jit", chunk)
            del jit
        decoder = None
        if load_decoder:
            jit = _load_jit(p / "decoder.jit", device, dtype)
            chunk = kwargs.get("decode_chunk_frames", DEFAULT_DECODE_CHUNK_FRAMES)
            decoder = _native_decoder(jit, p / "decoder.jit", chunk)
            del jit
        return cls(encoder, decoder, mean, std, device, dtype, **kwargs)

    # ------------------------------------------------------------------ helpers
    @property
    def latent_channels(self) -> int:
        return int(self.mean.shape[0])

    @property
    def max_latent_frames(self) -> int:
        """Latent frames covered by the statistics (16 for the real file: 121 pixel frames)."""
        return int(self.mean.shape[1])

    def latent_num_frames(self, num_frames: int) -> int:
        return latent_num_frames(num_frames, self.temporal_compression)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T, H/8, W/8) of the latent of a (3, F, H, W) clip."""
        self._check_spatial(height, width)
        t = self.latent_num_frames(num_frames)
        s = self.spatial_compression
        return (self.latent_channels, t, height // s, width // s)

    def _check_spatial(self, height: int, width: int) -> None:
        s = self.spatial_compression
        if height % s or width % s:
            raise InputError(f"video height and width must be multiples of {s}; got {height}x{width}")

    def _stats(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        if t > self.max_latent_frames:
            raise InputError(
                f"{t} latent frames ({pixel_num_frames(t, self.temporal_compression)} pixel frames) exceed what the "
                f"tokenizer statistics in mean_std.pt cover: {self.max_latent_frames} latent frames "
                f"({pixel_num_frames(self.max_latent_frames, self.temporal_compression)} pixel frames)"
            )
        hit = self._stats_cache.get(t)
        if hit is None:
            c = self.latent_channels
            mean = self.mean[:, :t].reshape(1, c, t, 1, 1).to(self.device, self.dtype)
            std = self.std[:, :t].reshape(1, c, t, 1, 1).to(self.device, self.dtype)
            hit = self._stats_cache[t] = (mean, std)
        return hit

    # ------------------------------------------------------------------ encode / decode
    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, 1+8k, H, W) in [-1, 1] -> latent (B, C, 1+k, H/8, W/8) = sigma_data * (enc(x)[0] - mean) / std."""
        if self.encoder is None:
            raise RuntimeError("this VideoTokenizer was loaded with load_encoder=False")
        if video.dim() != 5 or video.shape[1] != 3:
            raise InputError(f"expected a video tensor (B, 3, F, H, W); got shape {tuple(video.shape)}")
        b, _, f, h, w = video.shape
        c, t, hl, wl = self.latent_shape(f, h, w)
        mean, std = self._stats(t)
        x = video.to(self.device, self.dtype)
        outs = []
        for start in range(0, b, self.max_enc_batch):
            xb = x[start : start + self.max_enc_batch]
            if isinstance(self.encoder, CV8x8x8Encoder):
                out = self.encoder.encode(xb, self.encode_chunk_frames)
            else:
                out = self.encoder(xb)
            z = out[0] if isinstance(out, (tuple, list)) else out
            expect = (min(self.max_enc_batch, b - start), c, t, hl, wl)
            if tuple(z.shape) != expect:
                raise CheckpointError(
                    f"encoder.jit returned a latent of shape {tuple(z.shape)}; expected {expect} for a "
                    f"{f}x{h}x{w} clip (is this the CV8x8x8 tokenizer with {c} latent channels?)"
                )
            outs.append(z.to(self.dtype))
        z = torch.cat(outs) if len(outs) > 1 else outs[0]
        return self.sigma_data * ((z - mean) / std)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent (B, C, T, h, w) -> video (B, 3, 1+8(T-1), 8h, 8w) in about [-1, 1]:
        dec(latent / sigma_data * std + mean)."""
        if self.decoder is None:
            raise RuntimeError("this VideoTokenizer was loaded with load_decoder=False")
        if latent.dim() != 5 or latent.shape[1] != self.latent_channels:
            raise InputError(
                f"expected a latent (B, {self.latent_channels}, T, h, w); got shape {tuple(latent.shape)}"
            )
        b, _, t = latent.shape[:3]
        mean, std = self._stats(t)
        z = latent.to(self.device, self.dtype)
        z = (z / self.sigma_data) * std + mean
        outs = []
        for start in range(0, b, self.max_dec_batch):
            zb = z[start : start + self.max_dec_batch]
            if isinstance(self.decoder, CV8x8x8Decoder):
                out = self.decoder.decode(zb, self.decode_chunk_frames)
            else:
                out = self.decoder(zb)
            outs.append(out[0] if isinstance(out, (tuple, list)) else out)
        return torch.cat(outs) if len(outs) > 1 else outs[0]
