"""Strict key/shape validation of DiT checkpoints and variant detection from shapes alone.

Validation ignores only `*_extra_state*`, `logvar.*` and `net.pos_embedder.seq`; every other key
must be one of the model's state-dict names (with the `net.` prefix) with exactly its shape.

`detect_variant` reads the network's configuration off the tensor shapes (width, blocks, heads,
cross-attention width, adaLN-LoRA dim, MLP ratio, patching, position tables, Text2World or
Video2World), so any file, tiny or full-size, can be built and loaded without knowing its preset.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from cosmos_dist.checkpoint.readers import EXTRA_STATE, IGNORED, LOGVAR, NET_PREFIX, NETWORK, classify_key
from cosmos_dist.errors import CheckpointError
from cosmos_dist.models import PRESET_NAMES, DiTConfig, build_dit, default_rope_extrapolation, get_preset

Shape = tuple[int, ...]
SHOW = 5  # how many keys of each kind an error message lists

# Fields that no tensor shape determines; they never take part in variant comparisons.
_NOT_FROM_SHAPES = ("name", "rope_extrapolation", "base_fps", "eps")
_BLOCK_RE = re.compile(r"^net\.blocks\.block(\d+)\.")


def expected_shapes(cfg: DiTConfig, net: torch.nn.Module | None = None) -> dict[str, Shape]:
    """Checkpoint keys (with `net.`) and shapes the network built from `cfg` loads, minus ignored keys.

    `net` may pass that network (e.g. already built on the meta device) to save building it again."""
    net = net if net is not None else build_dit(cfg, device="meta")
    out = {}
    for name, tensor in net.state_dict().items():
        key = NET_PREFIX + name
        if classify_key(key) == NETWORK:
            out[key] = tuple(tensor.shape)
    return out


def shape_signature(cfg: DiTConfig) -> tuple:
    """The configuration fields that tensor shapes decide (two configs with equal signatures load the same files)."""
    return tuple((f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in _NOT_FROM_SHAPES)


def preset_for(cfg: DiTConfig) -> str | None:
    """The preset name whose shapes equal `cfg`'s, or None."""
    sig = shape_signature(cfg)
    for name in PRESET_NAMES:
        if shape_signature(get_preset(name)) == sig:
            return name
    return None


def describe_variant(cfg: DiTConfig) -> str:
    """Human words for a configuration: "14B Video2World", or "custom Text2World (D=192, 3 blocks, 6 heads)"."""
    kind = "Video2World" if cfg.video2world else "Text2World"
    preset = preset_for(cfg)
    if preset is not None:
        size = preset.split("_")[0]
        return f"{size.upper() if size != 'tiny' else 'tiny'} {kind}"
    return (
        f"custom {kind} (D={cfg.model_channels}, {cfg.num_blocks} blocks, {cfg.num_heads} heads, "
        f"cross-attention {cfg.crossattn_emb_channels}, adaLN-LoRA {cfg.adaln_lora_dim})"
    )


def _need(shapes: Mapping[str, Shape | None], key: str, ndim: int) -> Shape:
    shape = shapes.get(key)
    if shape is None:
        raise CheckpointError(f"it has no tensor {key}")
    if len(shape) != ndim:
        raise CheckpointError(f"{key} has shape {shape}; a Cosmos DiT has a {ndim}-D tensor there")
    return shape


def detect_variant(shapes: Mapping[str, Shape | None], latent_channels: int = 16) -> DiTConfig:
    """The `DiTConfig` whose network has these checkpoint shapes (keys with the `net.` prefix).

    Raises CheckpointError (without a path; callers add it) when the shapes are not those of a
    Cosmos-Predict1 DiT. The result is named after the matching preset (`7b_text2world`, ...) or
    `custom_text2world` / `custom_video2world`; RoPE extrapolation is the reference default for its width.
    """
    if not any(k.startswith(NET_PREFIX) for k in shapes):
        first = ", ".join(list(shapes)[:3])
        raise CheckpointError(
            f"it has no `net.*` keys (first keys: {first}), so it is not a Cosmos-Predict1 DiT checkpoint"
        )
    d, patch_in = _need(shapes, "net.x_embedder.proj.1.weight", 2)
    out_rows, d_final = _need(shapes, "net.final_layer.linear.weight", 2)
    if d_final != d:
        raise CheckpointError(f"net.final_layer.linear.weight has width {d_final} but the patch embedder {d}")
    if out_rows % latent_channels:
        raise CheckpointError(f"net.final_layer.linear.weight has {out_rows} rows, not a multiple of {latent_channels}")
    patch_volume = out_rows // latent_channels
    ps = math.isqrt(patch_volume)
    if ps * ps != patch_volume:
        raise CheckpointError(f"final layer emits {patch_volume} values per channel, not a square spatial patch")
    pt = 1
    if patch_in % patch_volume:
        raise CheckpointError(f"patch embedder input {patch_in} is not a multiple of the patch volume {patch_volume}")
    extra_channels = patch_in // patch_volume - latent_channels - 1  # minus latent and padding mask
    if extra_channels not in (0, 1):
        raise CheckpointError(
            f"patch embedder takes {patch_in // patch_volume} channels; expected {latent_channels + 1} "
            f"(Text2World) or {latent_channels + 2} (Video2World)"
        )

    indices = sorted({int(m.group(1)) for key in shapes if (m := _BLOCK_RE.match(key))})
    if not indices:
        raise CheckpointError("it has no transformer blocks (net.blocks.block{i}.*)")
    if indices != list(range(len(indices))):
        missing = sorted(set(range(indices[-1] + 1)) - set(indices))
        raise CheckpointError(f"its transformer blocks are not numbered 0..{indices[-1]} (missing block{missing[0]})")

    def block_shape(suffix: str, ndim: int) -> Shape:
        # The first block that has the key (so one missing tensor does not hide the variant).
        for i in indices:
            if f"net.blocks.block{i}.blocks.{suffix}" in shapes:
                return _need(shapes, f"net.blocks.block{i}.blocks.{suffix}", ndim)
        return _need(shapes, f"net.blocks.block0.blocks.{suffix}", ndim)

    (head_dim,) = block_shape("0.block.attn.to_q.1.weight", 1)
    if head_dim <= 0 or d % head_dim:
        raise CheckpointError(f"the q-norm length {head_dim} (head_dim) does not divide the width {d}")
    _, ctx = block_shape("1.block.attn.to_k.0.weight", 2)
    lora, _ = block_shape("0.adaLN_modulation.1.weight", 2)
    hidden, _ = block_shape("2.block.layer1.weight", 2)
    mlp_ratio = hidden / d
    if int(d * mlp_ratio) != hidden:
        raise CheckpointError(f"MLP hidden width {hidden} is not expressible as a ratio of {d}")
    rows_t = _need(shapes, "net.extra_pos_embedder.pos_emb_t", 2)[0]
    rows_h = _need(shapes, "net.extra_pos_embedder.pos_emb_h", 2)[0]
    rows_w = _need(shapes, "net.extra_pos_embedder.pos_emb_w", 2)[0]
    seq = shapes.get("net.pos_embedder.seq")
    cfg = DiTConfig(
        model_channels=d,
        num_blocks=len(indices),
        num_heads=d // head_dim,
        mlp_ratio=mlp_ratio,
        latent_channels=latent_channels,
        video2world=extra_channels == 1,
        crossattn_emb_channels=ctx,
        patch_spatial=ps,
        patch_temporal=pt,
        adaln_lora_dim=lora,
        max_img_h=rows_h * ps,
        max_img_w=rows_w * ps,
        max_frames=rows_t * pt,
        rope_seq_len=seq[0] if seq and len(seq) == 1 else 128,
        rope_extrapolation=default_rope_extrapolation(d),
    )
    try:
        cfg.validate()
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    preset = preset_for(cfg)
    kind = "video2world" if cfg.video2world else "text2world"
    return cfg.replace(name=preset or f"custom_{kind}")


def _fmt_shape(shape: Shape | None, type_name: str | None = None) -> str:
    if shape is None:
        return f"a {type_name or 'non-tensor'}, not a tensor"
    return str(tuple(shape))


@dataclass
class ValidationReport:
    """Outcome of comparing a file's keys and shapes with a configuration."""

    model: DiTConfig
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    # (key, what the file has, what the model wants)
    mismatched: list[tuple[str, str, Shape]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # network / extra_state / logvar / ignored

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> list[str]:
        lines = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                shown = ", ".join(keys[:SHOW]) + (", ..." if len(keys) > SHOW else "")
                lines.append(f"{len(keys)} {label} key{'s' if len(keys) != 1 else ''}: {shown}")
        if self.mismatched:
            shown = "; ".join(f"{k}: file {f} vs model {tuple(m)}" for k, f, m in self.mismatched[:SHOW])
            n = len(self.mismatched)
            lines.append(f"{n} mis-shaped key{'s' if n != 1 else ''}: {shown}" + ("; ..." if n > SHOW else ""))
        return lines

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "model": self.model.name,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "mismatched": [{"key": k, "file": f, "model": list(m)} for k, f, m in self.mismatched],
            "counts": dict(self.counts),
        }


def validate_shapes(
    shapes: Mapping[str, Shape | None],
    cfg: DiTConfig,
    type_names: Mapping[str, str] | None = None,
    dtypes: Mapping[str, torch.dtype | None] | None = None,
    expected: Mapping[str, Shape] | None = None,
) -> ValidationReport:
    """Compare a file's shapes (checkpoint keys; None for a non-tensor value) with `cfg`'s network.

    `expected` may pass `expected_shapes(cfg)` when the caller has it already."""
    want = dict(expected) if expected is not None else expected_shapes(cfg)
    report = ValidationReport(model=cfg, counts={NETWORK: 0, EXTRA_STATE: 0, LOGVAR: 0, IGNORED: 0})
    seen = set()
    for key, shape in shapes.items():
        kind = classify_key(key)
        report.counts[kind] += 1
        if kind != NETWORK:
            continue
        if key not in want:
            report.unexpected.append(key)
            continue
        seen.add(key)
        if shape is None:
            report.mismatched.append((key, _fmt_shape(None, (type_names or {}).get(key)), want[key]))
        elif tuple(shape) != want[key]:
            report.mismatched.append((key, _fmt_shape(shape), want[key]))
        elif dtypes is not None and dtypes.get(key) is not None and not dtypes[key].is_floating_point:
            report.mismatched.append((key, f"{tuple(shape)} of dtype {dtypes[key]}, not floating point", want[key]))
    report.missing = [k for k in want if k not in seen]
    return report


def mismatch_message(
    path, report: ValidationReport, detected: DiTConfig | None, detect_error: str | None = None
) -> str:
    """The error text for a failed validation: what is wrong, and which variant the file looks like."""
    cfg = report.model
    lines = [f"{path}: checkpoint does not match model {cfg.name} ({describe_variant(cfg)})."]
    if detected is not None:
        if shape_signature(detected) == shape_signature(cfg):
            lines.append(
                f"Its identifying shapes are those of {describe_variant(detected)} ({cfg.name}) all the same, so "
                "the file is incomplete or was modified: download or convert it again."
            )
        elif preset_for(detected):
            lines.append(
                f"This looks like a {describe_variant(detected)} checkpoint; use model={preset_for(detected)}."
            )
        else:
            lines.append(
                f"This looks like a {describe_variant(detected)} network that matches no preset; load it without "
                "naming a model (cfg=None) to build the network from the file's shapes."
            )
    elif detect_error:
        lines.append(f"Could not tell which network the file holds: {detect_error}.")
    lines += ["  " + line for line in report.problems()]
    if report.unexpected and not any(k.startswith(NET_PREFIX) for k in report.unexpected):
        lines.append("  (its keys lack the `net.` prefix of a Cosmos checkpoint)")
    return "\n".join(lines)
