"""Our CV8x8x8 decoder: streaming == whole clip, == diffusers' AutoencoderKLCosmos, original key names, loading."""
import re
import warnings

import pytest
import torch

from cosmos_dist.tokenizer.cv8x8x8 import CV8x8x8Decoder, DecoderSpec

SMALL = DecoderSpec(level_channels=(8, 16, 16))  # the CV8x8x8 structure at channels 8/16

# Spec section 12: the diffusers conversion script's ordered substring renames, original -> diffusers.
RENAMES = {
    "down.0": "down_blocks.0", "down.1": "down_blocks.1", "down.2": "down_blocks.2",
    "up.0": "up_blocks.2", "up.1": "up_blocks.1", "up.2": "up_blocks.0",
    ".block.": ".resnets.", "downsample": "downsamplers.0", "upsample": "upsamplers.0",
    "mid.block_1": "mid_block.resnets.0", "mid.attn_1.0": "mid_block.attentions.0",
    "mid.attn_1.1": "mid_block.temp_attentions.0", "mid.block_2": "mid_block.resnets.1",
    ".q.conv3d": ".to_q", ".k.conv3d": ".to_k", ".v.conv3d": ".to_v", ".proj_out.conv3d": ".to_out.0",
    ".0.conv3d": ".conv_s", ".1.conv3d": ".conv_t",
    "conv1.conv3d": "conv1", "conv2.conv3d": "conv2", "conv3.conv3d": "conv3",
    "nin_shortcut.conv3d": "conv_shortcut", "quant_conv.conv3d": "quant_conv",
    "post_quant_conv.conv3d": "post_quant_conv",
}


def original_to_diffusers(key: str) -> str:
    # Attention inside an up level (absent at the real sizes, so not in the script): attn.j.{0,1} -> (temp_)attentions.j
    key = re.sub(r"\.attn\.(\d+)\.0\.", r".attentions.\1.", key)
    key = re.sub(r"\.attn\.(\d+)\.1\.", r".temp_attentions.\1.", key)
    for old, new in RENAMES.items():
        key = key.replace(old, new)
    return key


def random_decoder(spec=SMALL, seed=0, scale=0.2) -> CV8x8x8Decoder:
    torch.manual_seed(seed)
    m = CV8x8x8Decoder(spec).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return m


def rel_err(a, b) -> float:
    return float((a - b).norm() / b.norm())


def latent(t, h=4, w=6, seed=1):
    return torch.randn(1, 16, t, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def small():
    return random_decoder()


@pytest.mark.parametrize("t", [1, 2, 3, 16])
def test_streaming_equals_whole_clip(small, t):
    z = latent(t)
    with torch.no_grad():
        whole = small(z)
    assert whole.shape == (1, 3, 1 + 8 * (t - 1), 32, 48)
    for n in (1, 2, 3, 4, 5):  # 3 and 5 do not divide 16 (nor 2)
        got = small.decode(z, n)
        assert got.shape == whole.shape
        assert rel_err(got, whole) <= 1e-5, (t, n, rel_err(got, whole))
    assert torch.equal(small.decode(z, 0), whole) and torch.equal(small.decode(z, None), whole)


def test_streaming_with_attention_in_an_up_level():
    """The temporal attention's key/value cache at an upsampled level (not in the real sizes, but in the layout)."""
    m = random_decoder(DecoderSpec(level_channels=(8, 16, 16), attn_levels=(1, 2)), seed=3)
    z = latent(6, seed=2)
    with torch.no_grad():
        whole = m(z)
    for n in (1, 4):
        assert rel_err(m.decode(z, n), whole) <= 1e-5


def test_decoder_is_causal(small):
    z = latent(4, seed=5)
    later = z.clone()
    later[:, :, 2:] = latent(2, seed=6)  # latent frames 2, 3 changed: pixel frames 0..8 must not move
    with torch.no_grad():
        a, b = small(z), small(later)
    assert torch.equal(a[:, :, :9], b[:, :, :9]) and not torch.allclose(a[:, :, 9:], b[:, :, 9:])


def test_full_size_builds_with_the_published_parameter_count():
    with torch.device("meta"):
        m = CV8x8x8Decoder()
    assert round(m.num_parameters() / 1e6, 1) == 62.7  # spec section 12: decoder 62.7 M
    assert m.spec.temporal_compression == 8 and m.spec.upsample_flags(1) == (True, True)
    assert m.spec.upsample_flags(2) == (False, False)  # the original's no-op upsampler: no parameters


def test_original_key_names_and_spec_inference(small):
    sd = small.state_dict()
    for key in ("post_quant_conv.conv3d.weight", "decoder.conv_in.0.conv3d.weight", "decoder.conv_in.1.conv3d.bias",
                "decoder.mid.block_1.norm1.norm.weight", "decoder.mid.attn_1.0.q.conv3d.weight",
                "decoder.mid.attn_1.1.proj_out.conv3d.weight", "decoder.up.0.block.0.nin_shortcut.conv3d.weight",
                "decoder.up.2.block.2.conv2.1.conv3d.weight", "decoder.up.1.upsample.conv1.conv3d.weight",
                "decoder.norm_out.norm.bias", "decoder.conv_out.1.conv3d.weight"):
        assert key in sd, key
    assert not any(k.startswith("decoder.up.2.upsample") or k.startswith("decoder.up.0.upsample") for k in sd)
    assert CV8x8x8Decoder.spec_from_state_dict(sd) == SMALL
    # The original's constant buffers are accepted and ignored; a non-Haar wavelet is refused.
    extra = dict(sd)
    extra["decoder.unpatcher3d.wavelets"] = torch.tensor([0.5**0.5, 0.5**0.5])
    extra["decoder.unpatcher3d._arange"] = torch.arange(2)
    extra["decoder.unpatcher3d.patch_size_buffer"] = torch.tensor([4], dtype=torch.int32)
    loaded = CV8x8x8Decoder.from_state_dict(extra)
    z = latent(3)
    with torch.no_grad():
        assert torch.equal(loaded(z), small(z))
    extra["decoder.unpatcher3d.wavelets"] = torch.ones(2)
    with pytest.raises(ValueError, match="Haar"):
        CV8x8x8Decoder.from_state_dict(extra)
    # Other layouts are refused with ValueError (the tokenizer then keeps the TorchScript module).
    for bad in ({k: v for k, v in sd.items() if "mid.attn_1.1" not in k},
                {k: v for k, v in sd.items() if not k.startswith("post_quant_conv")},
                {"mix.conv.weight": torch.zeros(1)}):
        with pytest.raises(ValueError):
            CV8x8x8Decoder.from_state_dict(bad)
    shape_changed = dict(sd)
    shape_changed["decoder.mid.block_1.conv1.0.conv3d.weight"] = torch.zeros(16, 16, 3, 3, 3)
    with pytest.raises(ValueError):
        CV8x8x8Decoder.from_state_dict(shape_changed)


def test_torchscript_file_keeps_original_names_and_numbers(small, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(small).save(str(tmp_path / "decoder.jit"))
        jit = torch.jit.load(str(tmp_path / "decoder.jit"))
    assert set(jit.state_dict()) == set(small.state_dict())
    z = latent(3, seed=4)
    with torch.no_grad():
        assert torch.equal(jit(z), small(z))
        assert torch.equal(CV8x8x8Decoder.from_state_dict(jit.state_dict())(z), small(z))


# ---- the reference architecture ---------------------------------------------------------------------------------
def _diffusers_pair(seed, **config):
    diffusers = pytest.importorskip("diffusers", reason="diffusers (AutoencoderKLCosmos, the reference) not installed")
    torch.manual_seed(seed)
    ae = diffusers.AutoencoderKLCosmos(
        encoder_block_out_channels=(8, 8, 16, 16), decode_block_out_channels=(8, 16, 16, 16), **config
    ).eval()
    with torch.no_grad():
        for p in ae.parameters():
            p.copy_(torch.randn_like(p) * 0.2)  # the default init leaves some layers at zero
    ref = ae.state_dict()
    ref_keys = {k for k in ref if k.startswith(("decoder.", "post_quant_conv."))}
    spec = DecoderSpec(level_channels=(8, 16, 16), attn_levels=(2,) if config else ())
    template = CV8x8x8Decoder(spec).state_dict()
    diffusers_to_original = {original_to_diffusers(k): k for k in template}  # the inverse of the renames
    assert set(diffusers_to_original) == ref_keys  # one-to-one, nothing left over on either side
    sd = {diffusers_to_original[k]: ref[k] for k in ref_keys}
    return ae, CV8x8x8Decoder.from_state_dict(sd)


@pytest.mark.parametrize("attention", [False, True], ids=["cv8x8x8", "with-up-attention"])
def test_matches_diffusers_autoencoder_kl_cosmos(attention):
    config = {"attention_resolutions": (64,)} if attention else {}  # (64,): the last-run up level gets attention
    ae, ours = _diffusers_pair(7, **config)
    for t in ((1, 2, 3, 16) if not attention else (3, 6)):
        z = latent(t, seed=t)
        with torch.no_grad():
            ref = ae.decode(z).sample
            whole = ours(z)
        assert whole.shape == ref.shape
        assert rel_err(whole, ref) <= 1e-5, (t, rel_err(whole, ref))
        for n in (1, 2, 3):
            assert rel_err(ours.decode(z, n), ref) <= 1e-5, (t, n)


def test_full_size_matches_diffusers_parameter_count():
    diffusers = pytest.importorskip("diffusers", reason="diffusers not installed")
    with torch.device("meta"):
        ae = diffusers.AutoencoderKLCosmos()
        ours = CV8x8x8Decoder()
    ref = {k: v.shape for k, v in ae.state_dict().items() if k.startswith(("decoder.", "post_quant_conv."))}
    mine = {original_to_diffusers(k): v.shape for k, v in ours.state_dict().items()}
    assert mine == ref
