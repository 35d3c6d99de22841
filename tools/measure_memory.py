"""Peak GPU memory and time of one sample at each residency level (offload=none ... dit), random weights.

    python tools/measure_memory.py --model 7b --kinds t2w,v2w --output docs/bench/memory_7b.json
    python tools/measure_memory.py --model 14b --kinds t2w,v2w --output docs/bench/memory_14b.json
    python tools/measure_memory.py --tiny --output /tmp/m.json        # CPU, seconds (its own test)

Every model is built at full size with random weights, once, and kept in pinned CPU memory; for each level the
real residency manager (cosmos_dist.pipeline.residency) takes charge of them as `generate.py` does (resident ones
moved to the GPU, offloaded ones moved in for their stage only, the DiT streamed block by block at level dit),
then the stages of one sample run in the pipeline's order and each stage's peak is recorded:

    guardrail text check -> upsampler -> guardrail check of the upsampled prompt -> T5 (prompt + negative, 512
    tokens each) -> [v2w: tokenizer encode of the 121-frame input clip] -> `--steps` guided DiT steps through
    denoiser.sample_latent (the pipeline's sampler, cfg mode as configured) -> tokenizer decode -> video guardrail
    (SigLIP on every frame + a face-detector stand-in)

Stand-ins (random weights, real sizes):
* DiT: cosmos_dist.models.build_dit of the preset, bf16 (the pipeline's network);
* T5-11B encoder: transformers T5EncoderModel with t5-11b's dimensions, float32 (as the reference);
* tokenizer decoder: the pipeline's own CV8x8x8 decoder (cosmos_dist/tokenizer/cv8x8x8.py, 62.7M parameters) at
  full size, random weights, bf16, decoding `--decode-chunk` latent frames at a time like the pipeline
  (precision.tokenizer_decode_chunk; 0 = the whole 121-frame clip at once, the original's way);
* tokenizer encoder (v2w): the pipeline's own CV8x8x8 encoder (cosmos_dist/tokenizer/cv8x8x8_encoder.py, 42.9M
  parameters) at full size, random weights, bf16, encoding `--encode-chunk` latent frames' worth of pixel frames
  at a time like the pipeline (precision.tokenizer_encode_chunk; 0 = the whole 121-frame clip at once, the
  original's way);
* upsampler: a Mistral-NeMo-12B-shaped MistralForCausalLM, bf16 (the Cosmos upsampler's family and size);
* guardrails (`--guardrail aegis`, the model card's set): LlamaGuard-7B-shaped LlamaForCausalLM bf16 (Aegis),
  SigLIP-so400m SiglipModel float32, and a small convolutional stand-in for RetinaFace (its 27M weights are not
  modelled; its activations at 704x1280 are roughly). `--guardrail qwen3guard`: cosmos-guardrail 0.3.2's set
  (Qwen3Guard-0.6B float32, no SigLIP filter).

Peaks are torch.cuda.max_memory_allocated / max_memory_reserved (the CUDA context, ~0.5 GB, is not included);
"GiB" = 2^30 bytes. Levels that do not fit report the stage where they ran out of memory.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmos_dist.config import OFFLOAD_LEVELS  # noqa: E402

# The model card's "GPU memory requirements" table (Cosmos-Predict1 README / examples), per offloading strategy.
CARD_GB = {
    ("7b", "t2w"): {"upsampler": 74.0, "guardrails": 57.1, "text_encoder": 38.5, "tokenizer": 38.3, "dit": 24.4},
    ("14b", "t2w"): {"upsampler": ">80.0", "guardrails": 70.5, "text_encoder": 51.9, "tokenizer": 51.7, "dit": 39.0},
    ("7b", "v2w"): {"upsampler": 76.5, "guardrails": 59.9, "text_encoder": 41.3, "tokenizer": 41.1, "dit": 27.3},
    ("14b", "v2w"): {"upsampler": ">80.0", "guardrails": 73.3, "text_encoder": 54.8, "tokenizer": 54.5, "dit": 39.0},
}
GIB = 2**30


# ---- building the stand-ins ------------------------------------------------------------------------------------------
def _build(cls, config, device, dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def build_t5(tiny: bool, device):
    from transformers import T5Config, T5EncoderModel

    if tiny:
        from cosmos_dist.models import get_preset

        d = get_preset("tiny_text2world").crossattn_emb_channels
        cfg = T5Config(vocab_size=128, d_model=d, d_ff=64, d_kv=8, num_heads=4, num_layers=2)
    else:  # google-t5/t5-11b
        cfg = T5Config(vocab_size=32128, d_model=1024, d_ff=65536, d_kv=128, num_heads=128, num_layers=24,
                       feed_forward_proj="relu")
    return _build(T5EncoderModel, cfg, device, torch.float32)


def build_upsampler(tiny: bool, device):
    from transformers import MistralConfig, MistralForCausalLM

    if tiny:
        cfg = MistralConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256)
    else:  # Mistral-NeMo-12B (the Cosmos-UpsamplePrompt1-12B family)
        cfg = MistralConfig(vocab_size=131072, hidden_size=5120, intermediate_size=14336, num_hidden_layers=40,
                            num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=4096)
    cfg.eos_token_id = None
    return _build(MistralForCausalLM, cfg, device, torch.bfloat16 if not tiny else torch.float32)


class FaceStandIn(torch.nn.Module):
    """A small convolutional stand-in for RetinaFace-ResNet50's pass over one 704x1280 frame."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 7, stride=2, padding=3), torch.nn.ReLU(),
            torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(4 * width, 16, 1),
        )

    def forward(self, x):
        return self.net(x)


class GuardStandIn:
    """Text guard (a causal LM judging a long moderation prompt), frame classifier encoder, face detector."""

    def __init__(self, kind: str, tiny: bool, device):
        from transformers import LlamaConfig, LlamaForCausalLM

        self.kind = kind
        self.siglip = None
        if tiny:
            cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
            self.text = _build(LlamaForCausalLM, cfg, device, torch.float32)
        elif kind == "aegis":  # meta-llama/LlamaGuard-7b (+ the Aegis LoRA adapter, merged size), bf16
            cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                              num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
            self.text = _build(LlamaForCausalLM, cfg, device, torch.bfloat16)
        else:  # Qwen/Qwen3Guard-Gen-0.6B, float32 as cosmos-guardrail 0.3.2 loads it
            from transformers import Qwen3Config, Qwen3ForCausalLM

            cfg = Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                              num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=4096)
            self.text = _build(Qwen3ForCausalLM, cfg, device, torch.float32)
        self.text.config.eos_token_id = None
        self.text.generation_config.eos_token_id = None
        if kind == "aegis" or tiny:
            from transformers import SiglipConfig, SiglipModel

            if tiny:
                scfg = SiglipConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                     num_attention_heads=2, vocab_size=64),
                                    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                       num_attention_heads=2, image_size=32, patch_size=8))
            else:  # google/siglip-so400m-patch14-384
                scfg = SiglipConfig(
                    text_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                     num_attention_heads=16, vocab_size=32000, max_position_embeddings=64),
                    vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                       num_attention_heads=16, image_size=384, patch_size=14))
            self.siglip = _build(SiglipModel, scfg, device, torch.float32)
        self.face = FaceStandIn(8 if tiny else 64).to(device).eval().requires_grad_(False)
        self.image_size = 32 if tiny else 384

    def modules(self):
        return [m for m in (self.text, self.siglip, self.face) if m is not None]


def build_tokenizer(tiny: bool, device, dtype, decode_chunk: int, encode_chunk: int = 2):
    """(VideoTokenizer, description). Full size: our CV8x8x8 encoder and decoder (what the pipeline runs) with
    random weights."""
    from cosmos_dist.tokenizer import VideoTokenizer
    from cosmos_dist.tokenizer.cv8x8x8 import CV8x8x8Decoder
    from cosmos_dist.tokenizer.cv8x8x8_encoder import CV8x8x8Encoder

    how = f"{decode_chunk} latent frames per chunk" if decode_chunk else "whole clip"
    enc_how = f"{encode_chunk} latent frames' worth per chunk" if encode_chunk else "whole clip"
    if tiny:
        import tempfile

        from cosmos_dist.tokenizer import write_tiny_tokenizer

        d = Path(tempfile.mkdtemp(prefix="measure-tok-"))
        write_tiny_tokenizer(d, seed=0)
        tok = VideoTokenizer.from_dir(d, device=device, dtype=dtype, decode_chunk_frames=decode_chunk,
                                      encode_chunk_frames=encode_chunk)
        return tok, f"tiny CV8x8x8-layout TorchScript stand-in, encode {enc_how}, decode {how}"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            dec = CV8x8x8Decoder()
            enc = CV8x8x8Encoder()
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        for p in [*dec.parameters(), *enc.parameters()]:
            p.normal_(0, 0.02)
    dec = dec.eval().requires_grad_(False)
    enc = enc.eval().requires_grad_(False)
    tok = VideoTokenizer(enc, dec, torch.zeros(16, 16), torch.ones(16, 16), device=device, dtype=dtype,
                         decode_chunk_frames=decode_chunk, encode_chunk_frames=encode_chunk)
    return tok, (f"decoder: cosmos_dist CV8x8x8Decoder, {dec.num_parameters() / 1e6:.1f}M parameters, random, "
                 f"decode {how}; encoder: cosmos_dist CV8x8x8Encoder, {enc.num_parameters() / 1e6:.1f}M "
                 f"parameters, random, encode {enc_how}")


def build_dit(preset: str, device, compile_blocks: bool, fp8: bool = False):
    from cosmos_dist.models import build_dit as build, get_preset
    from cosmos_dist.models.fp8 import convert_blocks_to_fp8

    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    net = build(get_preset(preset), device=device, dtype=dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.02)
        if fp8:  # as the pipeline's load_dit does for precision=fp8: before compiling
            convert_blocks_to_fp8(net)
    if compile_blocks:
        from cosmos_dist.pipeline.plan import compile_blocks as compile_net

        compile_net(net, fp8=fp8)  # as the pipeline's load_dit does
    return net


# ---- one sample's stages --------------------------------------------------------------------------------------------
class Meter:
    def __init__(self, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stages: dict[str, dict] = {}

    def reset(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def peaks(self):
        if not self.cuda:
            return None, None
        return torch.cuda.max_memory_allocated(self.device) / GIB, torch.cuda.max_memory_reserved(self.device) / GIB

    def stage(self, name, fn):
        self.reset()
        t0 = time.perf_counter()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize(self.device)
        alloc, reserved = self.peaks()
        self.stages[name] = {"seconds": round(time.perf_counter() - t0, 3),
                             "peak_allocated_gib": None if alloc is None else round(alloc, 2),
                             "peak_reserved_gib": None if reserved is None else round(reserved, 2)}
        print(f"    stage {name}: {self.stages[name]}", file=sys.stderr, flush=True)  # a run cut short keeps these
        return out


def run_sample(m, res, meter: Meter, args, kind: str, preset_cfg) -> None:
    from cosmos_dist.pipeline.denoiser import latent_shape, sample_latent
    from cosmos_dist.pipeline.plan import PrecisionPlan
    from cosmos_dist.pipeline.residency import uses
    from cosmos_dist.sampling import AUGMENT_STREAM, fixed_noise

    dev = meter.device
    g = torch.Generator(device="cpu").manual_seed(0)

    def guard_text(prompt_len: int):
        with uses(res, "guardrails"):
            ids = torch.randint(0, m.guard.text.config.vocab_size, (1, prompt_len), generator=g).to(dev)
            m.guard.text.generate(ids, max_new_tokens=args.guard_tokens, min_new_tokens=args.guard_tokens,
                                  do_sample=False, pad_token_id=0)

    meter.stage("guardrail_text", lambda: guard_text(args.guard_prompt_tokens))
    if m.upsampler is not None:
        def upsample():
            with uses(res, "upsampler"):
                ids = torch.randint(0, m.upsampler.config.vocab_size, (1, 64), generator=g).to(dev)
                m.upsampler.generate(ids, max_new_tokens=args.upsampler_tokens, min_new_tokens=args.upsampler_tokens,
                                     do_sample=False, pad_token_id=0)
        meter.stage("upsampler", upsample)
        meter.stage("guardrail_text_upsampled", lambda: guard_text(args.guard_prompt_tokens + args.upsampler_tokens))

    def t5():
        with uses(res, "text_encoder"):
            ids = torch.randint(0, m.t5.config.vocab_size, (2, 512), generator=g).to(dev)
            mask = torch.ones_like(ids)
            emb = m.t5(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            return emb.to(preset_cfg.dtype)
    emb = meter.stage("text_encode", t5)
    cond, uncond = emb[:1], emb[1:]

    condition = None
    shape = latent_shape(preset_cfg.run, 16)
    if kind == "v2w":
        from cosmos_dist.pipeline.video2world import Video2WorldCondition

        def encode():
            if m.tokenizer is None or m.tokenizer.encoder is None:
                return torch.zeros(shape, device=dev)
            with uses(res, "tokenizer"):
                clip = torch.zeros(1, 3, preset_cfg.run.num_frames, preset_cfg.run.height, preset_cfg.run.width)
                return m.tokenizer.encode(clip).float()
        gt = meter.stage("condition_encode", encode)
        condition = Video2WorldCondition(gt=gt.to(dev), num_condition_frames=1,
                                         augment_noise=fixed_noise(shape, 1, "measure", AUGMENT_STREAM),
                                         sigma_dtype=m.net.dtype)

    def dit():
        with uses(res, "dit"):
            # The pipeline's own precision plan and sampling function (pipeline/plan.py, pipeline/denoiser.py).
            run = preset_cfg.run
            plan = PrecisionPlan.resolve(run, preset_cfg.layout)
            return sample_latent(net=m.net, plan=plan, runtime=preset_cfg.layout, cfg=run, sample_id="measure", seed=1,
                                 cond=cond.to(dev), uncond=uncond.to(dev), condition=condition)
    latent = meter.stage("dit_sampling", dit)
    del cond, uncond, condition

    frames = None
    if m.tokenizer is not None:
        def decode():
            with uses(res, "tokenizer"):
                return m.tokenizer.decode_to_uint8(latent)
        frames = meter.stage("decode", decode)
    else:
        f = preset_cfg.run.num_frames
        import numpy as np
        frames = np.zeros((f, preset_cfg.run.height, preset_cfg.run.width, 3), dtype=np.uint8)

    def guard_video():
        with uses(res, "guardrails"):
            x = torch.from_numpy(frames).to(dev)
            if m.guard.siglip is not None:
                s = m.guard.image_size
                for start in range(0, x.shape[0], 8):
                    chunk = x[start : start + 8].permute(0, 3, 1, 2).float() / 127.5 - 1
                    chunk = torch.nn.functional.interpolate(chunk, size=(s, s), mode="bilinear")
                    m.guard.siglip.get_image_features(pixel_values=chunk)
            for i in range(x.shape[0]):
                m.guard.face(x[i : i + 1].permute(0, 3, 1, 2).float() - 117.0)
    meter.stage("guardrail_video", guard_video)
    if args.write_video:  # the pipeline's mp4 writer (libx264 on the CPU), so one sample is timed end to end
        from cosmos_dist.io.video import write_mp4_atomic

        out = Path(args.write_video)
        out.mkdir(parents=True, exist_ok=True)
        meter.stage("write_mp4", lambda: write_mp4_atomic(out / f"{kind}.mp4", frames, fps=24))


# ---- the levels -----------------------------------------------------------------------------------------------------
def reset_to_host(store):
    for tensors, hosts in store.values():
        for t, h in zip(tensors, hosts):
            t.data = h


def measure_level(level, m, store, args, kind, preset_cfg, device):
    from cosmos_dist.pipeline.residency import Residency

    reset_to_host(store)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    res = Residency(level, device, pin_memory="auto", dit_stream=not args.no_dit_stream)
    meter = Meter(device)
    t0 = time.perf_counter()
    phase = "load"
    try:
        res.register("guardrails", m.guard.modules())
        if m.upsampler is not None:
            res.register("upsampler", [m.upsampler])
        res.register("text_encoder", [m.t5])
        if m.tokenizer is not None:
            res.register("tokenizer", [m.tokenizer.encoder, m.tokenizer.decoder])
        res.register("dit", [m.net], stream_blocks=m.net.blocks)
        resident = torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else None
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        phase = "sample"
        run_sample(m, res, meter, args, kind, preset_cfg)
    except torch.OutOfMemoryError as exc:
        order = ("guardrail_text", "upsampler", "guardrail_text_upsampled", "text_encode", "condition_encode",
                 "dit_sampling", "decode", "guardrail_video")
        stage = "load (resident models)" if phase == "load" else next((s for s in order if s not in meter.stages), "?")
        result = {"oom": True, "oom_at": stage, "error": str(exc).splitlines()[0][:300], "stages": meter.stages}
        reset_to_host(store)
        del exc
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return result
    total_s = time.perf_counter() - t1
    peaks = [v for v in meter.stages.values()]
    out = {
        "oom": False,
        "resident_after_load_gib": None if resident is None else round(resident, 2),
        "peak_allocated_gib": None if device.type != "cuda" else round(max(v["peak_allocated_gib"] for v in peaks), 2),
        "peak_reserved_gib": None if device.type != "cuda" else round(max(v["peak_reserved_gib"] for v in peaks), 2),
        "sample_seconds": round(total_s, 2),
        "move_seconds": round(res.move_seconds, 2),
        "streamed_gib": round(res.streamed_bytes / GIB, 2),
        "streamed_bytes": res.streamed_bytes,
        "load_seconds": round(load_s, 2),
        "offloaded": res.describe()["offloaded"],
        "stages": meter.stages,
    }
    if out["peak_reserved_gib"] is not None:
        out["peak_reserved_gb"] = round(out["peak_reserved_gib"] * GIB / 1e9, 2)
    return out


def to_store(name, modules, store, pin):
    """Move a component's weights into (pinned) host memory once; every level starts from there."""
    from cosmos_dist.pipeline.residency import _host_copy, _unique_tensors

    tensors = _unique_tensors(modules)
    hosts = []
    for t in tensors:
        h = _host_copy(t, pin)
        t.data = h
        hosts.append(h)
    store[name] = (tensors, hosts)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["7b", "14b"], default="7b")
    ap.add_argument("--kinds", default="t2w", help="comma list of t2w, v2w")
    ap.add_argument("--levels", default=",".join(OFFLOAD_LEVELS), help="comma list, default all six")
    ap.add_argument("--steps", type=int, default=2, help="guided DiT steps (2 reach the peak)")
    ap.add_argument("--cfg-mode", choices=["batch", "sequential"], default="batch",
                    help="batch = the pipeline's single-GPU default (parallel.batch_cfg=true); sequential = the reference")
    ap.add_argument("--no-compile", action="store_true", help="eager DiT blocks (default: compiled, as on CUDA)")
    ap.add_argument("--precision", choices=["bf16", "fp8"], default="bf16",
                    help="the DiT's precision: bf16, or fp8 (FP8 linears + FP8 attention, as precision=fp8)")
    ap.add_argument("--no-dit-stream", action="store_true", help="level dit moves the DiT whole instead of streaming")
    ap.add_argument("--guardrail", choices=["aegis", "qwen3guard"], default="aegis")
    ap.add_argument("--no-upsampler", action="store_true")
    ap.add_argument("--upsampler-tokens", type=int, default=32)
    ap.add_argument("--guard-prompt-tokens", type=int, default=768)
    ap.add_argument("--guard-tokens", type=int, default=8)
    ap.add_argument("--decode-chunk", type=int, default=2,
                    help="latent frames per tokenizer decode chunk (precision.tokenizer_decode_chunk); 0 = whole clip")
    ap.add_argument("--encode-chunk", type=int, default=2,
                    help="latent frames' worth of pixel frames per tokenizer encode chunk (v2w; "
                         "precision.tokenizer_encode_chunk); 0 = whole clip")
    ap.add_argument("--tiny", action="store_true", help="tiny models at 17x32x48 (CPU test of this script)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--write-video", default=None, metavar="DIR",
                    help="also write each sample's mp4 there (the pipeline's writer), timed as stage write_mp4")
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)

    from omegaconf import OmegaConf

    from cosmos_dist.config import GenerateConfig
    from cosmos_dist.pipeline.runtime import SingleProcess

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    pin = device.type == "cuda"
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    levels = [lv.strip() for lv in args.levels.split(",") if lv.strip()]
    for lv in levels:
        if lv not in OFFLOAD_LEVELS:
            ap.error(f"unknown level {lv}")
    t_start = time.perf_counter()
    report = {
        "model": args.model if not args.tiny else "tiny", "device": torch.cuda.get_device_name(device) if pin else "cpu",
        "torch": torch.__version__, "python": platform.python_version(), "steps": args.steps, "cfg_mode": args.cfg_mode,
        "compile": not args.no_compile and pin, "dit_stream": not args.no_dit_stream, "guardrail_standin": args.guardrail,
        "upsampler": not args.no_upsampler, "units": "GiB (2^30 bytes) unless a key says gb", "kinds": {},
    }
    from cosmos_dist.attention.fp8 import resolve_kernel
    from cosmos_dist.attention.local import resolve_attention_kernel

    report["precision"] = args.precision
    report["attention_kernel"] = (f"fp8 {resolve_kernel('auto', device)}" if args.precision == "fp8"
                                  else resolve_attention_kernel("auto", device))  # the config defaults (auto)
    build_dev = device
    m = SimpleNamespace()
    store: dict = {}
    log = lambda *a: print(f"[{time.perf_counter() - t_start:7.1f}s]", *a, file=sys.stderr, flush=True)  # noqa: E731
    log("building guardrail stand-ins")
    m.guard = GuardStandIn(args.guardrail, args.tiny, build_dev)
    to_store("guardrails", m.guard.modules(), store, pin)
    m.upsampler = None
    if not args.no_upsampler:
        log("building the upsampler stand-in")
        m.upsampler = build_upsampler(args.tiny, build_dev)
        to_store("upsampler", [m.upsampler], store, pin)
    log("building T5")
    m.t5 = build_t5(args.tiny, build_dev)
    to_store("text_encoder", [m.t5], store, pin)
    tok_dtype = torch.bfloat16 if pin else torch.float32
    m.tokenizer, tok_note = build_tokenizer(args.tiny, build_dev, tok_dtype, args.decode_chunk, args.encode_chunk)
    to_store("tokenizer", [m.tokenizer.encoder, m.tokenizer.decoder], store, pin)  # a None encoder is skipped
    report["tokenizer"] = tok_note
    report["tokenizer_decode_chunk"] = args.decode_chunk
    report["tokenizer_encode_chunk"] = args.encode_chunk
    log("tokenizer:", tok_note)

    class TokWrap:  # VideoTokenizer + the pipeline's uint8 conversion
        def __init__(self, tok):
            self.tok, self.encoder, self.decoder = tok, tok.encoder, tok.decoder

        def encode(self, clip):
            return self.tok.encode(clip)

        def decode_to_uint8(self, latent):
            from cosmos_dist.tokenizer import frames_to_uint8

            return frames_to_uint8(self.tok.decode(latent)[0])

    if m.tokenizer is not None:
        m.tokenizer = TokWrap(m.tokenizer)

    for kind in kinds:
        preset = ("tiny" if args.tiny else args.model) + ("_text2world" if kind == "t2w" else "_video2world")
        log(f"building the DiT {preset}")
        m.net = build_dit(preset, build_dev, compile_blocks=pin and not args.no_compile, fp8=args.precision == "fp8")
        to_store("dit", [m.net], store, pin)
        run = OmegaConf.structured(GenerateConfig)
        run.num_steps = args.steps
        run.progress = False
        run.device = device.type
        run.parallel.batch_cfg = args.cfg_mode == "batch"
        run.precision.fp8_linear = run.precision.fp8_attention = args.precision == "fp8"
        if args.tiny:
            run.num_frames, run.height, run.width = 17, 32, 48
        preset_cfg = SimpleNamespace(run=run, layout=SingleProcess(), dtype=m.net.dtype,
                                     crossattn=m.net.config.crossattn_emb_channels)
        results = {}
        if pin and not args.no_compile:  # compile once outside the measured levels
            log("compiling the DiT blocks (one warm-up step)")
            # The sampler reads its step count from the run config, not from args: one step here.
            warm_cfg = SimpleNamespace(**{**vars(preset_cfg), "run": OmegaConf.merge(run, {"num_steps": 1})})
            res_warm = measure_level("tokenizer", m, store, SimpleNamespace(**{**vars(args), "steps": 1}), kind, warm_cfg, device)
            results["_compile_warmup"] = {"sample_seconds": res_warm.get("sample_seconds"), "oom": res_warm["oom"]}
        for level in levels:
            log(f"{preset}: offload={level}")
            r = measure_level(level, m, store, args, kind, preset_cfg, device)
            card = CARD_GB.get((args.model, kind), {}).get(level) if not args.tiny else None
            r["card_gb"] = card
            results[level] = r
            log(f"  -> {'OOM at ' + r['oom_at'] if r['oom'] else 'peak reserved %s GiB, sample %.1f s, moves %.1f s' % (r['peak_reserved_gib'], r['sample_seconds'], r['move_seconds'])}")
        base = next((results[lv] for lv in levels if lv in results and not results[lv]["oom"]), None)
        for level in levels:
            r = results[level]
            if not r["oom"] and base is not None:
                r["seconds_added_vs_" + next(lv for lv in levels if results[lv] is base)] = round(
                    r["sample_seconds"] - base["sample_seconds"], 2)
        report["kinds"][kind] = {"preset": preset, "levels": results}
        reset_to_host(store)
        del store["dit"]
        m.net = None
        gc.collect()
        if pin:
            torch.cuda.empty_cache()
    report["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    print(text)
    print(markdown_table(report), file=sys.stderr)
    return 0


def markdown_table(report) -> str:
    lines = ["| kind | level | peak reserved (GiB) | peak allocated (GiB) | card | sample s | moves s |",
             "|---|---|---|---|---|---|---|"]
    for kind, d in report["kinds"].items():
        for level, r in d["levels"].items():
            if level.startswith("_"):
                continue
            if r["oom"]:
                lines.append(f"| {kind} | {level} | OOM ({r['oom_at']}) | | {r.get('card_gb')} | | |")
            else:
                lines.append(f"| {kind} | {level} | {r['peak_reserved_gib']} | {r['peak_allocated_gib']} | "
                             f"{r.get('card_gb')} | {r['sample_seconds']} | {r['move_seconds']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
