"""Video2World: input reading and resizing, the conditioning math on the tiny model, prompts files, the CLI.

Inputs are written by the tests themselves (Pillow for images, write_mp4_atomic for videos). Models are the tiny
random stand-ins, created once per module under a shared checkpoint folder; most runs use a 32x48 frame so that a
35-step sample takes a second.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cosmos_dist.config import validate_config
from cosmos_dist.errors import ConfigError, InputError
from cosmos_dist.io.records import read_manifest
from cosmos_dist.io.video import write_mp4_atomic
from cosmos_dist.io.visual_input import (
    PAD_VALUE,
    read_visual_input,
    resize_frames,
    resize_plan,
)
from cosmos_dist.pipeline.denoiser import latent_shape, sample_latent
from cosmos_dist.pipeline.results import Sample
from cosmos_dist.pipeline.runtime import SingleProcess
from cosmos_dist.pipeline.video2world import (
    AUGMENT_SIGMA,
    REFERENCE_REPLACEMENT_NOTE,
    ConditionHooks,
    Video2WorldPipeline,
    condition_latent_frames,
)
from cosmos_dist.sampling import AUGMENT_STREAM, c_in, c_out, c_skip, fixed_noise, karras_sigmas
from cosmos_dist.tokenizer.cv8x8x8_encoder import CV8x8x8Encoder

REPO = Path(__file__).resolve().parents[1]


# ---- helpers ------------------------------------------------------------------------------------------------------
def gradient_image(h: int, w: int) -> np.ndarray:
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, w).astype(np.uint8)[None]
    a[..., 1] = np.linspace(0, 255, h).astype(np.uint8)[:, None]
    a[..., 2] = 77
    return a


def write_video(path: Path, values, h: int = 48, w: int = 64) -> Path:
    """An mp4 whose frame i is flat grey `values[i]` (survives H.264 within a level or two)."""
    frames = np.stack([np.full((h, w, 3), v, np.uint8) for v in values])
    write_mp4_atomic(path, frames, fps=24, crf=0)
    return path


def compose(*overrides: str):
    from hydra import compose as hydra_compose, initialize_config_dir

    from cosmos_dist.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="generate", overrides=list(overrides))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("v2w-checkpoints")


@pytest.fixture(scope="module")
def assets_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("v2w-inputs")
    Image.fromarray(gradient_image(90, 160)).save(d / "photo.png")
    write_video(d / "clip12.mp4", [10 + 20 * i for i in range(12)])
    return d


def small_cfg(ckpt: Path, out: Path, *overrides: str):
    return compose(
        "model=tiny_video2world", f"checkpoint_dir={ckpt}", f"output_dir={out}", "height=32", "width=48",
        "num_frames=17", "progress=false",
        # 17 frames are 3 latent frames: chunks of 1 (9 + 8 pixel frames) so that the tiny CV8x8x8 encoder streams.
        "precision.tokenizer_encode_chunk=1", *overrides,
    )


def make_pipeline(cfg) -> tuple[Video2WorldPipeline, object]:
    validate_config(cfg)
    pipe = Video2WorldPipeline(cfg, SingleProcess())
    work, assets = pipe.prepare()
    pipe.load(assets)
    return pipe, work


# ---- reading ------------------------------------------------------------------------------------------------------
def test_png_and_grayscale_and_palette(tmp_path):
    a = gradient_image(20, 30)
    Image.fromarray(a).save(tmp_path / "rgb.png")
    info = read_visual_input(tmp_path / "rgb.png")
    assert info.kind == "image" and info.frames.shape == (1, 20, 30, 3) and info.frames.dtype == np.uint8
    assert np.array_equal(info.frames[0], a) and info.original_size == (30, 20) and info.total_frames == 1

    g = a[..., 0]
    Image.fromarray(g, mode="L").save(tmp_path / "gray.png")
    got = read_visual_input(tmp_path / "gray.png").frames[0]
    assert got.shape == (20, 30, 3) and all(np.array_equal(got[..., c], g) for c in range(3))

    Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "pal.png")
    got = read_visual_input(tmp_path / "pal.png").frames[0]
    assert got.shape == (20, 30, 3) and np.abs(got.astype(int) - a).mean() < 20


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (200, 100, 0, 128)  # half transparent
    rgba[0, 1] = (10, 20, 30, 0)  # fully transparent -> white
    rgba[0, 2] = (10, 20, 30, 255)  # opaque -> unchanged
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    got = read_visual_input(tmp_path / "a.png").frames[0]
    # a*rgb + (1-a)*255 with a = 128/255, rounded: 200 -> 227.39, 100 -> 177.20, 0 -> 127.0
    assert got[0, 0].tolist() == [227, 177, 127]
    assert got[0, 1].tolist() == [255, 255, 255]
    assert got[0, 2].tolist() == [10, 20, 30]

    la = np.stack([np.full((2, 2), 0, np.uint8), np.full((2, 2), 0, np.uint8)], axis=-1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    assert read_visual_input(tmp_path / "la.png").frames[0].tolist() == [[[255] * 3] * 2] * 2


def test_jpg_jpeg_webp(tmp_path):
    a = gradient_image(32, 48)
    Image.fromarray(a).save(tmp_path / "p.jpg", quality=95)
    Image.fromarray(a).save(tmp_path / "p.JPEG", quality=95)
    Image.fromarray(a).save(tmp_path / "p.webp", lossless=True)
    for name in ("p.jpg", "p.JPEG"):
        got = read_visual_input(tmp_path / name).frames[0]
        assert got.shape == a.shape and np.abs(got.astype(int) - a).mean() < 3
    assert np.array_equal(read_visual_input(tmp_path / "p.webp").frames[0], a)


def test_mp4_all_frames_and_last_n(tmp_path):
    values = [10 + 20 * i for i in range(12)]
    path = write_video(tmp_path / "v.mp4", values)
    every = read_visual_input(path)
    assert every.kind == "video" and every.frames.shape == (12, 48, 64, 3) and every.total_frames == 12
    assert every.original_size == (64, 48) and every.fps == pytest.approx(24)
    assert np.allclose(every.frames.reshape(12, -1).mean(1), values, atol=2)
    last9 = read_visual_input(path, 9)
    assert last9.frames.shape[0] == 9 and last9.total_frames == 12
    assert np.array_equal(last9.frames, every.frames[-9:])
    assert np.array_equal(read_visual_input(path, 1).frames, every.frames[-1:])


def test_input_errors(tmp_path):
    Image.fromarray(gradient_image(8, 8)).save(tmp_path / "img.png")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "anim.gif").write_bytes(b"GIF89a")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage" * 10)
    short = write_video(tmp_path / "short.mp4", [50, 90, 130, 170, 210])

    def message(path, n=None) -> str:
        with pytest.raises(InputError) as err:
            read_visual_input(path, n)
        return str(err.value)

    for name in ("notes.txt", "anim.gif"):
        msg = message(tmp_path / name)
        assert "unsupported file type" in msg and ".jpg" in msg and ".png" in msg and ".webp" in msg and ".mp4" in msg
    msg = message(tmp_path / "missing.png")
    assert "file not found" in msg and "missing.png" in msg
    msg = message(tmp_path / "broken.png")
    assert "could not read it as an image" in msg and "broken.png" in msg and ".mp4" in msg
    msg = message(tmp_path / "broken.mp4")
    assert "could not read it as a video" in msg and "broken.mp4" in msg
    msg = message(short, 9)
    assert "has 5 frames" in msg and "num_input_frames=9" in msg
    msg = message(tmp_path / "img.png", 9)
    assert "image is a single frame" in msg and "num_input_frames=9" in msg
    assert read_visual_input(short, 1).frames.shape[0] == 1  # 1 frame of a short video is fine


# ---- resizing -----------------------------------------------------------------------------------------------------
def test_normalisation_is_x_over_128_minus_1():
    frames = np.array([[[[0, 128, 255]]]], np.uint8)  # (1, 1, 1, 3)
    x = resize_frames(frames, 1, 1, "stretch")
    assert x.shape == (1, 3, 1, 1) and x.flatten().tolist() == [-1.0, 0.0, 127 / 128]
    assert resize_frames(frames, 1, 1, "stretch", torch.bfloat16).dtype == torch.bfloat16


def bands(h: int, w: int) -> np.ndarray:
    """Left quarter red, right quarter blue, middle half green."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 4, 0] = 255
    a[:, w // 4 : 3 * w // 4, 1] = 255
    a[:, 3 * w // 4 :, 2] = 255
    return a


def test_resize_modes_sizes_and_aspect():
    wide = bands(100, 200)  # 2:1 into a square frame
    for mode in ("stretch", "crop", "pad"):
        out = resize_frames(wide[None], 64, 64, mode)
        assert out.shape == (1, 3, 64, 64) and out.dtype == torch.float32
    stretch = resize_frames(wide[None], 64, 64, "stretch")[0]
    assert stretch[0, :, :12].mean() > 0.9 and stretch[2, :, -12:].mean() > 0.9  # all bands visible, squeezed

    crop = resize_frames(wide[None], 64, 64, "crop")[0]
    # The centred 100x100 region is exactly the green middle half.
    assert torch.allclose(crop[1], torch.full((64, 64), 127 / 128), atol=1e-3)
    assert crop[0].max() < -0.99 and crop[2].max() < -0.99

    pad = resize_frames(wide[None], 64, 64, "pad")[0]
    # Fitted to 64x32 (aspect kept), centred: 16 rows of mid-grey (0) above and below.
    assert torch.equal(pad[:, :16], torch.full((3, 16, 64), PAD_VALUE))
    assert torch.equal(pad[:, 48:], torch.full((3, 16, 64), PAD_VALUE))
    assert pad[0, 16:48, :12].mean() > 0.9 and pad[2, 16:48, -12:].mean() > 0.9

    tall = bands(100, 200).transpose(1, 0, 2).copy()  # 100 wide, 200 tall: bands now run top to bottom
    pad_t = resize_frames(tall[None], 64, 64, "pad")[0]
    assert torch.equal(pad_t[:, :, :16], torch.full((3, 64, 16), PAD_VALUE))
    assert torch.equal(pad_t[:, :, 48:], torch.full((3, 64, 16), PAD_VALUE))

    assert resize_plan((90, 160), (704, 1280), "crop") == {"crop": (1, 0, 88, 160), "size": (704, 1280), "offset": (0, 0)}
    assert resize_plan((720, 1280), (704, 1280), "pad") == {"crop": (0, 0, 720, 1280), "size": (704, 1252), "offset": (0, 14)}
    assert resize_plan((480, 640), (704, 1280), "stretch")["size"] == (704, 1280)
    with pytest.raises(InputError):
        resize_plan((10, 10), (16, 16), "zoom")


def test_stretch_is_antialiased_bicubic_of_normalised_pixels():
    a = gradient_image(90, 160)
    x = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 128 - 1
    ref = torch.nn.functional.interpolate(x, size=(32, 48), mode="bicubic", antialias=True, align_corners=False)
    assert torch.equal(resize_frames(a[None], 32, 48, "stretch"), ref)


# ---- config -------------------------------------------------------------------------------------------------------
def test_config_checks(tmp_path):
    ok = compose("model=tiny_video2world", "prompt=x", "input_path=a.png")
    validate_config(ok)
    assert ok.num_input_frames == 1 and ok.resize_mode == "stretch" and ok.condition_replacement == "intended"
    validate_config(compose("model=tiny_video2world", "prompt=x", "input_path=a.png",
                            "condition_replacement=reference"))
    validate_config(compose("model=tiny_video2world", "prompts_file=p.jsonl"))
    for overrides, field in (
        (["prompt=x"], "input_path"),
        (["prompt=x", "input_path=a.png", "num_input_frames=3"], "num_input_frames"),
        (["prompt=x", "input_path=a.png", "resize_mode=zoom"], "resize_mode"),
        (["prompt=x", "input_path=a.png", "condition_replacement=as_written"], "condition_replacement"),
        (["prompt=x", "input_path=a.png", "num_input_frames=9", "num_frames=9"], "num_frames"),
    ):
        with pytest.raises(ConfigError, match=field):
            validate_config(compose("model=tiny_video2world", *overrides))
    with pytest.raises(ConfigError, match="input_path"):
        validate_config(compose("model=tiny_text2world", "prompt=x", "input_path=a.png"))
    with pytest.raises(ConfigError, match="condition_replacement"):
        validate_config(compose("model=tiny_text2world", "prompt=x", "condition_replacement=reference"))
    for name in ("7b_video2world", "14b_video2world"):
        cfg = compose(f"model={name}", "prompt=x", "input_path=a.png")
        validate_config(cfg)
        assert cfg.model.preset == name and cfg.height == 704 and cfg.width == 1280 and not cfg.model.random_weights


# ---- the conditioning math ----------------------------------------------------------------------------------------
class RecordingCondition:
    """Wraps the pipeline's condition; records, per step, sigma, x, x_in, the replaced F and D."""

    def __init__(self, inner):
        self.inner = inner
        self.mask = inner.mask
        self.steps = []

    def step_hooks(self, net, token_range):
        hooks = self.inner.step_hooks(net, token_range)
        self.hooks = hooks
        steps = self.steps

        class Spy(ConditionHooks):
            def __init__(self):
                self.__dict__.update(hooks.__dict__)

            def network_input(self, x, sigma, step):
                x_in = ConditionHooks.network_input(self, x, sigma, step)
                steps.append({"sigma": sigma, "x": x.clone(), "x_in": x_in.clone()})
                return x_in

            def replace_output(self, f, x_in, sigma, step):
                out = ConditionHooks.replace_output(self, f, x_in, sigma, step)
                d = c_skip(sigma) * x_in.float() + c_out(sigma) * out.float()
                steps[-1].update(f=f.clone(), f_used=out.clone(), d=d)
                return out

        return Spy()


def expected_gt(pipe, frames_uint8, n: int) -> torch.Tensor:
    cfg = pipe.cfg
    x = resize_frames(frames_uint8[-n:], cfg.height, cfg.width, "stretch", pipe.plan.tokenizer_dtype)
    clip = torch.zeros(1, 3, cfg.num_frames, cfg.height, cfg.width, dtype=pipe.plan.tokenizer_dtype)
    clip[0, :, :n] = x.permute(1, 0, 2, 3)
    return pipe.components.tokenizer.tokenizer.encode(clip).float()


@pytest.mark.parametrize("num_input_frames", [1, 9])
def test_conditioning_math_35_steps(ckpt, assets_dir, tmp_path, monkeypatch, num_input_frames):
    source = assets_dir / ("photo.png" if num_input_frames == 1 else "clip12.mp4")
    cfg = small_cfg(ckpt, tmp_path / "out", "prompt=a robot arm", f"input_path={source}",
                    f"num_input_frames={num_input_frames}")
    pipe, work = make_pipeline(cfg)
    item = work.items[0]
    seed = 5
    condition = pipe.condition(cfg, Sample(item=item, seed=seed, negative=cfg.negative_prompt))
    k = condition_latent_frames(num_input_frames)
    assert k == {1: 1, 9: 2}[num_input_frames] and condition.num_condition_frames == k

    # gt is the tokenizer encoding of the last N input frames, first in a zero-padded clip.
    frames = read_visual_input(source).frames
    tok = pipe.components.tokenizer.tokenizer
    assert isinstance(tok.encoder, CV8x8x8Encoder) and tok.encode_chunk_frames == 1  # our streaming encode
    assert torch.equal(condition.gt, expected_gt(pipe, frames, num_input_frames))
    shape = latent_shape(cfg)
    assert tuple(condition.gt.shape) == shape == (1, 16, 3, 4, 6)
    assert condition.mask.shape == (1, 1, 3, 4, 6)
    assert condition.mask[0, 0, :k].eq(1).all() and condition.mask[0, 0, k:].eq(0).all()

    # The network input's mask channel is 1 on the condition frames, in both CFG branches, at every step.
    seen_masks = []
    forward = pipe.components.net.forward_tokens

    def spy_forward(tokens, *args, **kwargs):
        seen_masks.append(tokens[..., 64:68].detach().clone())
        return forward(tokens, *args, **kwargs)

    monkeypatch.setattr(pipe.components.net, "forward_tokens", spy_forward)
    cond, uncond = pipe.encode(item.prompt, cfg.negative_prompt)
    rec = RecordingCondition(condition)
    sample_latent(net=pipe.components.net, plan=pipe.plan, runtime=pipe.runtime, cfg=cfg, sample_id=item.sample_id, seed=seed, cond=cond, uncond=uncond, condition=rec)

    net = pipe.components.net
    gt_tok, grid = net.patchify(condition.gt)
    per_frame = grid[1] * grid[2]
    ind = torch.zeros(gt_tok.shape[1], dtype=torch.bool)
    ind[: k * per_frame] = True
    noise_tok, _ = net.patchify(fixed_noise(shape, seed, item.sample_id, AUGMENT_STREAM))
    sigmas = karras_sigmas(35)
    assert len(rec.steps) == 35 and len(seen_masks) == 35
    for mask in seen_masks:
        assert mask.shape[0] == 2  # cond + uncond as one batch
        assert mask[:, ind].eq(1).all() and mask[:, ~ind].eq(0).all()

    active = [float(s) > AUGMENT_SIGMA for s in sigmas[:-1]]
    assert active == [True] * 33 + [False] * 2
    for i, st in enumerate(rec.steps):
        assert st["sigma"] == float(sigmas[i])
        x_in, x, d = st["x_in"].float(), st["x"].float(), st["d"]
        # Unconditioned tokens are never touched.
        assert torch.equal(x_in[:, ~ind], x[:, ~ind]) and torch.equal(st["f_used"][:, ~ind].float(), st["f"][:, ~ind].float())
        if active[i]:
            # The network sees c_in(0.001) * (gt + 0.001 n) with one fixed n, and D equals gt exactly.
            seen = c_in(st["sigma"]) * x_in[:, ind]
            want = c_in(AUGMENT_SIGMA) * (gt_tok[:, ind] + AUGMENT_SIGMA * noise_tok[:, ind])
            torch.testing.assert_close(seen, want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(d[:, ind], gt_tok[:, ind], rtol=0, atol=2e-5 * max(1.0, float(st["sigma"])) ** 0.5)
        else:
            # sigma <= 0.001: no replacement; the condition frames are denoised freely.
            assert torch.equal(x_in, x) and torch.equal(st["f_used"], st["f"])
            assert (d[:, ind] - gt_tok[:, ind]).abs().max() > 1e-4


@pytest.mark.parametrize("replacement", ["intended", "reference"])
def test_condition_replacement_choice(ckpt, assets_dir, tmp_path, monkeypatch, replacement):
    """intended (default): the condition frame ends as the encoded input within bf16 rounding and decodes to the
    tokenizer round trip of the input. reference: F_rep is the reference's code as written,
    latent / c_out - c_skip * xt, and the frame drifts. The sidecar records the choice. A bf16 DiT, as on a GPU."""
    monkeypatch.chdir(assets_dir)  # a relative input path: the sample id, and so the noise, is fixed
    cfg = small_cfg(ckpt, tmp_path / "out", "prompt=a robot arm", "input_path=photo.png", "num_steps=3",
                    "precision.dit_dtype=bfloat16", f"condition_replacement={replacement}")
    pipe, work = make_pipeline(cfg)
    item = work.items[0]
    sample = Sample(item=item, seed=5, negative=cfg.negative_prompt)
    condition = pipe.condition(cfg, sample)
    assert (REFERENCE_REPLACEMENT_NOTE in sample.notes) == (replacement == "reference")
    cond, uncond = pipe.encode(item.prompt, cfg.negative_prompt)
    rec = RecordingCondition(condition)
    latent = sample_latent(net=pipe.components.net, plan=pipe.plan, runtime=pipe.runtime, cfg=cfg,
                           sample_id=item.sample_id, seed=5, cond=cond, uncond=uncond, condition=rec)
    assert pipe.sidecar_extra(sample)["video2world"]["condition_replacement"] == replacement

    # The replaced output of every active step, restated (sigma_data 0.5; sigma rounded to bf16 as the reference).
    gt_tok, grid = pipe.components.net.patchify(condition.gt)
    ind = torch.zeros(gt_tok.shape[1], dtype=torch.bool)
    ind[: grid[1] * grid[2]] = True  # one condition latent frame
    gt = gt_tok[:, ind]
    active = [st for st in rec.steps if float(torch.tensor(st["sigma"]).to(torch.bfloat16)) > AUGMENT_SIGMA]
    assert len(rec.steps) == 3 and len(active) == 2
    for st in active:
        s = float(torch.tensor(st["sigma"]).to(torch.bfloat16))
        c_skip_s, c_out_s = 0.25 / (s**2 + 0.25), s * 0.5 / (s**2 + 0.25) ** 0.5
        x_in = st["x_in"][:, ind].float()
        want = (gt - c_skip_s * x_in) / c_out_s if replacement == "intended" else gt / c_out_s - c_skip_s * x_in
        torch.testing.assert_close(st["f_used"][:, ind].float(), want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))

    # The state entering the last step (sigma 0.0002 <= the augment sigma, denoised freely as in the reference):
    # with the intended replacement it is the encoded input within bf16 rounding at the frame's scale (F_rep and
    # c_out F are rounded to bf16, the state too, and the hooks use the bf16 sigma where the step uses float32).
    entering = rec.steps[-1]["x"][:, ind].float()
    latent_err, latent_tolerance = float((entering - gt).abs().max()), 2**-7 * float(gt.abs().max())
    # The causal decoder makes pixel frame 0 from latent frame 0 alone: compare it with the input's round trip,
    # to within a few bf16 roundings of its range (the state is stored in bf16; the free last step moves it by
    # c_out(0.0002) F).
    tok = pipe.components.tokenizer.tokenizer
    decoded = tok.decode(latent)[:, :, 0]
    round_trip = tok.decode(condition.gt)[:, :, 0]
    decoded_tolerance = 2**-6 * float(round_trip.abs().max())
    decoded_err = float((decoded - round_trip).abs().max())
    if replacement == "intended":
        assert latent_err <= latent_tolerance, (latent_err, latent_tolerance)
        assert decoded_err <= decoded_tolerance, (decoded_err, decoded_tolerance)
    else:
        assert latent_err > 10 * latent_tolerance, (latent_err, latent_tolerance)
        assert decoded_err > 10 * decoded_tolerance, (decoded_err, decoded_tolerance)


def test_hooks_slice_like_the_state_under_context_parallelism(ckpt, assets_dir, tmp_path):
    """Each cp rank's hooks are exactly the full hooks restricted to its token range."""
    cfg = small_cfg(ckpt, tmp_path / "out", "prompt=a dog", f"input_path={assets_dir / 'clip12.mp4'}", "num_input_frames=9")
    pipe, work = make_pipeline(cfg)
    condition = pipe.condition(cfg, Sample(item=work.items[0], seed=3, negative=cfg.negative_prompt))
    full = condition.step_hooks(pipe.components.net, None)
    n = full.gt.shape[1]
    x = torch.randn(1, n, 64)
    f = torch.randn(1, n, 64)
    for sigma in (80.0, 0.5, 0.0005):
        x_in = full.network_input(x, sigma, 0)
        f_out = full.replace_output(f, x_in, sigma, 0)
        for lo, hi in ((0, 7), (7, 13), (13, n)):  # uneven shards, cutting through latent frames
            part = condition.step_hooks(pipe.components.net, (lo, hi))
            xs_in = part.network_input(x[:, lo:hi], sigma, 0)
            assert torch.equal(xs_in, x_in[:, lo:hi])
            assert torch.equal(part.replace_output(f[:, lo:hi], xs_in, sigma, 0), f_out[:, lo:hi])


# ---- prompts files ------------------------------------------------------------------------------------------------
def test_prompts_file_bad_inputs_fail_their_lines_only(ckpt, assets_dir, tmp_path):
    Image.fromarray(gradient_image(8, 8)).save(tmp_path / "small.png")
    write_video(tmp_path / "short.mp4", [40, 80, 120])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    lines = [
        {"id": "ok-image", "prompt": "a cat", "visual_input": str(assets_dir / "photo.png")},
        {"id": "missing", "prompt": "a cat", "input_path": str(tmp_path / "nope.png")},
        {"id": "ok-video", "prompt": "a car", "input_path": "clip12.mp4", "num_input_frames": 9},
        {"id": "image-9", "prompt": "a cat", "input_path": str(tmp_path / "small.png"), "num_input_frames": 9},
        {"id": "short", "prompt": "a cat", "input_path": str(tmp_path / "short.mp4"), "num_input_frames": 9},
        {"id": "unreadable", "prompt": "a cat", "input_path": str(tmp_path / "bad.png")},
        {"id": "gif", "prompt": "a cat", "input_path": str(tmp_path / "x.gif")},
        {"id": "three", "prompt": "a cat", "input_path": str(tmp_path / "small.png"), "num_input_frames": 3},
        {"id": "no-input", "prompt": "a cat"},
    ]
    # "clip12.mp4" is relative: not in the working directory, found beside the prompts file.
    prompts = assets_dir / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    cfg = small_cfg(ckpt, out, f"prompts_file={prompts}", "num_steps=2", "negative_prompt=")
    validate_config(cfg)
    summary = Video2WorldPipeline(cfg, SingleProcess()).run()
    assert sorted(summary.done) == ["ok-image", "ok-video"]
    assert summary.exit_code == 1
    events = {(e.get("sample_id") or f"line {e['line']}"): e for e in read_manifest(out / "manifest.jsonl")}
    assert events["ok-image"]["status"] == events["ok-video"]["status"] == "done"
    reasons = {
        "missing": "file not found",
        "image-9": "image is a single frame",
        "short": "has 3 frames",
        "unreadable": "could not read it as an image",
        "gif": "unsupported file type",
        "line 8": '"num_input_frames" must be 1 or 9',
        "line 9": "no input image or video",
    }
    for key, why in reasons.items():
        assert events[key]["status"] == "failed" and why in events[key]["reason"], (key, events[key])

    side = json.loads((out / "ok-video.json").read_text())
    v2w = side["extra"]["video2world"]
    assert v2w["input_path"] == "clip12.mp4" and v2w["input_resolved"] == str((assets_dir / "clip12.mp4").resolve())
    assert v2w["input_original_size"] == {"width": 64, "height": 48} and v2w["input_total_frames"] == 12
    assert v2w["num_input_frames"] == 9 and v2w["num_condition_latent_frames"] == 2 and v2w["resize_mode"] == "stretch"
    # An empty negative prompt: like the reference Video2World, no guidance, and the sidecar says so.
    assert v2w["classifier_free_guidance"] is False
    assert any("classifier-free guidance has no effect" in note for note in side["notes"])
    img = json.loads((out / "ok-image.json").read_text())["extra"]["video2world"]
    assert img["input_kind"] == "image" and img["input_original_size"] == {"width": 160, "height": 90}


def test_single_prompt_missing_input_fails_before_models_load(ckpt, tmp_path):
    cfg = small_cfg(ckpt, tmp_path / "out", "prompt=a cat", f"input_path={tmp_path / 'nope.jpg'}")
    with pytest.raises(InputError, match="file not found"):
        Video2WorldPipeline(cfg, SingleProcess()).prepare()


def test_empty_negative_prompt_means_no_uncond_pass(ckpt, assets_dir, tmp_path):
    cfg = small_cfg(ckpt, tmp_path / "out", "prompt=a cat", f"input_path={assets_dir / 'photo.png'}")
    pipe, _ = make_pipeline(cfg)
    cond, uncond = pipe.encode("a cat", "")
    assert uncond is None and cond.shape[0] == 1
    cond2, uncond2 = pipe.encode("a cat", "blurry")
    assert uncond2 is not None and torch.equal(cond, cond2)


# ---- the CLI ------------------------------------------------------------------------------------------------------
def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, str(REPO / "generate.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_cli_image_and_video(ckpt, assets_dir, tmp_path):
    from cosmos_dist.io.video import probe_video

    Image.fromarray(gradient_image(90, 160)).save(tmp_path / "photo.png")
    r = run_cli(tmp_path, "model=tiny_video2world", "input_path=photo.png", "prompt=a robot arm picks up a cup",
                "num_steps=3", f"checkpoint_dir={ckpt}", "progress=false")
    assert r.returncode == 0, r.stderr[-3000:]
    (side,) = [p for p in (tmp_path / "outputs").glob("*.json")]
    info = json.loads(side.read_text())
    assert info["model"]["kind"] == "video2world" and info["extra"]["video2world"]["input_path"] == "photo.png"
    v = probe_video(side.with_suffix(".mp4"))
    assert (v.frames, v.width, v.height) == (17, 192, 128)

    r = run_cli(tmp_path, "model=tiny_video2world", f"input_path={assets_dir / 'clip12.mp4'}", "num_input_frames=9",
                "prompt=a car drives on", "num_steps=3", f"checkpoint_dir={ckpt}", "output_dir=out9", "progress=false",
                "resize_mode=crop")
    assert r.returncode == 0, r.stderr[-3000:]
    (side,) = [p for p in (tmp_path / "out9").glob("*.json")]
    v2w = json.loads(side.read_text())["extra"]["video2world"]
    assert v2w["num_input_frames"] == 9 and v2w["num_condition_latent_frames"] == 2 and v2w["resize_mode"] == "crop"
    assert probe_video(side.with_suffix(".mp4")).frames == 17

    # A missing input is a usage error (exit 2) before any model loads.
    r = run_cli(tmp_path, "model=tiny_video2world", "input_path=nope.png", "prompt=x", f"checkpoint_dir={ckpt}")
    assert r.returncode == 2 and "file not found" in r.stderr
