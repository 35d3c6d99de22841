"""Video2World: continue an image or a video. Text2World plus a conditioning latent (spec 1.3, 2.6, pitfall 8).

Per sample, on top of Text2World's stages:

1. Input: `input_path` / `visual_input` of the prompts-file line, else the config's `input_path`; relative paths
   are taken from the working directory (as the reference), then from the prompts file's folder. The last
   `num_input_frames` (1 or 9; per line or config) frames are read, resized to the model's frame size
   `height x width` (`resize_mode` stretch | crop | pad, see cosmos_dist.io.visual_input) and normalised `x/128 - 1`.
2. They are put first in a clip of `num_frames` frames, the rest zero (mid-grey), and the whole clip is encoded by
   the tokenizer's encoder: the condition latent `gt` (1, 16, T, H, W). The tokenizer is causal, so N input frames
   give `1 + (N - 1) // 8` condition latent frames (1 -> 1, 9 -> 2).
3. The condition-mask input channel is 1 on those latent frames, in both guidance branches, at every step.
4. Step hooks (spec 2.6), with `ind` = 1 on the condition frames and sigma the step's sigma:
     x_in = ind * aug + (1 - ind) * x,   aug = (gt + 0.001 n) * c_in(0.001) / c_in(sigma)
   so the network, which scales x_in by c_in(sigma), sees c_in(0.001) * (gt + 0.001 n) there; n is drawn ONCE
   per sample from fixed_noise(shape, seed, sample_id, "augment") and reused at every step. After guidance,
     F = ind * F_rep + (1 - ind) * F,    F_rep = (gt - c_skip(sigma) x_in) / c_out(sigma)
   so the denoised estimate D = c_skip x_in + c_out F equals gt on the condition frames, and the Euler step starts
   from x_in. condition_replacement=reference uses the reference's code as written instead, F_rep = gt / c_out -
   c_skip x_in (see cosmos_dist.sampling.condition). Both replacements are off for steps with sigma <= 0.001 (the
   last two of 35: the condition frames are denoised freely there); the mask channel stays 1. The sampler's state
   x is x_sigma (unscaled) and its network input is c_in(sigma) * x_in, exactly the reference's quantities. Like
   the reference, which runs in bf16 and casts sigma to bf16 for this arithmetic, the hooks round sigma to the
   network dtype when that is 16-bit.

The sampler works on token shards (context parallelism): gt, the indicator and the augment noise are patchified
with the network's `patchify` and sliced with the same token range as the state, so each rank conditions exactly
its own tokens (tokens are t-major, so the indicator of a token is that of its latent frame).

Guidance with an empty negative prompt: the reference's Video2World then has no negative embedding and its
unconditional branch equals the conditional one, so classifier-free guidance silently does nothing. We keep that
result (a video identical to guidance=0) but skip the useless second pass, and say so in the sidecar's notes; give
a non-empty negative prompt (the default is the reference's) to guide.

Under a multi-rank layout the replica leader reads and encodes the input and shares the latent with its replica;
an input error there is raised on every rank of the replica, so all skip the sample together.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from cosmos_dist.errors import InputError
from cosmos_dist.io.visual_input import RESIZE_MODES, load_condition_frames
from cosmos_dist.pipeline.base import WorldPipeline
from cosmos_dist.pipeline.denoiser import latent_shape
from cosmos_dist.sampling import AUGMENT_STREAM, StepHooks, c_in, condition_output, fixed_noise

log = logging.getLogger("cosmos_dist")

#: The reference's DEFAULT_AUGMENT_SIGMA: the noise level of the condition frames the network is shown.
AUGMENT_SIGMA = 0.001
#: Keys of a prompts-file line that name the conditioning input (ours, and the reference's).
INPUT_KEYS = ("input_path", "visual_input")
from cosmos_dist.choices import NUM_INPUT_FRAMES  # noqa: E402  (the one list)

NO_GUIDANCE_NOTE = (
    "negative_prompt is empty: as in the reference Video2World, classifier-free guidance has no effect "
    "(its unconditional branch equals the conditional one), so only the conditional pass was run; "
    "give a non-empty negative_prompt to guide"
)

REFERENCE_REPLACEMENT_NOTE = (
    "condition_replacement=reference: the condition frames were replaced with the reference's code as written "
    "(gt / c_out - c_skip * x), so they are not the encoded input; the default (intended) keeps the input"
)


def condition_latent_frames(num_input_frames: int, temporal_compression: int = 8) -> int:
    """Latent frames the input frames fill in the causal tokenizer: 1 + (N - 1) // 8 (1 -> 1, 9 -> 2)."""
    return 1 + (int(num_input_frames) - 1) // temporal_compression


def hook_sigma(sigma: float, dtype: torch.dtype) -> float:
    """The sigma the conditioning arithmetic uses: the reference casts it to its (bf16) run dtype."""
    if dtype in (torch.bfloat16, torch.float16):
        return float(torch.tensor(float(sigma), dtype=torch.float32).to(dtype))
    return float(sigma)


class ConditionHooks(StepHooks):
    """Spec 2.6 on one token shard. All tensors are in the state's token layout (1, n, features).

    gt:         the condition latent's tokens.
    indicator:  bool, True on the tokens of condition latent frames (broadcastable to gt).
    noise:      the augment noise's tokens, drawn once per sample; the same tensor serves every step.
    """

    def __init__(
        self,
        gt: torch.Tensor,
        indicator: torch.Tensor,
        noise: torch.Tensor,
        augment_sigma: float = AUGMENT_SIGMA,
        sigma_dtype: torch.dtype = torch.float32,
        replacement: str = "intended",
    ):
        self.gt = gt.to(torch.float32)
        self.replacement = replacement
        self.indicator = indicator.to(torch.bool)
        self.augment_sigma = float(augment_sigma)
        self.sigma_dtype = sigma_dtype
        self.augmented = self.gt + self.augment_sigma * noise.to(self.gt.device, torch.float32)

    def active(self, sigma: float) -> bool:
        """Whether the replacements apply at this sigma (off when sigma <= the augment sigma)."""
        return hook_sigma(sigma, self.sigma_dtype) > self.augment_sigma

    def network_input(self, x: torch.Tensor, sigma: float, step: int) -> torch.Tensor:
        s = hook_sigma(sigma, self.sigma_dtype)
        if s <= self.augment_sigma:
            return x
        aug = self.augmented * (c_in(self.augment_sigma) / c_in(s))
        return torch.where(self.indicator, aug, x.to(torch.float32))

    def replace_output(self, f: torch.Tensor, x_in: torch.Tensor, sigma: float, step: int) -> torch.Tensor:
        s = hook_sigma(sigma, self.sigma_dtype)
        if s <= self.augment_sigma:
            return f
        f_rep = condition_output(self.gt, x_in.to(torch.float32), s, self.replacement)
        return torch.where(self.indicator, f_rep, f.to(torch.float32))


@dataclass
class Video2WorldCondition:
    """The `condition` denoiser.sample_latent takes: the mask channel and the step hooks of one sample."""

    gt: torch.Tensor  # (1, 16, T, H, W) float32: the encoded input clip
    num_condition_frames: int  # leading latent frames that are conditioning
    augment_noise: torch.Tensor  # (1, 16, T, H, W) float32 standard normal, fixed for the sample
    augment_sigma: float = AUGMENT_SIGMA
    sigma_dtype: torch.dtype = torch.float32  # the network's run dtype
    replacement: str = "intended"  # condition_replacement: intended | reference (cosmos_dist.sampling.condition)

    @property
    def indicator(self) -> torch.Tensor:
        """(1, 1, T, 1, 1): 1 on the condition latent frames, else 0 (the reference's condition_video_indicator)."""
        t = self.gt.shape[2]
        ind = torch.zeros(1, 1, t, 1, 1, dtype=torch.float32, device=self.gt.device)
        ind[:, :, : self.num_condition_frames] = 1
        return ind

    @property
    def mask(self) -> torch.Tensor:
        """(1, 1, T, H, W): the condition-mask input channel, the indicator broadcast; 1 in every step and branch."""
        b, _, t, h, w = self.gt.shape
        return self.indicator.expand(1, 1, t, h, w)

    def step_hooks(self, net, token_range: Optional[tuple[int, int]]) -> ConditionHooks:
        def shard(x: torch.Tensor) -> torch.Tensor:
            tokens, _ = net.patchify(x)
            return tokens if token_range is None else tokens[:, token_range[0] : token_range[1]]

        gt = self.gt.to(torch.float32)
        indicator = shard(self.indicator.expand_as(gt).contiguous()) > 0.5
        noise = shard(self.augment_noise.to(gt.device, torch.float32))
        return ConditionHooks(shard(gt), indicator, noise, self.augment_sigma, self.sigma_dtype, self.replacement)


@dataclass(frozen=True)
class InputSpec:
    given: str  # the path as written
    path: Path  # where it was found (or would be, for the error)
    num_input_frames: int
    resize_mode: str


class Video2WorldPipeline(WorldPipeline):
    """Image or video + text -> video: Text2World's run order plus the condition stage (module docstring)."""

    kind = "video2world"

    # ---- 1. check inputs: WorldPipeline.prepare screens every sample's input through `input_spec` (and reads
    # it) before any model loads (pipeline/work_checks.py) -------------------------------------------------
    def input_spec(self, cfg, item) -> InputSpec:
        """Which file conditions `item`, with how many frames; InputError for malformed keys."""
        extra = item.extra
        given = {k: extra[k] for k in INPUT_KEYS if extra.get(k) is not None}
        for key, value in given.items():
            if not isinstance(value, str) or not value.strip():
                raise InputError(f'"{key}" must be a non-empty string (the path of an image or a video); got {value!r}')
        if len(set(given.values())) > 1:
            raise InputError('"input_path" and "visual_input" name different files; give one of them')
        path = next(iter(given.values()), None) or cfg.input_path
        if not path:
            raise InputError(
                'no input image or video: give "input_path" (or "visual_input") on the line, or input_path=... for all lines'
            )
        n = extra.get("num_input_frames", cfg.num_input_frames)
        if isinstance(n, bool) or not isinstance(n, int) or n not in NUM_INPUT_FRAMES:
            raise InputError(f'"num_input_frames" must be 1 or 9; got {n!r}')
        if cfg.num_frames <= n:
            raise InputError(f"num_input_frames={n} leaves nothing to generate in num_frames={cfg.num_frames}")
        if cfg.resize_mode not in RESIZE_MODES:
            raise InputError(f"resize_mode {cfg.resize_mode!r}; choose one of {', '.join(RESIZE_MODES)}")
        return InputSpec(path, self._resolve_path(cfg, path, item), n, cfg.resize_mode)

    def _input_hash(self, cfg, item) -> Optional[str]:
        """The input's content hash for a Python API sample's identity (as the command line's checks record it);
        None when the file cannot be read now: the condition stage reports that as the sample's failure."""
        from cosmos_dist.pipeline.work_checks import file_sha256

        try:
            return file_sha256(self.input_spec(cfg, item).path)
        except (OSError, InputError):
            return None

    def _resolve_path(self, cfg, given: str, item) -> Path:
        p = Path(given).expanduser()
        if not p.is_absolute() and not p.exists() and item.line_number is not None and cfg.prompts_file:
            beside = Path(cfg.prompts_file).parent / p
            if beside.exists():
                return beside
        return p

    # ---- 2. text: no negative prompt, no guidance ----------------------------------------------------
    def encode(self, prompt: str, negative: str):
        cond, uncond = super().encode(prompt, negative)
        if not negative:
            return cond, None  # the reference's v2w: no negative embedding -> no guidance (see module doc)
        return cond, uncond

    # ---- 3. condition: read the input, encode it ------------------------------------------------------
    def condition(self, cfg, s) -> Video2WorldCondition:
        item, net, plan, rt = s.item, self.components.net, self.plan, self.runtime
        t0 = time.perf_counter()
        shape = latent_shape(cfg, net.config.latent_channels)
        encoded = {}

        def read_and_encode() -> dict:
            spec = self.input_spec(cfg, item)
            frames, info = load_condition_frames(
                spec.path, spec.num_input_frames, cfg.height, cfg.width, spec.resize_mode, dtype=plan.tokenizer_dtype
            )
            clip = torch.zeros((1, 3, cfg.num_frames, cfg.height, cfg.width), dtype=plan.tokenizer_dtype)
            clip[0, :, : spec.num_input_frames] = frames.permute(1, 0, 2, 3)
            gt = self.components.tokenizer.encode(clip)
            if tuple(gt.shape) != tuple(shape):
                raise InputError(f"the tokenizer encoded the input clip to {tuple(gt.shape)}; expected {tuple(shape)}")
            encoded["gt"] = gt
            return {"spec": spec, "info": info.describe()}

        meta = rt.on_leader(read_and_encode)
        gt = rt.share_tensor(encoded.get("gt")).to(plan.device, torch.float32)
        spec, info = meta["spec"], meta["info"]
        k = condition_latent_frames(spec.num_input_frames)
        condition = Video2WorldCondition(
            gt=gt,
            num_condition_frames=k,
            augment_noise=fixed_noise(shape, s.seed, item.noise_key, AUGMENT_STREAM),
            sigma_dtype=net.dtype,
            replacement=cfg.condition_replacement,
        )
        s.timings["condition_encode_s"] = time.perf_counter() - t0

        guided = bool(s.negative) and cfg.guidance != 0
        if not s.negative and cfg.guidance != 0:
            s.notes.append(NO_GUIDANCE_NOTE)
        if cfg.condition_replacement == "reference":
            s.notes.append(REFERENCE_REPLACEMENT_NOTE)
        w, h = info["original_size"]["width"], info["original_size"]["height"]
        if spec.resize_mode == "stretch" and abs(w * cfg.height - h * cfg.width) > 0.01 * h * cfg.width:
            s.notes.append(
                f"input {w}x{h} was stretched to {cfg.width}x{cfg.height} (aspect ratio not kept, as the reference; "
                "resize_mode=crop or resize_mode=pad keep it)"
            )
        s.records["video2world"] = {
            "input_path": spec.given,
            "input_resolved": str(spec.path.resolve()),
            "input_kind": info["kind"],
            "input_original_size": info["original_size"],
            "input_total_frames": info["total_frames"],
            "input_fps": info["fps"],
            "num_input_frames": spec.num_input_frames,
            "num_condition_latent_frames": k,
            "resize_mode": spec.resize_mode,
            "augment_sigma": AUGMENT_SIGMA,
            "condition_replacement": cfg.condition_replacement,
            "classifier_free_guidance": guided,
        }
        return condition

    # ---- 5. what the sidecar adds ---------------------------------------------------------------------
    def sidecar_extra(self, s) -> dict:
        return {**super().sidecar_extra(s), "video2world": s.records.get("video2world", {})}
