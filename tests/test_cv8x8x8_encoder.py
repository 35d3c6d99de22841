"""Our CV8x8x8 encoder: streaming == whole clip, == diffusers' AutoencoderKLCosmos, original key names, loading."""
import warnings

import pytest
import torch

from cosmos_dist.tokenizer.cv8x8x8_encoder import CV8x8x8Encoder, EncoderSpec
from test_cv8x8x8 import original_to_diffusers, rel_err

SMALL = EncoderSpec(base_channels=8, level_channels=(8, 16, 16))  # the CV8x8x8 structure at channels 8/16


def random_encoder(spec=SMALL, seed=0, scale=0.2) -> CV8x8x8Encoder:
    torch.manual_seed(seed)
    m = CV8x8x8Encoder(spec).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return m


def clip(f, h=16, w=24, seed=1):
    return torch.randn(1, 3, f, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def small():
    return random_encoder()


@pytest.mark.parametrize("f", [1, 9, 17, 121])
def test_streaming_equals_whole_clip(small, f):
    x = clip(f)
    with torch.no_grad():
        whole = small(x)
    k = (f - 1) // 8
    assert whole.shape == (1, 16, 1 + k, 2, 3)
    for n in (1, 2, 3, 4, 7):  # 3 and 7 do not divide 15; chunks: 1 + 8n pixel frames, then 8n
        got = small.encode(x, n)
        assert got.shape == whole.shape
        assert rel_err(got, whole) <= 1e-5, (f, n, rel_err(got, whole))
    assert torch.equal(small.encode(x, 0), whole) and torch.equal(small.encode(x, None), whole)


def test_streaming_with_attention_in_a_down_level():
    """Temporal attention's key/value cache before and after the temporal downsample (not in the real sizes)."""
    m = random_encoder(EncoderSpec(base_channels=8, level_channels=(8, 16, 16), attn_levels=(0, 2)), seed=3)
    x = clip(41, h=8, w=8, seed=2)
    with torch.no_grad():
        whole = m(x)
    for n in (1, 3):
        assert rel_err(m.encode(x, n), whole) <= 1e-5


def test_encoder_is_causal(small):
    x = clip(25, seed=5)
    later = x.clone()
    later[:, :, 9:] = clip(16, seed=6)  # pixel frames 9.. changed: latent frames 0, 1 must not move
    with torch.no_grad():
        a, b = small(x), small(later)
    assert torch.equal(a[:, :, :2], b[:, :, :2]) and not torch.allclose(a[:, :, 2:], b[:, :, 2:])


def test_input_shape_checks(small):
    for bad in (clip(8), clip(9, h=12), clip(9, w=20)):
        with pytest.raises(ValueError, match="1 \\+ 8k"):
            small.encode(bad, 1)


def test_full_size_builds_with_the_published_parameter_count():
    with torch.device("meta"):
        m = CV8x8x8Encoder()
    assert round(m.num_parameters() / 1e6, 1) == 42.9  # spec section 12: encoder 42.9 M
    assert [m.spec.downsample_flags(i) for i in range(3)] == [(True, True), (False, False), (False, False)]


def test_original_key_names_and_spec_inference(small):
    sd = small.state_dict()
    for key in ("quant_conv.conv3d.weight", "encoder.conv_in.0.conv3d.weight", "encoder.conv_in.1.conv3d.bias",
                "encoder.down.1.block.0.nin_shortcut.conv3d.weight", "encoder.down.0.block.1.norm2.norm.weight",
                "encoder.down.0.downsample.conv1.conv3d.weight", "encoder.down.0.downsample.conv2.conv3d.bias",
                "encoder.down.0.downsample.conv3.conv3d.weight", "encoder.mid.block_1.norm1.norm.weight",
                "encoder.mid.attn_1.0.q.conv3d.weight", "encoder.mid.attn_1.1.proj_out.conv3d.weight",
                "encoder.down.2.block.1.conv2.1.conv3d.weight", "encoder.norm_out.norm.bias",
                "encoder.conv_out.1.conv3d.weight"):
        assert key in sd, key
    assert not any(k.startswith(("encoder.down.1.downsample", "encoder.down.2.downsample")) for k in sd)
    assert CV8x8x8Encoder.spec_from_state_dict(sd) == SMALL
    # The original's constant buffers are accepted and ignored; a non-Haar wavelet is refused.
    extra = dict(sd)
    extra["encoder.patcher3d.wavelets"] = torch.tensor([0.5**0.5, 0.5**0.5])
    extra["encoder.patcher3d._arange"] = torch.arange(2)
    loaded = CV8x8x8Encoder.from_state_dict(extra)
    x = clip(9)
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))
    extra["encoder.patcher3d.wavelets"] = torch.ones(2)
    with pytest.raises(ValueError, match="Haar"):
        CV8x8x8Encoder.from_state_dict(extra)
    # Other layouts (a decoder, the old tiny stand-in, missing or reshaped tensors) are refused with ValueError.
    for bad in ({k: v for k, v in sd.items() if "mid.attn_1.1" not in k},
                {k: v for k, v in sd.items() if not k.startswith("quant_conv")},
                {"conv_in.conv.weight": torch.zeros(1)}):
        with pytest.raises(ValueError):
            CV8x8x8Encoder.from_state_dict(bad)
    shape_changed = dict(sd)
    shape_changed["encoder.mid.block_1.conv1.0.conv3d.weight"] = torch.zeros(16, 16, 3, 3, 3)
    with pytest.raises(ValueError):
        CV8x8x8Encoder.from_state_dict(shape_changed)


def test_torchscript_file_keeps_original_names_and_numbers(small, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(small).save(str(tmp_path / "encoder.jit"))
        jit = torch.jit.load(str(tmp_path / "encoder.jit"))
    assert set(jit.state_dict()) == set(small.state_dict())
    x = clip(17, seed=4)
    with torch.no_grad():
        assert torch.equal(jit(x), small(x))
        assert torch.equal(CV8x8x8Encoder.from_state_dict(jit.state_dict())(x), small(x))


# ---- the reference architecture ---------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", [None, (256,), (128,)], ids=["cv8x8x8", "attn-level0", "attn-level1"])
def test_matches_diffusers_autoencoder_kl_cosmos(attention):
    diffusers = pytest.importorskip("diffusers", reason="diffusers (AutoencoderKLCosmos, the reference) not installed")
    # diffusers gives level i attention when 256 / 2^i is in attention_resolutions (resolution 1024 / patch 4).
    config = {"attention_resolutions": attention} if attention else {}
    torch.manual_seed(7)
    ae = diffusers.AutoencoderKLCosmos(
        encoder_block_out_channels=(8, 8, 16, 16), decode_block_out_channels=(8, 16, 16, 16), **config
    ).eval()
    with torch.no_grad():
        for p in ae.parameters():
            p.copy_(torch.randn_like(p) * 0.2)  # the default init leaves some layers at zero
    ref = ae.state_dict()
    ref_keys = {k for k in ref if k.startswith(("encoder.", "quant_conv."))}
    levels = {None: (), (256,): (0,), (128,): (1,)}[attention]
    template = CV8x8x8Encoder(EncoderSpec(base_channels=8, level_channels=(8, 16, 16), attn_levels=levels))
    diffusers_to_original = {original_to_diffusers(k): k for k in template.state_dict()}
    assert set(diffusers_to_original) == ref_keys  # one-to-one, nothing left over on either side
    ours = CV8x8x8Encoder.from_state_dict({diffusers_to_original[k]: ref[k] for k in ref_keys})
    assert ours.spec == template.spec
    for f in ((1, 9, 17, 33) if attention is None else (17, 41)):
        x = clip(f, seed=f)
        with torch.no_grad():
            expect = ae.encode(x).latent_dist.mode()
            whole = ours(x)
        assert whole.shape == expect.shape
        assert rel_err(whole, expect) <= 1e-5, (f, rel_err(whole, expect))
        for n in (1, 2, 3):
            assert rel_err(ours.encode(x, n), expect) <= 1e-5, (f, n)


def test_full_size_matches_diffusers_parameter_shapes():
    diffusers = pytest.importorskip("diffusers", reason="diffusers not installed")
    with torch.device("meta"):
        ae = diffusers.AutoencoderKLCosmos()
        ours = CV8x8x8Encoder()
    ref = {k: v.shape for k, v in ae.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}
    mine = {original_to_diffusers(k): v.shape for k, v in ours.state_dict().items()}
    assert mine == ref
