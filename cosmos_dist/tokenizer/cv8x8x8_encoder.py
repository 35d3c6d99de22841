"""The CV8x8x8 video encoder (Cosmos-Tokenize1-CV8x8x8-720p), our own implementation (spec sections 4.3, 12).

Why: `encoder.jit` encodes the whole 121-frame conditioning clip of Video2World at once, and at 704x1280 that is
the pipeline's peak at the full-offload level (38.8 GiB measured with a 7B DiT, against the model card's 27.3 GB).
The network is causal in time, like the decoder (cv8x8x8.py), so it can run over pixel time in chunks that carry,
for every causal layer, what the next chunk needs of the past: the frames each temporal convolution has not yet
consumed (for the stride-2 one of the downsampler: one frame), the keys and values of each temporal attention,
and whether the clip start (whose first frame is repeated) was already seen. The result is the whole-clip
encode's, up to floating-point summation order.

Parameter names are the original TorchScript names (`encoder.conv_in.0.conv3d.*`, `encoder.down.0.block.1.norm2
.norm.weight`, `encoder.down.0.downsample.conv2.conv3d.*`, `encoder.mid.attn_1.1.q.conv3d.*`,
`quant_conv.conv3d.*`, ...), so `torch.jit.load("encoder.jit").state_dict()` loads directly; `from_state_dict`
infers the configuration from the tensor shapes. The patcher's constant buffers are not loaded: the Haar transform
is computed from its definition.

Data flow (levels indexed by resolution, run from 0 up):

    Haar patcher (repeats the first frame p - 1 times, log2(p) levels: 3 -> 3 p^3 channels, / p in T, H, W)
    -> conv_in (1x3x3 then 3x1x1) -> down[0] ... down[n-1] (resnets [+ attention]; a downsample after every
    level but the last, doing something at the first levels only) -> mid (resnet, spatial attn, temporal attn,
    resnet) -> norm_out -> SiLU -> conv_out (1x3x3 then 3x1x1) -> quant_conv (1x1x1)

Streaming chunks are aligned to latent frames: 1 + 8k pixel frames first (latent frames 0..k), then 8k
(k latent frames each), so that every chunk boundary is a patch boundary and an even number of frames at the
stride-2 temporal downsample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cosmos_dist.tokenizer.cv8x8x8 import (
    Cache,
    CausalConv3d,
    CausalGroupNorm,
    FactorizedConv,
    Level,
    MidBlock,
    build_from_state_dict,
    read_levels,
)


@dataclass(frozen=True)
class EncoderSpec:
    """Shape of the encoder. The defaults are Cosmos-Tokenize1-CV8x8x8-720p's (42.9M parameters)."""

    in_channels: int = 3
    z_channels: int = 16
    base_channels: int = 128  # conv_in's output (the original's `channels`)
    # Output channels of down level i (channels * channels_mult[i]).
    level_channels: Tuple[int, ...] = (256, 512, 512)
    blocks_per_level: int = 2  # the original's num_res_blocks
    attn_levels: Tuple[int, ...] = ()  # levels with attention after every resnet (none at the real sizes)
    patch_size: int = 4
    spatial_compression: int = 8
    temporal_compression: int = 8

    def downsample_flags(self, level: int) -> Tuple[bool, bool]:
        """(spatial, temporal) downsampling after `level`: the first log2(compression) - log2(patch) levels do it;
        the last level has no downsampler, the others between a no-op one (no parameters)."""
        if level >= len(self.level_channels) - 1:
            return False, False
        p = int(math.log2(self.patch_size))
        return (level < int(math.log2(self.spatial_compression)) - p,
                level < int(math.log2(self.temporal_compression)) - p)

    def validate(self) -> None:
        p = self.patch_size
        if p < 1 or p & (p - 1):
            raise ValueError(f"patch size {p} is not a power of two")
        flags = [self.downsample_flags(i) for i in range(len(self.level_channels))]
        s = p * 2 ** sum(f[0] for f in flags)
        t = p * 2 ** sum(f[1] for f in flags)
        if (s, t) != (self.spatial_compression, self.temporal_compression):
            raise ValueError(
                f"{len(self.level_channels)} levels with patch size {p} give {s}x spatial / {t}x temporal "
                f"downsampling, not {self.spatial_compression}x / {self.temporal_compression}x"
            )


def _haar_level(x: Tensor) -> Tensor:
    """One level of the 3D Haar analysis: (B, g, 2T, 2H, 2W) -> (B, 8g, T, H, W), channel = band * g + c.

    Band k = 4*bt + 2*bh + bw (0 low, 1 high per axis). Per axis low = (a + b)/sqrt2, high = (a - b)/sqrt2 of
    the pair (a, b) at (2i, 2i+1); the three 1/sqrt2 and the original's extra 1/sqrt8 rescale make 1/8, so band k
    is (1/8) * sum over the 8 positions p of (-1)^popcount(p & k) * x[p] (the inverse of cv8x8x8's unpatcher).
    Each output frame reads its own 2 input frames: local in time, so chunkable at even boundaries.
    """
    b, g, t2, h2, w2 = x.shape
    t, h, w = t2 // 2, h2 // 2, w2 // 2
    idx = torch.arange(8, device=x.device)
    bits = idx.view(8, 1) & idx.view(1, 8)
    parity = (bits & 1) + ((bits >> 1) & 1) + ((bits >> 2) & 1)
    sign = ((1 - 2 * (parity % 2)).to(x.dtype)) * 0.125  # +-1/8: exact in every float format
    y = x.reshape(b, g, t, 2, h, 2, w, 2).permute(0, 3, 5, 7, 1, 2, 4, 6).reshape(b, 8, g * t * h * w)
    return torch.matmul(sign, y).reshape(b, 8 * g, t, h, w)


class HaarPatcher(nn.Module):
    """Original `Patcher3D` (haar): repeats the clip's first frame p - 1 more times (so that it alone fills the
    first patch: causal), then log2(p) analysis levels. No parameters; the original's constant buffers are not
    loaded. Streaming: only the chunk holding the clip start is padded."""

    def __init__(self, patch_size: int):
        super().__init__()
        self.levels = int(math.log2(patch_size))
        self.repeat = patch_size - 1
        self.key = ""

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        if self.repeat > 0 and (cache is None or self.key not in cache):
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.repeat, -1, -1), x], dim=2)
            if cache is not None:
                cache[self.key] = torch.zeros(0)
        for _ in range(self.levels):
            x = _haar_level(x)
        return x


def _mean_of_pairs(x: Tensor, dims: List[int]) -> Tensor:
    """Average pooling with window 2 and stride 2 along `dims` (a trailing odd element dropped, as avg_pool3d
    does), by reshaping: avg_pool3d has no bfloat16 kernel on the CPU, and the tokenizer runs in bf16."""
    shape: List[int] = []
    for d in range(x.dim()):
        n = x.shape[d]
        if d in dims:
            x = x.narrow(d, 0, n - n % 2)
            shape += [n // 2, 2]
        else:
            shape.append(n)
    reduce = [d + 1 + i for i, d in enumerate(sorted(dims))]  # the size-2 axes after the reshape
    return x.reshape(shape).mean(reduce)


class Downsample(nn.Module):
    """Original `CausalHybridDownsample3d`: spatial /2 (a stride-2 1x3x3 conv plus 2x2 average pooling, on the
    frame zero-padded by one row and column at the bottom/right), temporal /2 (the clip's first frame repeated
    once, then a stride-2 3x1x1 causal conv plus 2-frame average pooling), then a 1x1x1 conv.

    Time: N = 1 + 2m frames -> 1 + m: output 0 is frame 0 alone, output j >= 1 pools frames 2j-1, 2j (and the
    conv also reads 2j-2: the one frame its cache carries to the next chunk). A no-op level has no module."""

    def __init__(self, channels: int, spatial: bool, temporal: bool):
        super().__init__()
        self.spatial = spatial
        self.temporal = temporal
        self.conv1 = CausalConv3d(channels, channels, (1, 3, 3), 0, stride=(1, 2, 2)) if spatial else None
        self.conv2 = CausalConv3d(channels, channels, (3, 1, 1), 0, stride=(2, 1, 1)) if temporal else None
        self.conv3 = CausalConv3d(channels, channels, (1, 1, 1), 0)
        self.key = ""

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        conv1 = self.conv1
        if conv1 is not None:
            x = F.pad(x, (0, 1, 0, 1, 0, 0))
            x = conv1(x, cache).add_(_mean_of_pairs(x, [3, 4]))
        conv2 = self.conv2
        if conv2 is not None:
            if cache is None or self.key not in cache:  # this chunk starts the clip
                x = torch.cat([x[:, :, :1], x], dim=2)
                if cache is not None:
                    cache[self.key] = torch.zeros(0)
            x = conv2(x, cache).add_(_mean_of_pairs(x, [2]))
        return self.conv3(x, cache)


class DownLevel(Level):
    """An encoder level: the shared blocks, then `downsample`."""

    def __init__(self, cin: int, cout: int, blocks: int, attention: bool, spatial: bool, temporal: bool):
        super().__init__(cin, cout, blocks, attention)
        self.downsample = Downsample(cout, spatial, temporal) if (spatial or temporal) else None

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        x = self.run_blocks(x, cache)
        if self.downsample is not None:
            x = self.downsample(x, cache)
        return x


class Encoder(nn.Module):
    def __init__(self, spec: EncoderSpec):
        super().__init__()
        lc = spec.level_channels
        self.patcher3d = HaarPatcher(spec.patch_size)
        self.conv_in = FactorizedConv(spec.in_channels * spec.patch_size**3, spec.base_channels)
        levels: List[nn.Module] = []
        cin = spec.base_channels
        for i, cout in enumerate(lc):
            spatial, temporal = spec.downsample_flags(i)
            levels.append(DownLevel(cin, cout, spec.blocks_per_level, i in spec.attn_levels, spatial, temporal))
            cin = cout
        self.down = nn.ModuleList(levels)
        self.mid = MidBlock(lc[-1])
        self.norm_out = CausalGroupNorm(lc[-1])
        self.conv_out = FactorizedConv(lc[-1], spec.z_channels)

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        x = self.conv_in(self.patcher3d(x, cache), cache)
        for level in self.down:
            x = level(x, cache)
        x = self.mid(x, cache)
        return self.conv_out(F.silu(self.norm_out(x), inplace=True), cache)


class CV8x8x8Encoder(nn.Module):
    """`encoder` + `quant_conv`, as the original encoder.jit. `forward` encodes the whole clip (B, 3, 1 + 8k, H, W)
    -> (B, 16, 1 + k, H/8, W/8); `encode(x, chunk_frames)` streams over pixel time (same numbers, less memory)."""

    def __init__(self, spec: EncoderSpec = EncoderSpec()):
        super().__init__()
        spec.validate()
        self.spec = spec
        self.encoder = Encoder(spec)
        self.quant_conv = CausalConv3d(spec.z_channels, spec.z_channels, (1, 1, 1), 0)
        for name, module in self.named_modules():
            if hasattr(module, "key"):
                module.key = name
        self.temporal_factor = spec.temporal_compression
        self.spatial_factor = spec.spatial_compression

    def forward(self, x: Tensor) -> Tensor:
        return self.quant_conv(self.encoder(x, None), None)

    def _step(self, x: Tensor, cache: Dict[str, Tensor]) -> Tensor:
        return self.quant_conv(self.encoder(x, cache), cache)

    @torch.no_grad()
    def encode(self, x: Tensor, chunk_frames: Optional[int] = 2) -> Tensor:
        """(B, C, 1 + 8K, H, W) -> (B, z, 1 + K, H/8, W/8). Streams `chunk_frames` latent frames' worth of pixels
        at a time (1 + 8k pixel frames first, then 8k), carrying the causal state; None, 0 or >= K encodes the
        whole clip in one pass. H and W must be multiples of the spatial factor."""
        b, _, f, h, w = x.shape
        tf, sf = self.temporal_factor, self.spatial_factor
        if f < 1 or (f - 1) % tf or h % sf or w % sf:
            raise ValueError(f"the CV8x8x8 encoder needs 1 + {tf}k frames of multiples of {sf} pixels; got "
                             f"{f}x{h}x{w}")
        k_total = (f - 1) // tf
        if not chunk_frames or chunk_frames >= k_total:
            return self.forward(x)
        cache: Dict[str, Tensor] = {}
        out: Optional[Tensor] = None
        pos = 0
        start = 0
        while start < f:
            stop = min(f, start + tf * chunk_frames + (1 if start == 0 else 0))
            z = self._step(x[:, :, start:stop], cache)
            if out is None:  # written in place: no concatenation copy of the latent
                out = z.new_empty(z.shape[0], z.shape[1], 1 + k_total, z.shape[3], z.shape[4])
            out[:, :, pos : pos + z.shape[2]] = z
            pos += z.shape[2]
            start = stop
            del z
        assert out is not None and pos == out.shape[2], (pos, None if out is None else out.shape)
        return out

    # ------------------------------------------------------------------ loading
    @staticmethod
    def spec_from_state_dict(
        sd: Mapping[str, Tensor], *, in_channels: int = 3, spatial_compression: int = 8, temporal_compression: int = 8
    ) -> EncoderSpec:
        """Infer the shape from the original key names; ValueError when `sd` is not this layout."""
        shape, n, blocks, level_channels, attn = read_levels(sd, "encoder", "encoder.down")
        z = shape("quant_conv.conv3d.weight")[0]
        base, cin = shape("encoder.conv_in.0.conv3d.weight")[:2]
        patch = round((cin / in_channels) ** (1 / 3))
        if in_channels * patch**3 != cin:
            raise ValueError(f"conv_in takes {cin} channels: not {in_channels} x patch_size^3")
        if shape("encoder.conv_out.1.conv3d.weight")[0] != z:
            raise ValueError("conv_out does not produce quant_conv's channels")
        spec = EncoderSpec(in_channels, z, base, level_channels, blocks, attn, patch,
                           spatial_compression, temporal_compression)
        spec.validate()
        return spec

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], **spec_kwargs) -> "CV8x8x8Encoder":
        return build_from_state_dict(cls, sd, "encoder", **spec_kwargs)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
