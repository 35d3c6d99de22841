"""The CV8x8x8 video decoder (Cosmos-Tokenize1-CV8x8x8-720p), our own implementation (spec sections 4.3, 12).

Why: `decoder.jit` decodes the whole 121-frame clip at once and peaks at about 30 GB of GPU memory at 704x1280,
more than anything else in the pipeline. The network is causal in time, so it can be run over latent time in
chunks that carry, for every causal layer, what it needs of the past: the last `k - 1` input frames of each
temporal convolution, the keys and values of each temporal attention, and whether the clip start (whose first
frames are dropped) was already seen. That streaming decode is EXACT, not an approximation like spatial tiling:
it computes the same numbers as the whole-clip decode, up to floating-point summation order.

Parameter names are the original TorchScript names (`post_quant_conv.conv3d.*`, `decoder.conv_in.0.conv3d.*`,
`decoder.mid.attn_1.0.q.conv3d.*`, `decoder.up.1.upsample.conv1.conv3d.*`, `...norm1.norm.weight`, ...), so
`torch.jit.load("decoder.jit").state_dict()` loads directly; `from_state_dict` infers the configuration from the
tensor shapes. The original's constant buffers (`wavelets`, `_arange`, `patch_size_buffer` of the Haar unpatcher)
are not loaded: the inverse Haar transform is computed from its definition.

Data flow (original indexes the up levels by resolution, and runs them from the last to the first):

    post_quant_conv -> conv_in (1x3x3 then 3x1x1) -> mid (resnet, spatial attn, temporal attn, resnet)
    -> up[n-1] ... up[0] (resnets [+ attention]; a hybrid upsample after every level but level 0)
    -> norm_out -> SiLU -> conv_out (1x3x3 then 3x1x1) -> inverse Haar (patch 4, drops the first 3 frames)

The modules are TorchScript-compatible so that `tiny.py` can write a small decoder.jit in this layout.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

#: Per-call streaming state: cache key (a module's qualified name) -> the tensor that module keeps.
Cache = Optional[Dict[str, Tensor]]

#: Buffers of the original unpatcher; constants we recompute, so they are dropped before loading.
_IGNORED_BUFFERS = ("wavelets", "_arange", "patch_size_buffer")


@dataclass(frozen=True)
class DecoderSpec:
    """Shape of the decoder. The defaults are Cosmos-Tokenize1-CV8x8x8-720p's (62.7M parameters)."""

    z_channels: int = 16
    out_channels: int = 3
    # channels * channels_mult[i] of resolution level i (original index: 0 = the output-resolution level).
    level_channels: Tuple[int, ...] = (256, 512, 512)
    blocks_per_level: int = 3  # the original's num_res_blocks + 1
    attn_levels: Tuple[int, ...] = ()  # levels with attention after every resnet (none at the real sizes)
    patch_size: int = 4  # Haar levels = log2(patch_size)
    spatial_compression: int = 8
    temporal_compression: int = 8

    def upsample_flags(self, level: int) -> Tuple[bool, bool]:
        """(spatial, temporal) upsampling after `level`, as the original computes it (legacy_mode False)."""
        n = len(self.level_channels)
        if level == 0:
            return False, False
        p = int(math.log2(self.patch_size))
        t_ups = int(math.log2(self.temporal_compression)) - p
        s_ups = int(math.log2(self.spatial_compression)) - p
        r = n - 1 - level  # position in execution order
        temporal = 0 < r < t_ups + 1
        spatial = temporal or (r < s_ups and s_ups > t_ups)
        return spatial, temporal

    def validate(self) -> None:
        p = self.patch_size
        if p < 1 or p & (p - 1):
            raise ValueError(f"patch size {p} is not a power of two")
        flags = [self.upsample_flags(i) for i in range(len(self.level_channels))]
        s = p * 2 ** sum(f[0] for f in flags)
        t = p * 2 ** sum(f[1] for f in flags)
        if (s, t) != (self.spatial_compression, self.temporal_compression):
            raise ValueError(
                f"{len(self.level_channels)} levels with patch size {p} give {s}x spatial / {t}x temporal "
                f"upsampling, not {self.spatial_compression}x / {self.temporal_compression}x"
            )


def without_constant_buffers(sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """`sd` without the Haar (un)patcher's constant buffers, which we recompute; ValueError if the stored wavelet
    is not the Haar filter those computations assume (|1/sqrt2| taps)."""
    params: Dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.rsplit(".", 1)[-1] in _IGNORED_BUFFERS:
            if key.endswith("wavelets") and not torch.allclose(
                value.detach().float().cpu().abs(), torch.full_like(value.float().cpu(), 0.5**0.5)
            ):
                raise ValueError(f"{key} = {value.tolist()}: not the Haar wavelet")
            continue
        params[key] = value
    return params


def read_levels(sd: Mapping[str, Tensor], what: str, root: str):
    """The level structure of an original CV8x8x8 state dict, shared by the encoder and the decoder.

    `what` names the half in errors ("decoder"), `root` is its level prefix ("decoder.up"). Returns
    (shape, levels, resnets per level, channels per level, levels with attention), where `shape(key)`
    is the key's shape or a ValueError saying the layout is not this one."""

    def shape(key: str) -> Tuple[int, ...]:
        if key not in sd:
            raise ValueError(f"not the CV8x8x8 {what} layout: no {key}")
        return tuple(sd[key].shape)

    found: Dict[int, set] = {}
    pattern = re.compile(re.escape(root) + r"\.(\d+)\.block\.(\d+)\.")
    for key in sd:
        m = pattern.match(key)
        if m:
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not found or sorted(found) != list(range(len(found))):
        raise ValueError(f"not the CV8x8x8 {what} layout: {root.split('.')[-1]} levels {sorted(found)}")
    blocks = {len(b) for b in found.values()}
    if len(blocks) != 1:
        raise ValueError(f"not the CV8x8x8 {what} layout: resnets per level differ ({sorted(blocks)})")
    n = len(found)
    channels = tuple(shape(f"{root}.{i}.block.0.conv1.0.conv3d.weight")[0] for i in range(n))
    attn = tuple(i for i in range(n) if f"{root}.{i}.attn.0.0.q.conv3d.weight" in sd)
    return shape, n, blocks.pop(), channels, attn


def build_from_state_dict(cls, sd: Mapping[str, Tensor], what: str, **spec_kwargs):
    """`cls(spec)` for the spec read from `sd`, built on the meta device and given `sd`'s tensors, loaded
    strictly (shared by the encoder and the decoder); ValueError if the layout or any shape differs. The
    result lives where the tensors of `sd` live, in their dtype."""
    spec = cls.spec_from_state_dict(sd, **spec_kwargs)
    with torch.device("meta"):
        model = cls(spec)
    try:
        model.load_state_dict(without_constant_buffers(sd), strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"not the CV8x8x8 {what} layout: {err}") from err
    return model.eval().requires_grad_(False)


class CausalConv3d(nn.Module):
    """Conv3d that pads time on the left (causal) and space with zeros; original `CausalConv3d` (child `conv3d`).

    The left padding is `kernel_t - stride_t` copies of the clip's first frame (the original's
    `dilation * (kernel - 1) + (1 - stride)`); when streaming, a later chunk is padded instead with what the
    previous chunk's padded input left unconsumed (the frames from the start of the next window on), kept in the
    cache: for stride 1 the last `kernel_t - 1` frames; for the encoder's stride-2 3x1x1 conv the last frame.
    """

    def __init__(self, cin: int, cout: int, kernel: Tuple[int, int, int], spatial_pad: int,
                 stride: Tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        self.kernel_t = kernel[0]
        self.stride_t = stride[0]
        self.time_pad = kernel[0] - stride[0]
        # Zero padding in space is the conv's own (no padded copy of the input).
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride=stride, padding=(0, spatial_pad, spatial_pad))
        self.key = ""  # cache key, set by CV8x8x8Decoder / CV8x8x8Encoder

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        p = self.time_pad
        if p > 0:
            if cache is not None and self.key in cache:
                left = cache[self.key]
            else:
                left = x[:, :, :1].expand(-1, -1, p, -1, -1)
            x = torch.cat([left, x], dim=2)
            if cache is not None:
                # Windows start every stride_t frames; what the last full window did not reach goes to the next
                # chunk. clone: a view would keep the whole chunk alive.
                used = ((x.shape[2] - self.kernel_t) // self.stride_t + 1) * self.stride_t
                cache[self.key] = x[:, :, used:].clone()
        return self.conv3d(x)


class FactorizedConv(nn.ModuleList):
    """The original's nn.Sequential(1x3x3 conv, 3x1x1 conv): keys `.0.conv3d.*`, `.1.conv3d.*`. A ModuleList
    (not a Sequential) so that the cache can be passed along."""

    def __init__(self, cin: int, cout: int):
        super().__init__([CausalConv3d(cin, cout, (1, 3, 3), 1), CausalConv3d(cout, cout, (3, 1, 1), 0)])

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        for conv in self:
            x = conv(x, cache)
        return x


class CausalGroupNorm(nn.Module):
    """GroupNorm(1, C) of every frame on its own (statistics never mix frames: causal); original `CausalNormalize`."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(1, channels, eps=1e-6, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, h, w).transpose(1, 2)


class ResnetBlock(nn.Module):
    """Original `CausalResnetBlockFactorized3d`: norm, SiLU, factorized conv, twice, plus a (1x1x1) shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = CausalGroupNorm(cin)
        self.conv1 = FactorizedConv(cin, cout)
        self.norm2 = CausalGroupNorm(cout)
        self.conv2 = FactorizedConv(cout, cout)
        self.nin_shortcut = CausalConv3d(cin, cout, (1, 1, 1), 0) if cin != cout else None

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x), inplace=True), cache)
        h = self.conv2(F.silu(self.norm2(h), inplace=True), cache)
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x, cache)
        return h.add_(x)


class _AttentionBase(nn.Module):
    """Single-head attention with 1x1x1 projections (`norm`, `q`, `k`, `v`, `proj_out`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = CausalGroupNorm(channels)
        self.q = CausalConv3d(channels, channels, (1, 1, 1), 0)
        self.k = CausalConv3d(channels, channels, (1, 1, 1), 0)
        self.v = CausalConv3d(channels, channels, (1, 1, 1), 0)
        self.proj_out = CausalConv3d(channels, channels, (1, 1, 1), 0)
        self.key = ""


class SpatialAttention(_AttentionBase):
    """Original `CausalAttnBlock`: attention among the pixels of each frame (frames never mix)."""

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        h = self.norm(x)
        b, c, t, hh, ww = x.shape
        q = self.q(h).permute(0, 2, 3, 4, 1).reshape(b * t, 1, hh * ww, c)
        k = self.k(h).permute(0, 2, 3, 4, 1).reshape(b * t, 1, hh * ww, c)
        v = self.v(h).permute(0, 2, 3, 4, 1).reshape(b * t, 1, hh * ww, c)
        # Frames in groups, so a kernel that materialises the (HW x HW) scores stays bounded (~2^28 of them).
        step = max(1, (1 << 28) // max(1, (hh * ww) * (hh * ww)))
        o = torch.empty_like(q)
        for s in range(0, b * t, step):
            o[s : s + step] = F.scaled_dot_product_attention(q[s : s + step], k[s : s + step], v[s : s + step])
        o = o.reshape(b, t, hh, ww, c).permute(0, 4, 1, 2, 3)
        return self.proj_out(o, cache).add_(x)


class TemporalAttention(_AttentionBase):
    """Original `CausalTemporalAttnBlock`: each pixel attends to itself in the current and earlier frames.

    Streaming keeps the keys and values of all earlier frames in the cache; the causal mask is offset by them.
    """

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        h = self.norm(x)
        b, c, t, hh, ww = x.shape
        q = self.q(h).permute(0, 3, 4, 2, 1).reshape(b * hh * ww, 1, t, c)
        k = self.k(h).permute(0, 3, 4, 2, 1).reshape(b * hh * ww, 1, t, c)
        v = self.v(h).permute(0, 3, 4, 2, 1).reshape(b * hh * ww, 1, t, c)
        if cache is not None:
            kk, vk = self.key + ".k", self.key + ".v"
            if kk in cache:
                k = torch.cat([cache[kk], k], dim=2)
                v = torch.cat([cache[vk], v], dim=2)
            cache[kk] = k
            cache[vk] = v
        past = k.shape[2] - t
        mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(past)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        o = o.reshape(b, hh, ww, t, c).permute(0, 4, 3, 1, 2)
        return self.proj_out(o, cache).add_(x)


class HybridUpsample(nn.Module):
    """Original `CausalHybridUpsample3d`: temporal x2 (+ residual 3x1x1 conv), spatial x2 (+ residual 1x3x3 conv),
    then a 1x1x1 conv. Time: every frame twice, minus the first copy of the clip's first frame (T -> 2T - 1)."""

    def __init__(self, channels: int, spatial: bool, temporal: bool):
        super().__init__()
        self.spatial = spatial
        self.temporal = temporal
        # The original creates all three convs whenever it upsamples at all.
        self.conv1 = CausalConv3d(channels, channels, (3, 1, 1), 0)
        self.conv2 = CausalConv3d(channels, channels, (1, 3, 3), 1)
        self.conv3 = CausalConv3d(channels, channels, (1, 1, 1), 0)
        self.key = ""

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        if self.temporal:
            x = x.repeat_interleave(2, dim=2)
            if cache is None or self.key not in cache:  # this chunk starts the clip
                x = x[:, :, 1:]
                if cache is not None:
                    cache[self.key] = torch.zeros(0)
            x = self.conv1(x, cache).add_(x)
        if self.spatial:
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")  # = repeat_interleave x2 in H, W
            x = self.conv2(x, cache).add_(x)
        return self.conv3(x, cache)


class Level(nn.Module):
    """The part of a resolution level the encoder and decoder share: `block.{j}` resnets, each followed by
    `attn.{j}.{0,1}` (spatial, temporal) where the level has attention."""

    def __init__(self, cin: int, cout: int, blocks: int, attention: bool):
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(cin if j == 0 else cout, cout) for j in range(blocks)])
        pairs = [nn.ModuleList([SpatialAttention(cout), TemporalAttention(cout)]) for _ in range(blocks)]
        self.attn = nn.ModuleList(pairs if attention else [])

    def run_blocks(self, x: Tensor, cache: Cache = None) -> Tensor:
        n_attn = len(self.attn)
        for j, block in enumerate(self.block):
            x = block(x, cache)
            if n_attn > 0:  # TorchScript: a ModuleList is indexed by literals only, hence the search for pair j
                for i, pair in enumerate(self.attn):
                    if i == j:
                        for a in pair:
                            x = a(x, cache)
        return x


class UpLevel(Level):
    """A decoder level: the shared blocks, then `upsample`."""

    def __init__(self, cin: int, cout: int, blocks: int, attention: bool, spatial: bool, temporal: bool):
        super().__init__(cin, cout, blocks, attention)
        self.upsample = HybridUpsample(cout, spatial, temporal) if (spatial or temporal) else None

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        x = self.run_blocks(x, cache)
        if self.upsample is not None:
            x = self.upsample(x, cache)
        return x


class MidBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = nn.ModuleList([SpatialAttention(channels), TemporalAttention(channels)])
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        x = self.block_1(x, cache)
        for a in self.attn_1:
            x = a(x, cache)
        return self.block_2(x, cache)


def _inverse_haar_level(x: Tensor) -> Tensor:
    """One level of the inverse 3D Haar transform: (B, 8g, T, H, W) -> (B, g, 2T, 2H, 2W).

    Channel group k = 4*bt + 2*bh + bw holds band bt/bh/bw (0 low, 1 high) in time/height/width. Per axis the
    inverse orthonormal Haar step is even = (L + H)/sqrt2, odd = (L - H)/sqrt2; the three 1/sqrt2 cancel the
    patcher's 1/sqrt8 rescale, so output position p = (pt, ph, pw) is the sum of the 8 bands with sign
    (-1)^popcount(p & k). Each input frame maps to 2 output frames of its own: local in time, so chunkable.
    """
    b, c, t, h, w = x.shape
    g = c // 8
    idx = torch.arange(8, device=x.device)
    bits = idx.view(8, 1) & idx.view(1, 8)
    parity = (bits & 1) + ((bits >> 1) & 1) + ((bits >> 2) & 1)
    sign = (1 - 2 * (parity % 2)).to(x.dtype)
    y = torch.matmul(sign, x.reshape(b, 8, g * t * h * w))
    y = y.reshape(b, 2, 2, 2, g, t, h, w).permute(0, 4, 5, 1, 6, 2, 7, 3)
    return y.reshape(b, g, 2 * t, 2 * h, 2 * w)


class HaarUnpatcher(nn.Module):
    """Original `UnPatcher3D` (haar): log2(p) inverse levels, then drops the first p - 1 frames of the clip
    (the patcher's causal padding). Holds no parameters; the original's constant buffers are not loaded."""

    def __init__(self, patch_size: int):
        super().__init__()
        self.levels = int(math.log2(patch_size))
        self.drop = patch_size - 1
        self.key = ""

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        for _ in range(self.levels):
            x = _inverse_haar_level(x)
        if cache is None or self.key not in cache:
            x = x[:, :, self.drop :]
            if cache is not None:
                cache[self.key] = torch.zeros(0)
        return x


class Decoder(nn.Module):
    def __init__(self, spec: DecoderSpec):
        super().__init__()
        lc = spec.level_channels
        block_in = lc[-1]
        self.conv_in = FactorizedConv(spec.z_channels, block_in)
        self.mid = MidBlock(block_in)
        levels: List[nn.Module] = []
        cin = block_in
        for i in reversed(range(len(lc))):
            spatial, temporal = spec.upsample_flags(i)
            levels.insert(0, UpLevel(cin, lc[i], spec.blocks_per_level, i in spec.attn_levels, spatial, temporal))
            cin = lc[i]
        self.up = nn.ModuleList(levels)  # index = resolution level, as the original
        self.norm_out = CausalGroupNorm(lc[0])
        self.conv_out = FactorizedConv(lc[0], spec.out_channels * spec.patch_size**3)
        self.unpatcher3d = HaarUnpatcher(spec.patch_size)

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        x = self.conv_in(x, cache)
        x = self.mid(x, cache)
        # Levels run from the last to the first. TorchScript indexes a ModuleList only by literals and iterates it
        # in index order only, hence one pass per level picking the level due.
        n = len(self.up)
        for step in range(n):
            for i, level in enumerate(self.up):
                if i == n - 1 - step:
                    x = level(x, cache)
        x = self.conv_out(F.silu(self.norm_out(x), inplace=True), cache)
        return self.unpatcher3d(x, cache)


class CV8x8x8Decoder(nn.Module):
    """`post_quant_conv` + `decoder`, as the original decoder.jit. `forward` decodes the whole clip;
    `decode(z, chunk_frames)` streams over latent time (same numbers, far less memory)."""

    def __init__(self, spec: DecoderSpec = DecoderSpec()):
        super().__init__()
        spec.validate()
        self.spec = spec
        self.post_quant_conv = CausalConv3d(spec.z_channels, spec.z_channels, (1, 1, 1), 0)
        self.decoder = Decoder(spec)
        for name, module in self.named_modules():
            if hasattr(module, "key"):
                module.key = name
        self.temporal_factor = spec.temporal_compression
        self.spatial_factor = spec.spatial_compression

    def forward(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z, None), None)

    def _step(self, z: Tensor, cache: Dict[str, Tensor]) -> Tensor:
        return self.decoder(self.post_quant_conv(z, cache), cache)

    @torch.no_grad()
    def decode(self, z: Tensor, chunk_frames: Optional[int] = 2) -> Tensor:
        """(B, C, T, h, w) -> (B, 3, 1 + 8(T - 1), 8h, 8w). `chunk_frames` latent frames at a time carrying the
        causal state between chunks; None, 0 or >= T decodes the whole clip in one pass."""
        t = z.shape[2]
        if not chunk_frames or chunk_frames >= t:
            return self.forward(z)
        cache: Dict[str, Tensor] = {}
        out: Optional[Tensor] = None
        pos = 0
        for s in range(0, t, chunk_frames):
            y = self._step(z[:, :, s : s + chunk_frames], cache)
            if out is None:  # written in place: no concatenation copy of the whole video
                frames = 1 + self.temporal_factor * (t - 1)
                out = y.new_empty(y.shape[0], y.shape[1], frames, y.shape[3], y.shape[4])
            out[:, :, pos : pos + y.shape[2]] = y
            pos += y.shape[2]
            del y
        assert out is not None and pos == out.shape[2], (pos, None if out is None else out.shape)
        return out

    # ------------------------------------------------------------------ loading
    @staticmethod
    def spec_from_state_dict(
        sd: Mapping[str, Tensor], *, out_channels: int = 3, spatial_compression: int = 8, temporal_compression: int = 8
    ) -> DecoderSpec:
        """Infer the shape from the original key names; ValueError when `sd` is not this layout."""
        shape, n, blocks, level_channels, attn = read_levels(sd, "decoder", "decoder.up")
        z = shape("post_quant_conv.conv3d.weight")[0]
        out_total = shape("decoder.conv_out.1.conv3d.weight")[0]
        patch = round((out_total / out_channels) ** (1 / 3))
        if out_channels * patch**3 != out_total:
            raise ValueError(f"conv_out has {out_total} channels: not {out_channels} x patch_size^3")
        spec = DecoderSpec(z, out_channels, level_channels, blocks, attn, patch,
                           spatial_compression, temporal_compression)
        spec.validate()
        if shape("decoder.conv_in.0.conv3d.weight")[:2] != (level_channels[-1], z):
            raise ValueError("conv_in does not map the latent channels to the last level's channels")
        return spec

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], **spec_kwargs) -> "CV8x8x8Decoder":
        return build_from_state_dict(cls, sd, "decoder", **spec_kwargs)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
