"""Video tokenizer: tiny causal autoencoder written then loaded through the real loader."""
import shutil
import warnings

import numpy as np
import pytest
import torch

from cosmos_dist.errors import CheckpointError, InputError
from cosmos_dist.tokenizer.cv8x8x8 import CV8x8x8Decoder
from cosmos_dist.tokenizer.cv8x8x8_encoder import CV8x8x8Encoder
from cosmos_dist.tokenizer import (
    TOKENIZER_SUBDIR,
    VideoTokenizer,
    frames_to_uint8,
    latent_num_frames,
    pixel_num_frames,
    write_tiny_tokenizer,
)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return write_tiny_tokenizer(root / TOKENIZER_SUBDIR, latent_channels=16, seed=0)


@pytest.fixture(scope="module")
def tk32(tok_dir):
    return VideoTokenizer.from_dir(tok_dir, "cpu", dtype=torch.float32)


def _clip(frames, h=64, w=64, b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, frames, h, w, generator=g) * 2 - 1


def test_files_and_sizes(tok_dir):
    for name in ("encoder.jit", "decoder.jit", "mean_std.pt"):
        assert (tok_dir / name).is_file()
    total = sum((tok_dir / n).stat().st_size for n in ("encoder.jit", "decoder.jit", "mean_std.pt"))
    assert total < 1_000_000
    mean, std = torch.load(tok_dir / "mean_std.pt", weights_only=True)
    assert mean.numel() == std.numel() == 16 * 16 and bool((std > 0).all())


def test_frame_arithmetic():
    assert [latent_num_frames(f) for f in (1, 9, 17, 121)] == [1, 2, 3, 16]
    assert pixel_num_frames(16) == 121
    for bad in (0, 2, 8, 10, 120):
        with pytest.raises(InputError, match="1 \\+ 8k"):
            latent_num_frames(bad)


@pytest.mark.parametrize("frames,latent_t", [(1, 1), (9, 2), (17, 3)])
def test_shapes_round_trip(tk32, frames, latent_t):
    x = _clip(frames, b=2)
    z = tk32.encode(x)
    assert z.shape == (2, 16, latent_t, 8, 8) and z.dtype == torch.float32
    y = tk32.decode(z)
    assert y.shape == (2, 3, frames, 64, 64)
    assert torch.isfinite(y).all()


def test_bf16_default(tok_dir):
    tk = VideoTokenizer.from_dir(tok_dir, "cpu")  # reference dtype: bf16
    assert tk.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in tk.encoder.parameters())
    z = tk.encode(_clip(9))
    assert z.dtype == torch.bfloat16 and z.shape == (1, 16, 2, 8, 8)
    y = tk.decode(z)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    assert all(p.dtype == torch.bfloat16 for p in tk.decoder.parameters())


def test_cv8x8x8_layout_decodes_through_our_module_streaming(tok_dir, tk32, caplog):
    """The tiny decoder.jit has the real CV8x8x8 layout: its weights run in our module, streaming by default,
    and every chunk size gives the TorchScript module's whole-clip numbers."""
    assert isinstance(tk32.decoder, CV8x8x8Decoder) and tk32.decode_chunk_frames == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        jit = torch.jit.load(str(tok_dir / "decoder.jit")).eval()
    assert set(jit.state_dict()) == set(tk32.decoder.state_dict())  # the original key names
    lat = torch.randn(1, 16, 5, 4, 6, generator=torch.Generator().manual_seed(2))
    mean, std = tk32._stats(5)
    with torch.no_grad():
        expect = jit(lat / 0.5 * std + mean)
    for chunk in (0, 1, 2, 3):
        tk32.decode_chunk_frames = chunk
        got = tk32.decode(lat)
        assert got.shape == (1, 3, 33, 32, 48)
        assert float((got - expect).norm() / expect.norm()) <= 1e-5, chunk
    tk32.decode_chunk_frames = 2
    with caplog.at_level("INFO", logger="cosmos_dist"):
        VideoTokenizer.from_dir(tok_dir, "cpu", torch.float32, load_encoder=False, decode_chunk_frames=0)
    assert "CV8x8x8 layout" in caplog.text and "whole clip" in caplog.text


def test_cv8x8x8_layout_encodes_through_our_module_streaming(tok_dir, tk32, caplog):
    """The tiny encoder.jit has the real CV8x8x8 layout: its weights run in our module, streaming by default, and
    every chunk size gives the TorchScript module's whole-clip latent."""
    assert isinstance(tk32.encoder, CV8x8x8Encoder) and tk32.encode_chunk_frames == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        jit = torch.jit.load(str(tok_dir / "encoder.jit")).eval()
    assert set(jit.state_dict()) == set(tk32.encoder.state_dict())  # the original key names
    x = _clip(41, h=16, w=24, seed=5)
    mean, std = tk32._stats(6)
    with torch.no_grad():
        expect = 0.5 * (jit(x)[0] - mean) / std
    for chunk in (0, 1, 2, 3):
        tk32.encode_chunk_frames = chunk
        got = tk32.encode(x)
        assert got.shape == (1, 16, 6, 2, 3)
        assert float((got - expect).norm() / expect.norm()) <= 1e-5, chunk
    tk32.encode_chunk_frames = 2
    with caplog.at_level("INFO", logger="cosmos_dist"):
        VideoTokenizer.from_dir(tok_dir, "cpu", torch.float32, load_decoder=False, encode_chunk_frames=0)
    assert "video encoder: encoder.jit has the CV8x8x8 layout" in caplog.text and "whole clip" in caplog.text


def test_other_encoder_layouts_run_as_torchscript(tmp_path, caplog):
    d = write_tiny_tokenizer(tmp_path / "simple-enc", seed=0, encoder_layout="simple")
    with caplog.at_level("INFO", logger="cosmos_dist"):
        tk = VideoTokenizer.from_dir(d, "cpu", torch.float32, load_decoder=False)
    assert isinstance(tk.encoder, torch.jit.ScriptModule)
    assert "video encoder: encoder.jit runs as TorchScript, whole clip" in caplog.text
    assert tk.encode(_clip(17, h=16, w=16)).shape == (1, 16, 3, 2, 2)


def test_other_decoder_layouts_run_as_torchscript(tmp_path, caplog):
    d = write_tiny_tokenizer(tmp_path / "simple", seed=0, decoder_layout="simple")
    with caplog.at_level("INFO", logger="cosmos_dist"):
        tk = VideoTokenizer.from_dir(d, "cpu", torch.float32, load_encoder=False)
    assert isinstance(tk.decoder, torch.jit.ScriptModule)
    assert "runs as TorchScript, whole clip" in caplog.text
    assert tk.decode(torch.zeros(1, 16, 3, 2, 2)).shape == (1, 3, 17, 16, 16)


def test_normalisation_matches_hand_computation(tok_dir, tk32):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        enc = torch.jit.load(str(tok_dir / "encoder.jit")).eval()
        dec = torch.jit.load(str(tok_dir / "decoder.jit")).eval()
    mean, std = torch.load(tok_dir / "mean_std.pt", weights_only=True)
    mean = mean.view(16, -1)
    std = std.view(16, -1)
    x = _clip(17, h=32, w=48, seed=3)
    t = 3
    m = mean[:, :t].reshape(1, 16, t, 1, 1)
    s = std[:, :t].reshape(1, 16, t, 1, 1)
    with torch.no_grad():
        raw = enc(x)
        assert isinstance(raw, tuple)
        expect = 0.5 * (raw[0] - m) / s
        got = tk32.encode(x)
        torch.testing.assert_close(got, expect, rtol=1e-6, atol=1e-6)
        # Per-channel AND per-latent-frame statistics: frame 1 uses column 1, not column 0.
        assert not torch.allclose(mean[:, 0], mean[:, 1])
        lat = torch.randn(1, 16, t, 4, 6, generator=torch.Generator().manual_seed(1)) * 0.5
        torch.testing.assert_close(tk32.decode(lat), dec(lat / 0.5 * s + m), rtol=1e-6, atol=1e-6)


def test_causality(tk32):
    x = _clip(17, seed=1)
    z = tk32.encode(x)
    later = x.clone()
    later[:, :, 9:] = _clip(8, seed=2)  # frames 9..16 changed
    z2 = tk32.encode(later)
    assert torch.equal(z[:, :, :2], z2[:, :, :2])  # latent 0 (frame 0) and 1 (frames 1..8) unchanged
    assert not torch.equal(z[:, :, 2], z2[:, :, 2])

    mid = x.clone()
    mid[:, :, 1:9] = _clip(8, seed=4)  # frames 1..8 changed
    z3 = tk32.encode(mid)
    assert torch.equal(z[:, :, 0], z3[:, :, 0])  # latent 0 depends on pixel frame 0 only
    assert not torch.equal(z[:, :, 1], z3[:, :, 1])

    first = x.clone()
    first[:, :, 8] += 0.5  # frame 8 belongs to latent 1
    z4 = tk32.encode(first)
    assert torch.equal(z[:, :, 0], z4[:, :, 0]) and not torch.equal(z[:, :, 1], z4[:, :, 1])

    # The 9-frame clip's latent equals the first two latent frames of the 17-frame clip.
    assert torch.equal(tk32.encode(x[:, :, :9]), z[:, :, :2])


def test_input_errors(tk32):
    with pytest.raises(InputError, match="1 \\+ 8k"):
        tk32.encode(_clip(8))
    with pytest.raises(InputError, match="multiples of 8"):
        tk32.encode(_clip(9, h=60))
    with pytest.raises(InputError, match="\\(B, 3, F, H, W\\)"):
        tk32.encode(torch.zeros(3, 9, 64, 64))
    with pytest.raises(InputError, match="16 latent frames"):
        tk32.encode(_clip(129, h=8, w=8))  # 17 latent frames > the 16 the statistics cover
    with pytest.raises(InputError, match="16 latent frames"):
        tk32.decode(torch.zeros(1, 16, 17, 2, 2))
    with pytest.raises(InputError):
        tk32.decode(torch.zeros(1, 8, 2, 2, 2))


def test_missing_files_are_checkpoint_errors(tmp_path, tok_dir):
    with pytest.raises(CheckpointError, match="not found"):
        VideoTokenizer.from_dir(tmp_path / "none", "cpu")
    for name in ("mean_std.pt", "encoder.jit", "decoder.jit"):
        d = tmp_path / f"no-{name}"
        shutil.copytree(tok_dir, d)
        (d / name).unlink()
        with pytest.raises(CheckpointError) as err:
            VideoTokenizer.from_dir(d, "cpu")
        assert str(d / name) in str(err.value)
    # Decode-only (Text2World) does not need encoder.jit.
    tk = VideoTokenizer.from_dir(tmp_path / "no-encoder.jit", "cpu", torch.float32, load_encoder=False)
    assert tk.decode(torch.zeros(1, 16, 1, 2, 2)).shape == (1, 3, 1, 16, 16)
    with pytest.raises(RuntimeError, match="load_encoder"):
        tk.encode(_clip(1))
    # A checkpoint directory holding the tokenizer sub-directory is accepted.
    assert VideoTokenizer.from_dir(tok_dir.parent, "cpu").max_latent_frames == 16


def test_frames_to_uint8_known_values():
    vals = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0, -0.999])
    video = vals.view(1, 1, 7, 1, 1).expand(1, 3, 7, 1, 1).clone()
    video[0, 1] = -1.0  # green channel
    out = frames_to_uint8(video)
    assert out.dtype == np.uint8 and out.shape == (7, 1, 1, 3)
    # -1 -> 0, 1 -> 255, 0 -> 127.5 truncated to 127, 0.5 -> 191.25 -> 191, clamps beyond [-1, 1].
    assert out[:, 0, 0, 0].tolist() == [0, 0, 127, 191, 255, 255, 0]
    assert out[:, 0, 0, 1].tolist() == [0] * 7  # channel order: (R, G, B) last
    assert frames_to_uint8(video[0]).tolist() == out.tolist()  # (3, F, H, W) works too


def test_frames_to_uint8_computes_in_bf16():
    x = torch.linspace(-1, 1, 2001)
    expect_bf16 = ((1 + x.bfloat16()).clamp(0, 2) / 2 * 255).to(torch.uint8)
    expect_f32 = ((1 + x).clamp(0, 2) / 2 * 255).to(torch.uint8)
    video = x.bfloat16().view(1, 1, -1, 1, 1).expand(1, 3, -1, 1, 1)
    got = torch.from_numpy(frames_to_uint8(video)[:, 0, 0, 0])
    assert torch.equal(got, expect_bf16)
    assert not torch.equal(expect_bf16, expect_f32)  # the dtype matters, and we follow the video's


def test_frames_to_uint8_rejects_batches():
    with pytest.raises(ValueError):
        frames_to_uint8(torch.zeros(2, 3, 1, 2, 2))


def test_decode_chunk_setting_reaches_the_pipeline_tokenizer(tmp_path, monkeypatch):
    """precision.tokenizer_decode_chunk (validated, >= 0) is what the pipeline's decoder streams with, also when the
    tokenizer is offloaded (our module's weights move in and out like any model's)."""
    from pipeline_helpers import Recorder, compose, recording_pipeline, small_cfg

    from cosmos_dist.config import validate_config
    from cosmos_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="precision.tokenizer_decode_chunk"):
        validate_config(compose("model=tiny_text2world", "prompt=x", "precision.tokenizer_decode_chunk=-1"))
    with pytest.raises(ConfigError, match="precision.tokenizer_encode_chunk"):
        validate_config(compose("model=tiny_video2world", "prompt=x", "precision.tokenizer_encode_chunk=-1"))
    cfg = small_cfg(tmp_path / "ckpt", tmp_path / "out", "prompt=a red ball", "offload=tokenizer",
                    "precision.tokenizer_decode_chunk=1", "guardrail=off")
    rec = Recorder()
    pipe = recording_pipeline(cfg, rec, monkeypatch)
    summary = pipe.run()
    assert len(summary.done) == 1 and ("in", "tokenizer") in rec.events
    tok = pipe.components.tokenizer.tokenizer
    assert isinstance(tok.decoder, CV8x8x8Decoder) and tok.decode_chunk_frames == 1
