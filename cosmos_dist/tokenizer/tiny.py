"""A tiny random causal video autoencoder, saved in the layout of Cosmos-Tokenize1-CV8x8x8-720p.

Files: TorchScript `encoder.jit` returning a tuple whose [0] is the latent (the original's contract),
`decoder.jit`, and `mean_std.pt` holding `(mean, std)` with 16 channels x 16 latent frames.

The encoder is, by default (`encoder_layout="cv8x8x8"`), the real CV8x8x8 encoder architecture at channels 4/8
(cosmos_dist/tokenizer/cv8x8x8_encoder.py, scripted, original key names), so the tokenizer loads it as our own
module and the Video2World tests run the streaming encode; `encoder_layout="simple"` writes the small stand-in
below, NOT the real network, which the tokenizer can only run as TorchScript (the fallback path).

The decoder is, by default (`decoder_layout="cv8x8x8"`), the real CV8x8x8 architecture at channels 4/8
(cosmos_dist/tokenizer/cv8x8x8.py, scripted, original key names), so the tokenizer loads it as our own module and
the pipeline tests run the streaming decode; `decoder_layout="simple"` writes the small stand-in below instead,
which the tokenizer can only run as TorchScript (the fallback path for other layouts).

Causality of the simple stand-ins: every temporal convolution pads time on the left by repeating the first frame; the first pixel frame
is repeated 7 times before 8-frame groups are folded into channels, so latent frame 0 sees pixel frame 0 only and
latent frame t >= 1 sees pixel frames <= 8t. 8x8 spatial compression folds 8x8 pixel blocks into channels.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Tuple

import torch
from torch import nn
from torch.nn import functional as F

from cosmos_dist.tokenizer.cv8x8x8_encoder import CV8x8x8Encoder, EncoderSpec


class CausalConv3d(nn.Module):
    """Conv3d with 'same' zero padding in space and first-frame replicate padding in time (causal)."""

    def __init__(self, cin: int, cout: int, kernel_t: int, kernel_s: int):
        super().__init__()
        self.pad_t = kernel_t - 1
        self.conv = nn.Conv3d(cin, cout, (kernel_t, kernel_s, kernel_s), padding=(0, kernel_s // 2, kernel_s // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_t > 0:
            x = torch.cat([x[:, :, :1].repeat(1, 1, self.pad_t, 1, 1), x], dim=2)
        return self.conv(x)


class TinyCausalEncoder(nn.Module):
    def __init__(self, latent_channels: int = 16, hidden: int = 4, width: int = 16, t: int = 8, s: int = 8):
        super().__init__()
        self.t = t
        self.s = s
        self.hidden = hidden
        self.conv_in = CausalConv3d(3, hidden, 3, 3)
        self.proj = nn.Conv3d(hidden * t * s * s, width, 1)
        self.mix = CausalConv3d(width, width, 2, 1)
        self.conv_out = nn.Conv3d(width, latent_channels, 1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        t, s = self.t, self.s
        h = self.conv_in(x)
        b, c, f, hh, ww = h.shape
        h = torch.cat([h[:, :, :1].repeat(1, 1, t - 1, 1, 1), h], dim=2)  # 1 + 8k -> 8(k + 1)
        n = (f + t - 1) // t
        h = h.reshape(b, c, n, t, hh // s, s, ww // s, s)
        h = h.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, c * t * s * s, n, hh // s, ww // s)
        h = F.silu(self.proj(h))
        h = h + F.silu(self.mix(h))
        z = self.conv_out(h)
        return z, z


class TinyCausalDecoder(nn.Module):
    def __init__(self, latent_channels: int = 16, hidden: int = 4, width: int = 16, t: int = 8, s: int = 8):
        super().__init__()
        self.t = t
        self.s = s
        self.hidden = hidden
        self.mix = CausalConv3d(latent_channels, width, 2, 1)
        self.proj = nn.Conv3d(width, hidden * t * s * s, 1)
        self.conv_out = CausalConv3d(hidden, 3, 3, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        t, s, c = self.t, self.s, self.hidden
        h = self.proj(F.silu(self.mix(z)))
        b, _, n, hh, ww = h.shape
        h = h.reshape(b, c, t, s, s, n, hh, ww)
        h = h.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, c, n * t, hh * s, ww * s)
        h = h[:, :, t - 1 :]  # 8(k + 1) -> 1 + 8k: drop the causal padding frames
        return self.conv_out(F.silu(h))


#: Channels of the tiny CV8x8x8-layout decoder per resolution level (the real one: 256, 512, 512). Its conv_out
#: alone has 3 x 4^3 = 192 channels, so the file is ~0.7 MB whatever these are.
TINY_CV8X8X8_CHANNELS = (4, 8, 8)


def tiny_cv8x8x8_decoder(latent_channels: int = 16, seed: int = 0) -> nn.Module:
    """The real CV8x8x8 decoder structure with tiny channels and random weights (seeded)."""
    from cosmos_dist.tokenizer.cv8x8x8 import CV8x8x8Decoder, DecoderSpec

    g = torch.Generator().manual_seed(seed)
    dec = CV8x8x8Decoder(DecoderSpec(z_channels=latent_channels, level_channels=TINY_CV8X8X8_CHANNELS)).eval()
    with torch.no_grad():
        for name, p in dec.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:  # fan-in scaled so the decoded pixels stay within a few units (not all clamped to -1 or 1)
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / fan_in**0.5 if p.dim() > 1 else 0.02))
    return dec


#: Channels of the tiny CV8x8x8-layout encoder: conv_in's output, then per level (the real one: 128; 256, 512, 512).
TINY_CV8X8X8_ENCODER_CHANNELS = (4, (4, 8, 8))


class _TupleOutputEncoder(CV8x8x8Encoder):
    """Our encoder returning `(latent, latent)` from `forward`: the original encoder.jit returns a tuple whose [0]
    is the latent (spec 4.3), and the tokenizer's TorchScript path relies on that. Same parameter names."""

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        z = self.quant_conv(self.encoder(x, None), None)
        return z, z


def tiny_cv8x8x8_encoder(latent_channels: int = 16, seed: int = 0, tuple_output: bool = False) -> nn.Module:
    """The real CV8x8x8 encoder structure with tiny channels and random weights (seeded)."""
    base, levels = TINY_CV8X8X8_ENCODER_CHANNELS
    cls = _TupleOutputEncoder if tuple_output else CV8x8x8Encoder
    g = torch.Generator().manual_seed(seed + 2)
    enc = cls(EncoderSpec(z_channels=latent_channels, base_channels=base, level_channels=levels)).eval()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:  # fan-in scaled: latents of order one
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / fan_in**0.5 if p.dim() > 1 else 0.02))
    return enc


# Scripting the CV8x8x8 module takes ~0.5 s; the tiny files are deterministic in their arguments, so a process
# that writes many tiny checkpoints (the test suite) scripts each variant once.
_SCRIPTED: dict[tuple, bytes] = {}


def _scripted_bytes(key: tuple, build) -> bytes:
    if key not in _SCRIPTED:
        buf = io.BytesIO()
        with warnings.catch_warnings(), _sorted_script_sets():
            # TorchScript is deprecated in recent torch, but it is the format of the released tokenizer files.
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit")
            torch.jit.save(torch.jit.script(build()), buf)
        _SCRIPTED[key] = stable_torchscript_bytes(without_debug_info(buf.getvalue()))
    return _SCRIPTED[key]


class _SortedIterSet(set):
    """A set that iterates in sorted order (by str): the scripter's constant order then no longer depends on
    the process's string-hash seed (PYTHONHASHSEED)."""

    def __iter__(self):
        return iter(sorted(set.__iter__(self), key=str))


class _sorted_script_sets:
    """While scripting, torch.jit._recursive builds `set`s of constant names and emits them in iteration order."""

    def __enter__(self):
        import torch.jit._recursive as rec

        self._mod, self._had = rec, "set" in vars(rec)
        self._old = vars(rec).get("set")
        rec.set = _SortedIterSet
        return self

    def __exit__(self, *exc):
        if self._had:
            self._mod.set = self._old
        else:
            del self._mod.set


def without_debug_info(data: bytes) -> bytes:
    """A TorchScript zip without its `.debug_pkl` entries. Those hold the source lines of each scripted method with
    the absolute path of the file they came from, so the same module saved from two checkouts differed; loading
    does not need them (an error inside the module then names no Python source line). The other entries keep
    their order and content, stored uncompressed with a fixed timestamp."""
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if info.filename.endswith(".debug_pkl"):
                continue
            dst.writestr(zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0)), src.read(info))
    return out.getvalue()


def stable_torchscript_bytes(data: bytes) -> bytes:
    """A TorchScript zip with its random `.data/serialization_id` replaced by one derived from the rest of the
    archive, so the same module gives the same bytes on every run (the id only tags the save; loading ignores it).
    The entry is stored uncompressed at a fixed length: its bytes and the two CRC fields are patched in place."""
    import hashlib
    import struct
    import zipfile
    import zlib

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = next((i for i in zf.infolist() if i.filename.endswith(".data/serialization_id")), None)
        if info is None or info.compress_type != zipfile.ZIP_STORED:
            return data
        old_id = zf.read(info)
    buf = bytearray(data)
    name = info.filename.encode("utf-8")
    # local header: signature, ..., crc at +14, name length at +26, extra length at +28, then name, extra, data
    off = info.header_offset
    name_len, extra_len = struct.unpack_from("<HH", buf, off + 26)
    start = off + 30 + name_len + extra_len
    if bytes(buf[start:start + len(old_id)]) != old_id:
        return data
    central, cd = -1, buf.find(b"PK\x01\x02")  # the central directory entry of the same name: crc at +16
    while cd >= 0:
        n_len = struct.unpack_from("<H", buf, cd + 28)[0]
        if buf[cd + 46:cd + 46 + n_len] == name:
            central = cd
            break
        cd = buf.find(b"PK\x01\x02", cd + 4)
    if central < 0:
        return data
    # the new id: a hash of the archive without the id and its two CRC fields (so applying this twice is a no-op)
    for crc_at in (off + 14, central + 16):
        struct.pack_into("<I", buf, crc_at, 0)
    buf[start:start + len(old_id)] = b"0" * len(old_id)
    new_id = str(int(hashlib.sha256(bytes(buf)).hexdigest(), 16))[: len(old_id)].rjust(len(old_id), "0").encode()
    buf[start:start + len(old_id)] = new_id
    crc = zlib.crc32(new_id) & 0xFFFFFFFF
    for crc_at in (off + 14, central + 16):
        struct.pack_into("<I", buf, crc_at, crc)
    return bytes(buf)


def write_tiny_tokenizer(
    path: str | os.PathLike,
    latent_channels: int = 16,
    seed: int = 0,
    *,
    latent_frames: int = 16,
    hidden: int = 4,
    width: int = 16,
    decoder_layout: str = "cv8x8x8",
    encoder_layout: str = "cv8x8x8",
) -> Path:
    """Write `encoder.jit`, `decoder.jit` and `mean_std.pt` of a tiny random causal tokenizer into `path`.

    decoder_layout, encoder_layout: "cv8x8x8" (the real architecture, tiny; see the module docstring) or
    "simple"."""
    for what, layout in (("decoder_layout", decoder_layout), ("encoder_layout", encoder_layout)):
        if layout not in ("cv8x8x8", "simple"):
            raise ValueError(f"{what} must be 'cv8x8x8' or 'simple', not {layout!r}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        enc = TinyCausalEncoder(latent_channels, hidden, width).eval()
        simple_dec = TinyCausalDecoder(latent_channels, hidden, width).eval()  # built either way: same RNG stream
        g = torch.Generator().manual_seed(seed + 1)
        n = latent_channels * latent_frames
        mean = 0.1 * torch.randn(n, generator=g)
        std = 0.5 + torch.rand(n, generator=g)
    finally:
        torch.random.set_rng_state(gen_state)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit")
        if encoder_layout == "simple":
            torch.jit.script(enc).save(str(out / "encoder.jit"))
        if decoder_layout == "simple":
            torch.jit.script(simple_dec).save(str(out / "decoder.jit"))
    if decoder_layout == "cv8x8x8":
        key = ("cv8x8x8", latent_channels, seed, TINY_CV8X8X8_CHANNELS)
        (out / "decoder.jit").write_bytes(_scripted_bytes(key, lambda: tiny_cv8x8x8_decoder(latent_channels, seed)))
    if encoder_layout == "cv8x8x8":
        key = ("cv8x8x8-encoder", latent_channels, seed, TINY_CV8X8X8_ENCODER_CHANNELS)
        (out / "encoder.jit").write_bytes(
            _scripted_bytes(key, lambda: tiny_cv8x8x8_encoder(latent_channels, seed, tuple_output=True))
        )
    torch.save((mean, std), str(out / "mean_std.pt"))
    return out
