"""What a sample is: its prompt, seed and the generation settings, and the id that names its files.

A prompts-file line (or a `prompt=` run) is a *prompt* with a stable prompt id (io/prompts.py: the line's `id`,
else `p-` + a hash of its fields). Each prompt makes one or more *samples*, one per seed:

* seeds: the line's `seeds` list, else the run's `seeds=[...]`, else `num_videos_per_prompt` seeds counted from
  the line's `seed` (else the run's `seed`): video 0 uses that seed itself, video n a seed derived from
  (seed, n) (`video_seed`), so `seed=2` after `seed=1` makes only new videos, and any one video is made again
  alone with `seed=<its recorded seed>`. Seeds, seed lists and counts are checked by the configuration's rules
  (config.check_seed / check_seed_list / check_num_videos), the same on the command line and in a prompts file.
* sample id: `{prompt_id}_s{seed}_{settings}`, where `settings` is 8 hex digits of the SHA-256 of the run's
  generation settings: the values of the config paths in `GENERATION_KEYS` (model, steps, guidance, sampler,
  frames, size, fps, precision, negative prompt, Video2World input options and condition replacement, upsampler,
  guardrail, encoder) and step caching when it can reuse a step (`cache`: a threshold above 0).
  A sweep into one tree keeps every combination side by side; a rerun or a Slurm requeue with the same settings
  finds the same ids and skips what is done.

A finished sample is skipped only when its sidecar's `identity.fingerprint` (prompt, negative prompt, seed,
input content hash, settings) equals this run's; a different fingerprint under the same id (a line that kept its
`id` but changed its prompt, an input file replaced in place) is that sample's failure, with the differing keys
and the fix, never a silent skip or an overwrite.

The initial noise is keyed by (seed, prompt id), not the sample id, so changing a setting keeps the noise (a
guidance sweep compares like with like) and a prompt's first video is the one earlier versions made.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

_ABSENT = object()

#: Config paths whose values change the video, each with the value that means "as before this key existed"
#: (_ABSENT: always part of the hash). A new setting that changes the output is added HERE, with the value that
#: keeps today's behaviour, so samples made before it keep their ids: e.g. ("condition_replacement", "intended").
#: Settings whose effect depends on another one are derived in `_effective_cache` instead (step caching).
#: Left out on purpose: how the work is spread and scheduled (parallel.*, offload.*, precision.compile, the
#: tokenizer's chunk sizes), which gives the same video; progress / logging; the keyword guardrail's lists, which
#: decide whether a video is kept, not what it is.
GENERATION_KEYS: tuple[tuple[str, Any], ...] = (
    ("model.preset", _ABSENT),
    ("model.dit_dir", _ABSENT),
    ("model.tokenizer_dir", _ABSENT),
    ("model.text_encoder_dir", _ABSENT),
    ("model.random_weights", _ABSENT),
    ("model.rope_extrapolation", _ABSENT),
    ("sampler.name", _ABSENT),
    ("sampler.sigma_min", _ABSENT),
    ("sampler.sigma_max", _ABSENT),
    ("sampler.rho", _ABSENT),
    ("num_steps", _ABSENT),
    ("guidance", _ABSENT),
    ("num_frames", _ABSENT),
    ("height", _ABSENT),
    ("width", _ABSENT),
    ("fps", _ABSENT),
    ("negative_prompt", _ABSENT),  # the run's default; a line's own negative prompt is in its fingerprint
    ("allow_long_prompts", _ABSENT),  # decides whether an over-long prompt is cut
    ("precision.dit_dtype", _ABSENT),
    ("precision.text_encoder_dtype", _ABSENT),
    ("precision.tokenizer_dtype", _ABSENT),
    ("precision.attention_kernel", _ABSENT),
    ("precision.fp8_linear", _ABSENT),
    ("precision.fp8_attention", _ABSENT),
    ("precision.fp8_linear_kernel", _ABSENT),
    ("precision.fp8_attention_kernel", _ABSENT),
    ("precision.fp8_high_precision_steps", _ABSENT),
    ("input_path", _ABSENT),
    ("num_input_frames", _ABSENT),
    ("resize_mode", _ABSENT),
    # Video2World's condition frames (Text2World refuses anything but the default): `reference` changes the video
    ("condition_replacement", "intended"),
    ("upsampler.enabled", _ABSENT),
    ("upsampler.model_dir", _ABSENT),
    ("upsampler.max_new_tokens", _ABSENT),
    ("upsampler.temperature", _ABSENT),
    ("upsampler.word_limit", _ABSENT),
    ("guardrail.enabled", _ABSENT),  # the video guardrail blurs faces
    ("guardrail.provider", _ABSENT),
    ("guardrail.checkpoint_id", _ABSENT),
    ("video.crf", _ABSENT),
    ("video.preset", _ABSENT),
)


def _plain(value: Any) -> Any:
    """OmegaConf containers and tuples as plain JSON data."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        pass
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _lookup(cfg: Any, path: str) -> Any:
    node = cfg
    for part in path.split("."):
        try:
            node = node[part] if isinstance(node, Mapping) else getattr(node, part)
        except Exception:  # noqa: BLE001 - missing here (KeyError, AttributeError, a struct config's refusal)
            return _ABSENT
    return _plain(node)


def _effective_cache(cfg: Any) -> dict[str, Any] | None:
    """Step caching's settings when it can change the video, else None. A policy at threshold 0 never reuses a
    step (its video is bit-identical to cache=none), so it keeps the uncached ids; any reuse changes the video,
    and so does every key that decides which steps are reused."""
    policy = _lookup(cfg, "cache.policy")
    threshold = _lookup(cfg, "cache.threshold")
    if policy in (_ABSENT, None, "none") or threshold is _ABSENT or not float(threshold) > 0:
        return None
    out = {"policy": policy, "threshold": float(threshold)}
    reuse = _lookup(cfg, "cache.max_consecutive_reuse")
    out["max_consecutive_reuse"] = 0 if reuse in (_ABSENT, None) else int(reuse)
    if policy == "teacache":  # the polynomial rescales only TeaCache's statistic
        coefficients = _lookup(cfg, "cache.coefficients")
        out["coefficients"] = None if coefficients is _ABSENT else [float(c) for c in coefficients]
    return out


def generation_settings(cfg: Any) -> dict[str, Any]:
    """{config path: value} of every GENERATION_KEYS entry the run sets to other than its neutral value, plus the
    derived ones (`cache`: step caching that can change the video)."""
    out: dict[str, Any] = {}
    for path, neutral in GENERATION_KEYS:
        value = _lookup(cfg, path)
        if value is _ABSENT or (neutral is not _ABSENT and value == neutral):
            continue
        out[path] = value
    cache = _effective_cache(cfg)
    if cache is not None:
        out["cache"] = cache
    return out


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def settings_hash(settings: Mapping[str, Any]) -> str:
    """8 hex digits naming a settings combination in sample ids."""
    return hashlib.sha256(canonical_json(dict(settings))).hexdigest()[:8]


def video_seed(base_seed: int, index: int) -> int:
    """The seed of a prompt's video `index` when only a base seed is given: the base seed itself for video 0,
    else 31 bits of SHA-256(base, index), so two base seeds share no video and every seed stays short."""
    if index == 0:
        return int(base_seed)
    digest = hashlib.sha256(f"cosmos-dist/video-seed/{int(base_seed)}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def seeds_for(line_seed: int | None, line_seeds: list[int] | None, line_num_videos: int | None,
              run_seed: int, run_seeds: list[int] | None, run_num_videos: int) -> list[int]:
    """The seeds of one prompt's videos (see the module doc); the line's own keys win over the run's."""
    if line_seeds is not None:
        return list(line_seeds)
    if line_seed is None and line_num_videos is None and run_seeds:
        return list(run_seeds)
    base = run_seed if line_seed is None else line_seed
    k = line_num_videos if line_num_videos is not None else run_num_videos
    return [video_seed(base, n) for n in range(k)]


def make_sample_id(prompt_id: str, seed: int, settings_digest: str) -> str:
    return f"{prompt_id}_s{int(seed)}_{settings_digest}"


@dataclass(frozen=True)
class SampleIdentity:
    """Everything that defines one sample's video, as recorded in its sidecar's `identity`."""

    prompt_id: str
    video_index: int
    seed: int
    settings: Mapping[str, Any]
    settings_digest: str
    prompt: str
    negative_prompt: str  # the effective one (the line's, else the run's)
    input_sha256: str | None = None  # Video2World: the conditioning file's content hash, once known

    @property
    def sample_id(self) -> str:
        return make_sample_id(self.prompt_id, self.seed, self.settings_digest)

    def fingerprint(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "negative_prompt": self.negative_prompt, "seed": self.seed,
                "input_sha256": self.input_sha256, "settings": dict(self.settings)}

    def record(self, relative_path: str | None = None) -> dict[str, Any]:
        """The sidecar's `identity` block."""
        rec = {"prompt_id": self.prompt_id, "video_index": self.video_index, "settings_hash": self.settings_digest,
               "fingerprint": self.fingerprint()}
        if relative_path is not None:
            rec["path"] = relative_path
        return rec


def fingerprint_differences(expected: Mapping[str, Any], recorded: Any) -> list[str]:
    """The keys whose values differ between two fingerprints (settings keys as `settings.<path>`)."""
    if not isinstance(recorded, Mapping):
        return ["identity (the sidecar records none)"]
    diff = []
    for key in ("prompt", "negative_prompt", "seed", "input_sha256"):
        if expected.get(key) != recorded.get(key):
            diff.append(key)
    mine, theirs = dict(expected.get("settings") or {}), recorded.get("settings")
    theirs = dict(theirs) if isinstance(theirs, Mapping) else {}
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key, _ABSENT) != theirs.get(key, _ABSENT):
            diff.append(key)
    return diff
