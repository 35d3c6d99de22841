"""The pieces a pipeline is made of: device/dtype choice, model loading, sampling, writing."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from cosmos_dist.errors import ConfigError

log = logging.getLogger("cosmos_dist")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str, layout) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device: cuda was asked for but torch sees no CUDA GPU; use device=cpu or device=auto")
        return torch.device("cuda", layout.local_device_index)
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---- models ------------------------------------------------------------------------------------
class TextStage:
    """The T5 encoder with the prompt rules and a cache: the negative prompt is encoded once per run
    and a repeated prompt is not encoded again."""

    def __init__(self, encoder):
        self.encoder = encoder

    def check_prompt(self, prompt: str, allow_long: bool):
        from cosmos_dist.text import check_prompt

        return check_prompt(prompt, self.encoder, allow_long=allow_long)

    def encode_one(self, prompt: str) -> torch.Tensor:
        emb, _ = self.encoder.encode([prompt])
        return emb


def load_text_encoder(path: Path, device, dtype, layout) -> TextStage | None:
    """Only the replica leader holds T5 (11B parameters); it broadcasts embeddings to its replica."""
    if not layout.is_replica_leader:
        return None
    import transformers

    from cosmos_dist.text import T5TextEncoder

    transformers.utils.logging.disable_progress_bar()  # our own bars only; one line per run
    return TextStage(T5TextEncoder.from_dir(path, device=device, dtype=dtype))


def dit_preset(cfg):
    from cosmos_dist.models import get_preset

    preset = get_preset(cfg.model.preset)
    if cfg.model.rope_extrapolation is not None:
        preset = preset.replace(rope_extrapolation=tuple(float(v) for v in cfg.model.rope_extrapolation))
    return preset


def check_dit_file(path: Path, cfg) -> None:
    from cosmos_dist.checkpoint import check_checkpoint

    check_checkpoint(path, dit_preset(cfg))


def load_dit(path: Path, cfg, device, dtype, compile_device=None):
    """`compile_device`: the device the network will run on when it is loaded elsewhere (offload=dit
    loads it on the CPU); decides precision.compile=auto. Default: `device`."""
    from cosmos_dist.checkpoint import checkpoint_identity, load_dit as load

    run_device = torch.device(compile_device if compile_device is not None else device)
    prec = cfg.precision
    linear_kernel = fp8_linear_kernel(prec, run_device)
    if linear_kernel == "te" and torch.device(device).type != run_device.type:
        raise ConfigError(f"precision.fp8_linear_kernel=te: Transformer Engine's layers are built on the GPU, but "
                          "offload=dit loads the DiT on the CPU to stream it; use "
                          "precision.fp8_linear_kernel=cublas with this offload level, or a level above dit")
    net = load(path, cfg=dit_preset(cfg), device=device, dtype=dtype)
    if linear_kernel is not None:
        from cosmos_dist.models.fp8 import convert_blocks_to_fp8

        # Before compiling, so the compiled blocks see the FP8 layers.
        convert_blocks_to_fp8(net, keep_high_precision=prec.fp8_high_precision_steps > 0, kernel=linear_kernel)
    if should_compile(cfg.precision.compile, run_device):
        compile_blocks(net, fp8=prec.fp8_linear or prec.fp8_attention)
    return net, checkpoint_identity(path).to_dict()


# Inductor options for FP8 blocks: with multi_kernel, reductions up to 16,384 wide may be persistent (Inductor
# times both forms once and keeps the faster), so the per-token amax + e4m3 cast of the MLP's hidden rows reads
# each row once instead of twice: 4.90 -> 4.83 s per 7B FP8 step on an H100, while BF16 blocks gained nothing
# (6.60 vs 6.62 s), so they keep Inductor's defaults (docs/PERFORMANCE.md).
FP8_COMPILE_OPTIONS = {"triton.multi_kernel": 1}


def compile_blocks(net, fp8: bool = False) -> None:
    """torch.compile each transformer block in place (parameter names stay the checkpoint's)."""
    for block in net.blocks.values():
        block.compile(dynamic=False, options=FP8_COMPILE_OPTIONS if fp8 else None)


def should_compile(setting, device: torch.device) -> bool:
    setting = str(setting).lower()
    return device.type == "cuda" if setting == "auto" else setting == "true"


class TokenizerStage:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def decode_to_uint8(self, latent: torch.Tensor):
        from cosmos_dist.tokenizer import frames_to_uint8

        video = self.tokenizer.decode(latent)
        return frames_to_uint8(video[0])


def load_tokenizer(path: Path, device, dtype, layout, decode_chunk_frames: int = 2,
                   encode_chunk_frames: int = 2) -> TokenizerStage:
    """decode_chunk_frames: latent frames per decoder chunk (precision.tokenizer_decode_chunk); encode_chunk_frames:
    latent frames' worth of pixels per encoder chunk (precision.tokenizer_encode_chunk); 0 = whole clip."""
    from cosmos_dist.tokenizer import VideoTokenizer

    return TokenizerStage(
        VideoTokenizer.from_dir(path, device=device, dtype=dtype, decode_chunk_frames=decode_chunk_frames,
                                encode_chunk_frames=encode_chunk_frames)
    )


# ---- sampling -----------------------------------------------------------------------------------
def latent_shape(cfg, channels: int = 16) -> tuple[int, ...]:
    return (1, channels, 1 + (cfg.num_frames - 1) // 8, cfg.height // 8, cfg.width // 8)


def sampler_settings(cfg):
    from cosmos_dist.sampling import SamplerSettings

    s = cfg.sampler
    return SamplerSettings(name=s.name, num_steps=cfg.num_steps, sigma_min=s.sigma_min, sigma_max=s.sigma_max, rho=s.rho)


def mask_tokens(net, shape, device, dtype, condition_mask=None) -> torch.Tensor:
    """The non-latent input channels (condition mask, padding mask) as patch tokens (1, N, k)."""
    b, c, t, h, w = shape
    zeros = torch.zeros(shape, device=device, dtype=dtype)
    padding = torch.zeros(1, 1, h * 8, w * 8, device=device, dtype=dtype)  # the reference's all-zero mask
    full, _ = net.patchify(net.input_channels(zeros, padding, condition_mask))
    return full[..., c * net.config.patch_volume :]


def _resolve_kernel_setting(prec, setting: str, resolve, device) -> str:
    """`resolve(precision.<setting>, device)`; its RuntimeError (cannot run here) as a ConfigError naming the field."""
    try:
        return resolve(getattr(prec, setting), device)
    except RuntimeError as exc:
        raise ConfigError(f"precision.{setting}: {exc}") from None


def fp8_linear_kernel(prec, device) -> str | None:
    """The FP8 linear precision.fp8_linear_kernel means on `device` (cublas, te or emulated; None without FP8
    linears); a ConfigError where it cannot run there."""
    if not prec.fp8_linear:
        return None
    from cosmos_dist.models.fp8 import resolve_linear_kernel

    return _resolve_kernel_setting(prec, "fp8_linear_kernel", resolve_linear_kernel, device)


def check_fp8_attention_parallel(kernel: str | None, cp_impl: str) -> None:
    """FP8 self-attention under context parallelism: ring and usp merge partial results by their
    log-sum-exp, which Transformer Engine's attention does not return; cp_impl=te runs TE's own
    context-parallel attention, in BF16, whatever the FP8 kernel."""
    if kernel is None or cp_impl == "local":
        return
    if cp_impl == "te":
        raise ConfigError("parallel.cp_impl=te runs Transformer Engine's own attention in BF16, so "
                          "precision.fp8_attention would not apply; use parallel.cp_impl=ulysses, ring or usp with FP8 "
                          "attention (or precision.fp8_attention=false)")
    if kernel == "te" and cp_impl in ("ring", "usp"):
        from cosmos_dist.attention.fp8_te import NO_LSE

        raise ConfigError(NO_LSE.format(impl=cp_impl))


def fp8_attention_kernel(prec, device) -> str | None:
    """The FP8 self-attention kernel precision.fp8_attention_kernel means on `device` (None without FP8
    attention); a ConfigError where it cannot run there."""
    if not prec.fp8_attention:
        return None
    from cosmos_dist.attention.fp8 import resolve_kernel

    return _resolve_kernel_setting(prec, "fp8_attention_kernel", resolve_kernel, device)


def attention_kernel(prec, device) -> str:
    """The local self-attention kernel precision.attention_kernel means on `device` (fa3, sdpa, ...); a
    ConfigError where it cannot run there."""
    from cosmos_dist.attention.local import resolve_attention_kernel

    return _resolve_kernel_setting(prec, "attention_kernel", resolve_attention_kernel, device)


def attention_kernels(cfg, layout, grid, num_heads, num_steps, kernel: str = "sdpa"):
    """The local attention kernels: the FP8 ones for precision.fp8_attention, else those of the resolved
    `kernel` (precision.attention_kernel); and the steps that run without FP8 (precision.fp8_high_precision_steps
    first and last) with the self-attention they use."""
    from cosmos_dist.attention.local import local_kernels

    prec = cfg.precision
    local = local_kernels(kernel)
    if prec.fp8_attention:
        from functools import partial

        from cosmos_dist.attention.fp8 import fp8_attention, fp8_attention_with_lse

        fp8_kernel = prec.fp8_attention_kernel
        local = {"local": partial(fp8_attention, kernel=fp8_kernel),
                 "lse_kernel": partial(fp8_attention_with_lse, kernel=fp8_kernel)}
    k = prec.fp8_high_precision_steps if (prec.fp8_linear or prec.fp8_attention) else 0
    if k == 0:
        return local, frozenset(), None
    steps = frozenset(range(min(k, num_steps))) | frozenset(range(max(0, num_steps - k), num_steps))
    hp_attention = (layout.denoiser_options(cfg.parallel, grid, num_heads, **local_kernels(kernel))["self_attention"]
                    if prec.fp8_attention else None)
    return local, steps, hp_attention


def sample_latent(pipe, sample_id: str, seed: int, cond, uncond, condition=None) -> torch.Tensor:
    """Run the sampler on this rank's token shard; returns the full latent (1, 16, T, H, W) float32
    on the replica leader (None elsewhere).

    `condition` (Video2World, None for Text2World): an object with `mask`, the condition-mask channel
    (1, 1, T, H, W), and `step_hooks(net, token_range)`, the sampler's StepHooks on this rank's shard."""
    from cosmos_dist.pipeline.denoiser import GuidedDenoiser
    from cosmos_dist.sampling import initial_noise

    cfg, net, layout = pipe.cfg, pipe.net, pipe.layout
    shape = latent_shape(cfg, net.config.latent_channels)
    settings = sampler_settings(cfg)
    noise = initial_noise(shape, seed, sample_id, sigma_max=settings.sigma_max)
    noise_tokens, grid = net.patchify(noise)
    token_range = layout.token_range(noise_tokens.shape[1])
    if token_range is not None:
        noise_tokens = noise_tokens[:, token_range[0] : token_range[1]]
    extra = mask_tokens(net, shape, pipe.device, net.dtype, None if condition is None else condition.mask)
    if token_range is not None:
        extra = extra[:, token_range[0] : token_range[1]]
    local, hp_steps, hp_attention = attention_kernels(cfg, layout, grid, net.config.num_heads, settings.num_steps,
                                                      pipe.attention_kernel)
    denoiser = GuidedDenoiser(
        net=net, grid=grid, fps=cfg.fps, cond_emb=cond, uncond_emb=uncond, guidance=cfg.guidance,
        extra_tokens=extra, token_range=token_range,
        high_precision_steps=hp_steps, hp_self_attention=hp_attention,
        **layout.denoiser_options(cfg.parallel, grid, net.config.num_heads, **local),
    )
    bar = progress_bar(settings.num_network_evaluations, "steps", cfg.progress and layout.is_global_leader, leave=False)
    hooks = None if condition is None else condition.step_hooks(net, token_range)
    out = settings.sample(
        denoiser, noise_tokens.to(pipe.device), dtype=net.dtype, hooks=hooks, progress=lambda i, n: bar.update(1)
    )
    bar.close()
    full = layout.gather_tokens(out)
    if full is None:
        return None
    return net.unpatchify(full.float(), grid)


# ---- outputs -------------------------------------------------------------------------------------
def precision_record(pipe) -> dict:
    rec = {"dit": dtype_name(pipe.dit_dtype), "tokenizer": dtype_name(pipe.tokenizer_dtype), "text_encoder": dtype_name(pipe.text_dtype),
           "attention_kernel": pipe.attention_kernel}
    prec = pipe.cfg.precision
    if prec.fp8_linear or prec.fp8_attention:
        rec["dit_fp8"] = {
            "linear": bool(prec.fp8_linear),
            "attention": bool(prec.fp8_attention),
            "high_precision_steps": int(prec.fp8_high_precision_steps),
        }
        if prec.fp8_linear:
            rec["dit_fp8"]["linear_kernel"] = pipe.fp8_linear_kernel
        if prec.fp8_attention:
            rec["dit_fp8"]["attention_kernel"] = pipe.fp8_attention_kernel
    return rec


def write_outputs(pipe, item, latent, frames, timings, t_start, *, prompt, negative, seed, notes, manifest):
    """mp4 (+ latent) under temporary names, then the sidecar, then the manifest line."""
    from cosmos_dist.io.records import build_sidecar, write_json_atomic
    from cosmos_dist.io.video import write_mp4_atomic
    from cosmos_dist.sampling import sample_seed

    cfg, out = pipe.cfg, pipe.output_dir
    t0 = time.perf_counter()
    mp4 = out / f"{item.sample_id}.mp4"
    write_mp4_atomic(mp4, frames, fps=cfg.fps, crf=cfg.video.crf, preset=cfg.video.preset)
    files = {"video": mp4.name}
    if cfg.save_latents:
        lat = out / f"{item.sample_id}.latent.pt"
        from cosmos_dist.io.safefiles import save_atomic

        save_atomic(lat, lambda f: torch.save(latent.cpu(), f))  # exclusive hidden temporary, removed on failure
        files["latent"] = lat.name
    timings["write_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    sidecar = build_sidecar(
        sample_id=item.sample_id,
        prompt=prompt,
        original_prompt=item.prompt if prompt != item.prompt else None,
        negative_prompt=negative,
        seed=seed,
        sample_seed=sample_seed(seed, item.sample_id),
        model={"preset": cfg.model.preset, "kind": pipe.kind, "random_weights": bool(cfg.model.random_weights)},
        checkpoint=pipe.checkpoint_info,
        sampler={**sampler_settings(cfg).to_dict(), "guidance": cfg.guidance},
        resolution={"num_frames": cfg.num_frames, "height": cfg.height, "width": cfg.width, "fps": cfg.fps},
        parallel=pipe.layout.describe(),
        precision=precision_record(pipe),
        timings={k: round(v, 4) for k, v in timings.items()},
        notes=notes,
        files=files,
        source_line=item.line_number,
        extra={"config": resolved_config(cfg), **getattr(pipe, "sidecar_extra", lambda item: {})(item)},
    )
    write_json_atomic(out / f"{item.sample_id}.json", sidecar)
    manifest.append(status="done", sample_id=item.sample_id, line=item.line_number, reason=None)
    log.info("wrote %s (+ %s.json) in %.1f s", mp4, item.sample_id, timings["total_s"])


def resolved_config(cfg) -> dict:
    """The whole run configuration as plain data, for the sidecar (reproduces the sample)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def progress_bar(total: int, unit: str, enabled: bool, leave: bool = True):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    # Bars on a terminal only: in Slurm logs and pipes they are escape-code noise (the log lines
    # below say what was written).
    return tqdm(total=total, unit=unit.rstrip("s"), desc=unit, leave=leave, dynamic_ncols=True, disable=None)
