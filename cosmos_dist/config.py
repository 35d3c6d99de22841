"""Typed configuration for `generate.py`, registered in Hydra's ConfigStore.

The dataclasses are the schema: Hydra merges `conf/generate.yaml` and the group files onto them, so
a misspelt key or a wrong type is refused by OmegaConf before anything runs. Value checks that need
more than a type (frame counts of the form 1 + 8k, sizes divisible by 16, ...) live in
`validate_config`, which names the field and the fix.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional

from cosmos_dist import choices
from cosmos_dist.choices import CACHE_POLICIES, OFFLOAD_LEVELS, one_of  # noqa: F401  (the lists: re-exported)
from cosmos_dist.errors import ConfigError

# The reference's default negative prompt, verbatim (spec 1.1).
DEFAULT_NEGATIVE_PROMPT = (
    "The video captures a series of frames showing ugly scenes, static with no motion, motion blur, "
    "over-saturation, shaky footage, low resolution, grainy texture, pixelated images, poorly lit areas, "
    "underexposed and overexposed scenes, poor color balance, washed out colors, choppy sequences, jerky "
    "movements, low frame rate, artifacting, color banding, unnatural transitions, outdated special effects, "
    "fake elements, unconvincing visuals, poorly edited content, jump cuts, visual noise, and flickering. "
    "Overall, the video is of poor quality."
)


@dataclass
class ModelConfig:
    preset: str = "7b_text2world"  # DiT preset: {tiny,7b,14b}_{text2world,video2world}
    dit_dir: str = "Cosmos-Predict1-7B-Text2World"  # under checkpoint_dir; holds model.pt or model.safetensors
    tokenizer_dir: str = "Cosmos-Tokenize1-CV8x8x8-720p"
    text_encoder_dir: str = "google-t5/t5-11b"
    # Tiny presets only: create random-weight files in the real layout when they are missing.
    random_weights: bool = False
    # RoPE NTK ratios (t, h, w); None = the reference's value for this size.
    rope_extrapolation: Optional[List[float]] = None


@dataclass
class SamplerConfig:
    name: str = "euler"  # euler (the reference's inference sampler) | res (RES 2ab)
    sigma_min: float = 0.0002
    sigma_max: float = 80.0
    rho: float = 7.0


@dataclass
class PrecisionConfig:
    name: str = "auto"
    dit_dtype: str = "auto"  # auto = bfloat16 on CUDA, float32 on the CPU | bfloat16 | float32
    text_encoder_dtype: str = "float32"  # the reference runs T5 in float32
    tokenizer_dtype: str = "auto"
    # Latent frames the video decoder takes at a time (CV8x8x8 layout: our own decoder, causal in time, so chunks
    # carrying the past give the whole clip's numbers): 2 = 1 + 8 then 16 pixel frames a chunk, a fraction of
    # the ~30 GB a whole 121x704x1280 clip needs. 0 = the whole clip at once. See cosmos_dist/tokenizer/video.py.
    tokenizer_decode_chunk: int = 2
    # Latent frames' worth of pixel frames the video encoder takes at a time (Video2World's conditioning clip;
    # CV8x8x8 layout: our own encoder, causal in time, so the chunks give the whole clip's latent): 2 = 1 + 16
    # then 16 pixel frames a chunk. The whole 121x704x1280 clip at once is the v2w peak at full offload.
    # 0 = the whole clip at once.
    tokenizer_encode_chunk: int = 2
    # torch.compile each transformer block (fuses norms, modulation, RoPE and gating: 8.5 -> 7.1 s
    # per guided 7B step on an H100). auto = on for CUDA, off on the CPU (compiling costs ~1 min).
    compile: str = "auto"
    # Local self-attention kernel (BF16, and FP8's high-precision steps): fa3 (FlashAttention-3 on Hopper; needs
    # `pip install fa3-fwd` or an upstream FA3 build: 6.6 vs 7.1 s per guided 7B step on an H100), sdpa (PyTorch's
    # choice), cudnn, flash, efficient, or auto = fa3 where it can run, else sdpa.
    attention_kernel: str = "auto"
    # FP8 (e4m3) for the DiT on Hopper-class GPUs (precision=fp8): matrix products of the transformer blocks
    # through torch._scaled_mm with row-wise scales, and self-attention in FP8 (kernel below).
    # On the CPU the same quantisation is emulated in float32 (slow; for tests). See docs/PERFORMANCE.md.
    fp8_linear: bool = False
    fp8_attention: bool = False
    # FP8 linear kernel: cublas (torch._scaled_mm, one scale per weight row and per token, fused into the
    # compiled blocks), te (Transformer Engine's te.Linear, one scale per tensor; needs `pip install
    # cosmos-dist[te]`; not measured on this project's GPU), or auto = cublas.
    fp8_linear_kernel: str = "auto"
    # FP8 self-attention kernel: cudnn (cuDNN's fused FP8 attention; needs `pip install nvidia-cudnn-frontend`,
    # 54 vs 70 ms for Triton at the 7B shape on an H100), fa3 (FlashAttention-3's FP8 kernel, as fast as cuDNN's;
    # needs fa3-fwd), triton (our kernel, no extra package), te (Transformer Engine's FP8 DotProductAttention;
    # not with cp_impl ring/usp), or auto = cudnn, else fa3, else triton.
    fp8_attention_kernel: str = "auto"
    # Run this many first and as many last sampling steps without FP8 (keeps a high-precision copy of the
    # converted weights: 1.5x their memory).
    fp8_high_precision_steps: int = 0


@dataclass
class ParallelConfig:
    """How one job spreads over its processes (the `parallel.*` keys; also what init_layout takes).

    World = dp x cfg x cp (cosmos_dist/parallel/layout.py): the processes left over after one replica's
    cfg x cp ranks are data parallel.
    """

    # Ranks that share one sample's token sequence (context parallel).
    cp_size: int = 1
    # Self-attention across the cp group: auto | ulysses | ring | usp | te (choices.CP_IMPLS).
    cp_impl: str = "auto"
    # Run the conditional and unconditional CFG branches on two rank groups at once.
    cfg_parallel: bool = False
    # Timeout of every process group: a collective that waits longer fails instead of hanging.
    timeout_s: float = 600
    # Single rank: run cond + uncond as one batch of 2.
    batch_cfg: bool = True
    # cp_impl=usp (ulysses x ring): the ulysses group size, a divisor of cp_size and of the head count;
    # None picks the largest that fits in one node.
    ulysses_size: Optional[int] = None
    # cp_impl=te: Transformer Engine's cp_comm_type (choices.TE_COMM_TYPES).
    te_comm_type: str = "p2p"

    @classmethod
    def from_node(cls, node: Any) -> "ParallelConfig":
        """A plain ParallelConfig from the composed `cfg.parallel` (an OmegaConf node or this class)."""
        if isinstance(node, cls):
            return node
        u = node.get("ulysses_size", None)
        return cls(
            cp_size=int(node.cp_size), cp_impl=str(node.cp_impl), cfg_parallel=bool(node.cfg_parallel),
            timeout_s=float(node.timeout_s), batch_cfg=bool(node.get("batch_cfg", True)),
            ulysses_size=None if u is None else int(u), te_comm_type=str(node.get("te_comm_type", "p2p")),
        )

    def validate(self) -> None:
        if isinstance(self.cp_size, bool) or not isinstance(self.cp_size, int) or self.cp_size < 1:
            raise ConfigError(f"parallel.cp_size: must be a positive integer; got {self.cp_size!r}")
        if self.cp_impl not in choices.CP_IMPLS:
            raise ConfigError(f"parallel.cp_impl: {self.cp_impl!r}; choose {one_of(choices.CP_IMPLS)}")
        if not self.timeout_s or self.timeout_s <= 0:
            raise ConfigError(f"parallel.timeout_s: must be > 0 seconds; got {self.timeout_s!r}")
        if self.ulysses_size is not None:
            u = self.ulysses_size
            if isinstance(u, bool) or not isinstance(u, int) or u < 1 or self.cp_size % u:
                raise ConfigError(
                    f"parallel.ulysses_size: parallel.ulysses_size={u!r} must be a positive divisor of "
                    f"parallel.cp_size={self.cp_size}"
                )
        if self.te_comm_type not in choices.TE_COMM_TYPES:
            raise ConfigError(
                f"parallel.te_comm_type: {self.te_comm_type!r}; choose {one_of(choices.TE_COMM_TYPES)}"
            )

    @property
    def cfg_size(self) -> int:
        return 2 if self.cfg_parallel else 1


@dataclass
class OffloadConfig:
    # none | upsampler | guardrails | text_encoder | tokenizer | dit: an offloaded model waits in pinned
    # CPU memory and is moved to the GPU only for its stage.
    level: str = "none"
    # When something is offloaded, pending samples are processed in chunks of this many: text stage
    # for the whole chunk, then the DiT for the chunk, then decode/check/write, so each offloaded
    # model moves once per chunk. 1 = strictly one sample after the other.
    chunk: int = 16
    pin_memory: str = "auto"  # auto (pin when the run device is CUDA) | true | false
    # Level dit: stream the DiT's transformer blocks to the GPU one at a time (the next one copied
    # while the current one computes) instead of moving the whole network in for sampling.
    dit_stream: bool = True


@dataclass
class GuardrailConfig:
    """Text check before anything else, video check + face blur after decoding (replica leader only)."""

    enabled: bool = True
    # cosmos: NVIDIA's cosmos-guardrail package (pip install 'cosmos-dist[guardrail]').
    # keyword: a small word-list provider (tests, tiny models); it is NOT a safety filter.
    provider: str = "cosmos"
    checkpoint_id: Optional[str] = None  # cosmos: guardrail checkpoint id for the package; None = its default
    # keyword provider: words/phrases that block a prompt (case-insensitive, whole words)
    blocklist: List[str] = field(default_factory=list)
    # keyword provider: block a video whose mean pixel value (0..255) is outside [lo, hi]; None = never
    video_mean_range: Optional[List[float]] = None


@dataclass
class UpsamplerConfig:
    """Prompt upsampler: a local causal language model (transformers) rewrites short prompts."""

    enabled: bool = False
    model_dir: Optional[str] = None  # a Hugging Face-format model directory (absolute, or under checkpoint_dir)
    max_new_tokens: int = 512  # the reference's max_gen_len
    temperature: float = 0.0  # 0 = greedy decoding (the reference samples at 0.01)
    word_limit: int = 250  # prompts with more words are left as they are (the reference's default)
    dtype: str = "auto"  # auto = bfloat16 on CUDA, float32 on the CPU


@dataclass
class VideoConfig:
    crf: int = 23  # x264 constant rate factor; the reference's quality=5 is crf 25
    preset: str = "medium"
    # Finished samples waiting for the background writer (mp4 encode, latent, sidecar) while the GPU samples the
    # next one; each holds its decoded frames (~330 MB at 121 x 704 x 1280). 0 writes inline (pipeline/writer.py).
    write_queue: int = 2


@dataclass
class CacheConfig:
    """Training-free step caching: reuse the transformer blocks' residual of an earlier step when the input changed
    little. Opt-in; see README "Step caching" and cosmos_dist/pipeline/step_cache.py."""

    policy: str = "none"  # none | teacache | fbcache
    # Reuse while the policy's change statistic stays under this (teacache: accumulated rescaled relative L1 of
    # block 0's modulated input, published 0.3 / 0.4; fbcache: relative L1 change of block 0's residual).
    # 0 never reuses. Pick it with tools/cache_sweep.py.
    threshold: float = 0.0
    # teacache: the polynomial (highest power first) that rescales the relative L1 change; the default is the one
    # published for Cosmos-1.0-Diffusion-7B (ali-vilab/TeaCache, TeaCache4Cosmos).
    coefficients: List[float] = field(
        default_factory=lambda: [2.71156237e02, -9.19775607e01, 2.24437250e00, 2.08355751e00, 1.41776330e-01]
    )
    max_consecutive_reuse: int = 0  # at most this many reused steps in a row per branch; 0 = no limit


@dataclass
class GenerateConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    guardrail: GuardrailConfig = field(default_factory=GuardrailConfig)
    upsampler: UpsamplerConfig = field(default_factory=UpsamplerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)

    prompt: Optional[str] = None
    prompts_file: Optional[str] = None
    name: Optional[str] = None  # sample id for a single `prompt=` run; derived from the prompt if unset
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    num_steps: int = 35
    guidance: float = 7.0
    seed: int = 1
    fps: int = 24
    num_frames: int = 121
    height: int = 704
    width: int = 1280
    allow_long_prompts: bool = False

    # Video2World only: the conditioning image or video (a prompts-file line's `input_path` / `visual_input`
    # and `num_input_frames` win over these), how many of its last frames condition the clip (1 or 9, as the
    # reference), and how it is fitted to height x width: stretch (the reference: aspect ratio not kept) |
    # crop (centre crop) | pad (mid-grey bars). See cosmos_dist/io/visual_input.py.
    input_path: Optional[str] = None
    num_input_frames: int = 1
    resize_mode: str = "stretch"
    # Video2World only: how the condition frames' network output is replaced each step. intended: the denoised
    # estimate equals the encoded input, so the input is the video's first frame(s) | reference: the reference's
    # code as written (gt / c_out - c_skip * x), whose condition frames drift from the input; for comparing
    # with NVIDIA's scripts. See cosmos_dist/sampling/condition.py.
    condition_replacement: str = "intended"

    checkpoint_dir: str = "checkpoints"
    output_dir: str = "outputs"
    save_latents: bool = False
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True
    # In a log that is not a terminal (Slurm): seconds between two progress lines of a sample (step, sigma,
    # elapsed, ETA); the last step always logs one. 0 logs every step.
    progress_every_s: float = 30.0
    # info: one line per stage and sample; debug: also the libraries' own start-up notes (megatron-core's
    # banners), which are silenced otherwise; warning / error: less.
    log_level: str = "info"

    # Dataset scale: this process takes shard `shard_index` of `num_shards` of the prompts file.
    num_shards: int = 1
    shard_index: int = 0

    # Videos per prompt: `num_videos_per_prompt` seeds counted from `seed` (video 0 uses `seed` itself), or exactly
    # the seeds of `seeds=[...]`; a prompts-file line's own `seed` / `num_videos_per_prompt` / `seeds` win.
    # Sample ids: {prompt id}_s{seed}_{settings hash} (cosmos_dist/io/identity.py).
    num_videos_per_prompt: int = 1
    seeds: Optional[List[int]] = None
    # Folder layout of output_dir: flat (every file in it), sharded (output_dir/ab/cd/: at most 256 entries per
    # folder level), or auto (the layout the tree already has, else flat). See cosmos_dist/io/paths.py.
    output_layout: str = "auto"


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="generate_schema", node=GenerateConfig)


#: Seeds (the run's `seed` and a prompts-file line's `seed`) are non-negative 63-bit integers.
SEED_LIMIT = 2**63


def check_seed(value: Any, key: str = "seed") -> int:
    """The one rule for a seed, on the command line and in a prompts file; ConfigError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: must be an integer; got {value!r}")
    if not 0 <= value < SEED_LIMIT:
        raise ConfigError(f"{key}: {value} must be in [0, 2**63) (e.g. seed=1)")
    return value


#: Largest num_videos_per_prompt / seeds list: a typo (num_videos_per_prompt=1000000) must not expand a
#: million-line file into a trillion samples before anything is checked.
MAX_VIDEOS_PER_PROMPT = 1000


def check_seed_list(value: Any, key: str = "seeds") -> list[int]:
    """A list of distinct seeds, one video each (the run's `seeds=[...]`, a line's `seeds`)."""
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"{key}: must be a list of integers; got {value!r} (e.g. seeds=[1,2,3])")
    seeds = list(value)[: MAX_VIDEOS_PER_PROMPT + 1]
    for v in seeds:
        check_seed(v, f"{key} entry")
    if not seeds:
        raise ConfigError(f"{key}: is empty; give at least one seed")
    if len(seeds) > MAX_VIDEOS_PER_PROMPT:
        raise ConfigError(f"{key}: has more than {MAX_VIDEOS_PER_PROMPT} seeds")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{key}: repeats a seed: {seeds}; each seed is one video")
    return seeds


def check_num_videos(value: Any, key: str = "num_videos_per_prompt") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VIDEOS_PER_PROMPT:
        raise ConfigError(f"{key}: must be an integer in 1..{MAX_VIDEOS_PER_PROMPT}; got {value!r}")
    return value


def check_num_input_frames(value: Any, key: str = "num_input_frames") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in choices.NUM_INPUT_FRAMES:
        raise ConfigError(f"{key}: {value!r}; choose 1 (an image or a video's last frame) or 9 (a video's last 9 frames)")
    return value


def check_resize_mode(value: Any, key: str = "resize_mode") -> str:
    if value not in choices.RESIZE_MODES:
        raise ConfigError(f"{key}: {value!r}; choose {one_of(choices.RESIZE_MODES)} (stretch is the reference's)")
    return value


def check_text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string; got {type(value).__name__}")
    return value


#: Per-sample keys that can come from the command line (the run's value) and from a prompts-file line (that
#: sample's value), with the one check both go through.
SAMPLE_FIELD_CHECKS = {
    "seed": check_seed,
    "seeds": check_seed_list,
    "num_videos_per_prompt": check_num_videos,
    "negative_prompt": check_text,
    "num_input_frames": check_num_input_frames,
    "resize_mode": check_resize_mode,
}


def validate_sample_fields(fields: Mapping[str, Any], where: str = "") -> None:
    """Check the per-sample keys of `fields` (a prompts-file line's object, or the command line's values) with
    the same rules; ConfigError `"{where}{key}: why"`. Keys this does not know are left to the caller; None
    means "not given"."""
    for key, check in SAMPLE_FIELD_CHECKS.items():
        value = fields.get(key)
        if value is not None:
            check(value, f"{where}{key}")


def validate_config(cfg: Any, *, needs_prompt: bool = True) -> None:
    """Checks that need more than a type. Raises ConfigError naming the field and the fix. `needs_prompt=False`:
    the Python API, whose calls bring the prompts."""

    def bad(fieldname: str, why: str) -> None:
        raise ConfigError(f"{fieldname}: {why}")

    if needs_prompt and not cfg.prompt and not cfg.prompts_file:
        bad("prompt", 'give prompt="..." or prompts_file=path/to/prompts.jsonl')
    if cfg.prompt and cfg.prompts_file:
        bad("prompt", "give either prompt=... or prompts_file=..., not both")
    validate_sample_fields({"seed": cfg.seed, "negative_prompt": cfg.negative_prompt})
    if cfg.num_frames < 1 or (cfg.num_frames - 1) % 8:
        bad("num_frames", f"{cfg.num_frames} is not of the form 1 + 8k (the tokenizer is causal 8x in time); use 121, 57, 17 or 9")
    for key in ("height", "width"):
        v = getattr(cfg, key)
        if v < 16 or v % 16:
            bad(key, f"{v} must be a positive multiple of 16 (8x tokenizer x 2x patch); e.g. 704x1280")
    if cfg.height // 16 > 120 or cfg.width // 16 > 120:
        bad("height", f"{cfg.height}x{cfg.width} (height x width) exceeds the model's position tables (at most 1920 pixels a side)")
    if cfg.num_steps < 1:
        bad("num_steps", f"{cfg.num_steps} must be at least 1 (the reference uses 35)")
    if cfg.guidance < 0:
        bad("guidance", f"{cfg.guidance} must be >= 0 (0 disables classifier-free guidance; the reference uses 7)")
    if cfg.fps <= 0:
        bad("fps", f"{cfg.fps} must be positive (the reference uses 24)")
    if cfg.sampler.name not in choices.SAMPLERS:
        bad("sampler.name", f"{cfg.sampler.name!r}; choose {one_of(choices.SAMPLERS)}")
    if not 0 < cfg.sampler.sigma_min < cfg.sampler.sigma_max:
        bad("sampler.sigma_min", "need 0 < sigma_min < sigma_max")
    for key in ("dit_dtype", "tokenizer_dtype", "text_encoder_dtype"):
        v = getattr(cfg.precision, key)
        if v not in choices.DTYPES:
            bad(f"precision.{key}", f"{v!r}; choose {one_of(choices.DTYPES)}")
    if cfg.precision.tokenizer_decode_chunk < 0:
        bad("precision.tokenizer_decode_chunk", f"{cfg.precision.tokenizer_decode_chunk} must be >= 0 (latent frames "
            "per decoder chunk; 0 = the whole clip)")
    if cfg.precision.tokenizer_encode_chunk < 0:
        bad("precision.tokenizer_encode_chunk", f"{cfg.precision.tokenizer_encode_chunk} must be >= 0 (latent frames' "
            "worth of pixel frames per encoder chunk; 0 = the whole clip)")
    if str(cfg.precision.compile).lower() not in choices.AUTO_BOOL:
        bad("precision.compile", f"{cfg.precision.compile!r}; choose {one_of(choices.AUTO_BOOL)}")
    for key, allowed in (("attention_kernel", choices.ATTENTION_KERNELS),
                         ("fp8_linear_kernel", choices.FP8_LINEAR_KERNELS),
                         ("fp8_attention_kernel", choices.FP8_ATTENTION_KERNELS)):
        v = getattr(cfg.precision, key)
        if v not in allowed:
            bad(f"precision.{key}", f"{v!r}; choose {one_of(allowed)}")
    if cfg.precision.fp8_high_precision_steps < 0:
        bad("precision.fp8_high_precision_steps", f"{cfg.precision.fp8_high_precision_steps} must be >= 0")
    if (cfg.precision.fp8_linear or cfg.precision.fp8_attention) and cfg.precision.dit_dtype == "float32":
        bad("precision.dit_dtype", "FP8 runs beside a bfloat16 network; use dit_dtype=bfloat16 or auto with fp8")
    if cfg.device not in choices.DEVICES:
        bad("device", f"{cfg.device!r}; choose {one_of(choices.DEVICES)}")
    if str(cfg.get("log_level", "info")).lower() not in choices.LOG_LEVELS:
        bad("log_level", f"{cfg.log_level!r}; choose {one_of(choices.LOG_LEVELS)}")
    if not float(cfg.progress_every_s) >= 0:
        bad("progress_every_s", f"{cfg.progress_every_s} must be >= 0 (seconds between progress lines; 0 = every step)")
    if not 0 <= cfg.video.write_queue <= 64:
        bad("video.write_queue", f"{cfg.video.write_queue} must be in 0..64 (0 writes each video inline; 2 is the default)")
    if not 0 <= cfg.video.crf <= 51:
        bad("video.crf", f"{cfg.video.crf} must be in 0..51 (lower is better quality; 23 is x264's default)")
    validate_samples_and_layout(cfg, bad)
    if cfg.num_shards < 1 or not 0 <= cfg.shard_index < cfg.num_shards:
        bad("shard_index", f"{cfg.shard_index} must be in 0..num_shards-1 (num_shards={cfg.num_shards})")
    ParallelConfig.from_node(cfg.parallel).validate()
    if cfg.name is not None and cfg.prompts_file:
        bad("name", "name= names the sample of a single prompt=; in a prompts file give each line an `id`")
    video2world = str(cfg.model.preset).endswith("_video2world")
    if video2world:
        if needs_prompt and not cfg.input_path and not cfg.prompts_file:
            bad("input_path", "Video2World needs the conditioning image or video: input_path=photo.jpg (or clip.mp4)")
        validate_sample_fields({"num_input_frames": cfg.num_input_frames, "resize_mode": cfg.resize_mode})
        if cfg.num_frames <= cfg.num_input_frames:
            bad("num_frames", f"{cfg.num_frames} leaves no frame to generate after num_input_frames={cfg.num_input_frames}; use 121")
        if cfg.condition_replacement not in choices.CONDITION_REPLACEMENTS:
            bad("condition_replacement", f"{cfg.condition_replacement!r}; choose intended (the default: the input "
                "is kept as the first frame) or reference (the reference's code as written)")
    elif cfg.input_path:
        bad("input_path", f"model {cfg.model.preset} is Text2World and takes no input image or video; use a *_video2world model")
    elif cfg.condition_replacement != "intended":
        bad("condition_replacement", f"model {cfg.model.preset} is Text2World and has no condition frames; remove "
            "condition_replacement or use a *_video2world model")
    validate_memory_guardrail_upsampler(cfg, bad)
    validate_cache(cfg, bad)


def validate_samples_and_layout(cfg: Any, bad) -> None:
    """num_videos_per_prompt / seeds (the same checks as a prompts-file line's keys) and output_layout."""
    get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
    num, seeds = get("num_videos_per_prompt", 1), get("seeds", None)
    validate_sample_fields({"num_videos_per_prompt": num, "seeds": None if seeds is None else list(seeds)})
    if seeds is not None and num != 1:
        bad("seeds", "give seeds=[...] (one video per seed) or num_videos_per_prompt=N, not both")
    if get("output_layout", "auto") not in choices.OUTPUT_LAYOUTS:
        bad("output_layout", f"{get('output_layout')!r}; choose {one_of(choices.OUTPUT_LAYOUTS)} (auto: the tree's "
            "layout, else flat)")


def validate_memory_guardrail_upsampler(cfg: Any, bad) -> None:
    """offload / guardrail / upsampler checks (configs composed without these groups are accepted)."""
    off = cfg.get("offload") if hasattr(cfg, "get") else getattr(cfg, "offload", None)
    if off is not None:
        if off.level not in OFFLOAD_LEVELS:
            bad("offload", f"{off.level!r} is not a residency level; choose one of {one_of(OFFLOAD_LEVELS)} "
                "(each offloads the models of the levels before it too), e.g. offload=dit")
        if int(off.get("chunk", 1)) < 1:
            bad("offload.chunk", f"{off.chunk} must be >= 1 (samples whose text is encoded before the DiT comes in)")
        if str(off.get("pin_memory", "auto")).lower() not in choices.AUTO_BOOL:
            bad("offload.pin_memory", f"{off.pin_memory!r}; choose {one_of(choices.AUTO_BOOL)}")
    gr = cfg.get("guardrail") if hasattr(cfg, "get") else getattr(cfg, "guardrail", None)
    if gr is not None and gr.enabled:
        if gr.provider not in choices.GUARDRAIL_PROVIDERS:
            bad("guardrail.provider", f"{gr.provider!r}; choose {one_of(choices.GUARDRAIL_PROVIDERS)} "
                "(cosmos: NVIDIA's cosmos-guardrail), or guardrail=off")
        rng = gr.get("video_mean_range")
        if rng is not None and (len(rng) != 2 or not float(rng[0]) <= float(rng[1])):
            bad("guardrail.video_mean_range", f"{list(rng)} must be [lo, hi] with lo <= hi (pixel means 0..255)")
    up = cfg.get("upsampler") if hasattr(cfg, "get") else getattr(cfg, "upsampler", None)
    if up is not None and up.enabled:
        if not up.model_dir:
            bad("upsampler.model_dir", "the prompt upsampler needs a local causal language model directory "
                "(Hugging Face format), e.g. upsampler.model_dir=/models/Mistral-Nemo-Instruct; or upsampler.enabled=false")
        if up.max_new_tokens < 1:
            bad("upsampler.max_new_tokens", f"{up.max_new_tokens} must be >= 1 (the reference uses 512)")
        if up.temperature < 0:
            bad("upsampler.temperature", f"{up.temperature} must be >= 0 (0 = greedy)")
        if up.dtype not in choices.DTYPES:
            bad("upsampler.dtype", f"{up.dtype!r}; choose {one_of(choices.DTYPES)}")


def validate_cache(cfg: Any, bad) -> None:
    """The `cache` group (configs composed without it are accepted and run uncached)."""
    import math

    cache = cfg.get("cache") if hasattr(cfg, "get") else getattr(cfg, "cache", None)
    if cache is None:
        return
    if cache.policy not in CACHE_POLICIES:
        bad("cache.policy", f"{cache.policy!r}; choose {one_of(CACHE_POLICIES)} (e.g. cache=teacache)")
    threshold = float(cache.threshold)
    if not math.isfinite(threshold) or threshold < 0:
        bad("cache.threshold", f"{cache.threshold} must be a finite number >= 0 (0 never reuses a step; TeaCache "
            "publishes 0.3 and 0.4 for Cosmos)")
    coefficients = list(getattr(cache, "coefficients", None) or [])
    if not coefficients or not all(isinstance(c, (int, float)) and math.isfinite(c) for c in coefficients):
        bad("cache.coefficients", f"{coefficients} must be a non-empty list of finite numbers, highest power first")
    if int(getattr(cache, "max_consecutive_reuse", 0)) < 0:
        bad("cache.max_consecutive_reuse", f"{cache.max_consecutive_reuse} must be >= 0 (0 = no limit)")
