#!/usr/bin/env python
"""Run one raw forward of a Cosmos-Predict1 DiT checkpoint on saved inputs.

The network is built from the checkpoint's shapes (any preset, tiny to 14B); its RoPE NTK
extrapolation ratios default to the reference's for its width (7B-wide (2, 1, 1), 14B-wide
(2, 2, 2) in (t, h, w) order) and can be overridden with --rope-scale t,h,w. The tool calls

    F = net(x, timesteps, crossattn_emb, fps=fps, padding_mask=padding_mask,
            condition_video_input_mask=condition_video_input_mask)

under torch.no_grad and saves {"out": F.float().cpu()} with torch.save.

Inputs contract (stable): --inputs is a torch.save'd dict (loaded with weights_only=True) of
    x                           float tensor [B, 16, T, H, W]: c_in * x_sigma, the latent
    timesteps                   float tensor [B]: c_noise = 0.25 * ln(sigma)
    crossattn_emb               float tensor [B, L, C]: text embeddings (C = 1024 for T5-11B)
    fps                         optional, float tensor [B] or a scalar (tensor or number); default 24
                                (positions unscaled); only its first value is used, as the reference
    padding_mask                optional, tensor [B or 1, 1, 8H, 8W]; default zeros
    condition_video_input_mask  Video2World only, required: tensor [B, 1, T, H, W]; a Text2World
                                network rejects it
Any other key, a missing key or a wrong shape is an error naming the key and the expected shape.
Inputs are cast to --dtype before the network runs (default bfloat16, the reference run dtype).

Example:
    cosmos-dist dit-forward --checkpoint model.pt --inputs in.pt --output out.pt --dtype float32
"""
from __future__ import annotations

import argparse
import numbers
from pathlib import Path

import torch

from cosmos_dist.checkpoint import detect_checkpoint, load_dit
from cosmos_dist.cli_util import run_tool
from cosmos_dist.commands import add_unpickle_flags
from cosmos_dist.errors import InputError

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
REQUIRED = ("x", "timesteps", "crossattn_emb")
OPTIONAL = ("fps", "padding_mask", "condition_video_input_mask")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--checkpoint", required=True, help="model.pt or .safetensors")
    ap.add_argument("--inputs", required=True, help="torch.save'd dict of inputs (see below)")
    ap.add_argument("--output", required=True, help="where to torch.save {'out': F.float()}")
    ap.add_argument("--rope-scale", default=None, metavar="T,H,W",
                    help="RoPE NTK extrapolation ratios (default: the reference's for the network width)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16", help="run dtype (default bfloat16)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device (default cpu)")
    add_unpickle_flags(ap)
    return ap.parse_args(argv)


def _rope_scale(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or any(v <= 0 for v in values):
        raise InputError(f"--rope-scale must be three positive numbers t,h,w (e.g. 2,1,1); got {text!r}")
    return values


def _shape_error(key: str, expected: str, got) -> InputError:
    what = f"shape {tuple(got.shape)}" if isinstance(got, torch.Tensor) else f"a {type(got).__name__}"
    return InputError(f"inputs[{key!r}] must be a tensor of shape {expected}; got {what}")


def validate_inputs(inputs, cfg) -> dict:
    """Check the inputs dict against the contract above; returns the keyword arguments of the forward."""
    if not isinstance(inputs, dict):
        raise InputError(f"the inputs file must hold a dict; it holds a {type(inputs).__name__}")
    unknown = sorted(set(inputs) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise InputError(f"unknown inputs key(s) {unknown}; allowed: {', '.join(REQUIRED + OPTIONAL)}")
    c = cfg.latent_channels
    for key, expected in (("x", f"[B, {c}, T, H, W]"), ("timesteps", "[B]"),
                          ("crossattn_emb", f"[B, L, {cfg.crossattn_emb_channels}]")):
        if key not in inputs:
            raise InputError(f"inputs lack {key!r}: a tensor of shape {expected}")
    x = inputs["x"]
    if not isinstance(x, torch.Tensor) or x.ndim != 5 or x.shape[1] != c or not x.is_floating_point():
        raise _shape_error("x", f"[B, {c}, T, H, W] (floating point)", x)
    b, _, t, h, w = x.shape
    ts = inputs["timesteps"]
    if not isinstance(ts, torch.Tensor) or tuple(ts.shape) != (b,):
        raise _shape_error("timesteps", f"[B] = [{b}]", ts)
    emb = inputs["crossattn_emb"]
    if (
        not isinstance(emb, torch.Tensor)
        or emb.ndim != 3
        or emb.shape[0] != b
        or emb.shape[2] != cfg.crossattn_emb_channels
    ):
        raise _shape_error("crossattn_emb", f"[B, L, C] = [{b}, L, {cfg.crossattn_emb_channels}]", emb)
    kwargs = {"x": x, "timesteps": ts, "crossattn_emb": emb, "fps": None, "padding_mask": None}
    if "fps" in inputs:
        fps = inputs["fps"]
        if isinstance(fps, numbers.Number) and not isinstance(fps, bool):
            fps = torch.tensor([float(fps)])
        elif not isinstance(fps, torch.Tensor) or tuple(fps.shape) not in ((), (b,)):
            raise _shape_error("fps", f"[B] = [{b}] or a scalar", fps)
        kwargs["fps"] = fps.reshape(-1).float()
    if "padding_mask" in inputs:
        pm = inputs["padding_mask"]
        if not isinstance(pm, torch.Tensor) or pm.ndim != 4 or pm.shape[0] not in (1, b) or pm.shape[1] != 1 \
                or tuple(pm.shape[2:]) != (8 * h, 8 * w):
            raise _shape_error("padding_mask", f"[B or 1, 1, 8H, 8W] = [{b} or 1, 1, {8 * h}, {8 * w}]", pm)
        kwargs["padding_mask"] = pm
    if cfg.video2world:
        if "condition_video_input_mask" not in inputs:
            raise InputError(
                f"inputs lack 'condition_video_input_mask': a Video2World network needs a tensor of shape "
                f"[B, 1, T, H, W] = [{b}, 1, {t}, {h}, {w}]"
            )
        cm = inputs["condition_video_input_mask"]
        if not isinstance(cm, torch.Tensor) or tuple(cm.shape) != (b, 1, t, h, w):
            raise _shape_error("condition_video_input_mask", f"[B, 1, T, H, W] = [{b}, 1, {t}, {h}, {w}]", cm)
        kwargs["condition_video_input_mask"] = cm
    elif "condition_video_input_mask" in inputs:
        raise InputError("inputs hold 'condition_video_input_mask', but the checkpoint is a Text2World network")
    return kwargs


def _load_inputs(path: str):
    if not Path(path).is_file():
        raise InputError(f"{path}: inputs file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here is a bad inputs file
        first = (str(e).strip().splitlines() or [""])[0]
        raise InputError(f"{path}: cannot load the inputs file ({type(e).__name__}: {first})") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but no CUDA device is available")
    cfg = detect_checkpoint(args.checkpoint, args.allow_unsafe_pickle, args.trust_file)
    if args.rope_scale:
        cfg = cfg.replace(rope_extrapolation=_rope_scale(args.rope_scale))
    kwargs = validate_inputs(_load_inputs(args.inputs), cfg)
    dtype = DTYPES[args.dtype]
    net = load_dit(args.checkpoint, cfg, device=args.device, dtype=dtype, allow_unsafe_pickle=args.allow_unsafe_pickle,
                   trust_file=args.trust_file)
    kwargs = {k: (v.to(args.device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    with torch.no_grad():
        out = net(
            kwargs["x"].to(dtype), kwargs["timesteps"].to(dtype), kwargs["crossattn_emb"].to(dtype),
            fps=kwargs["fps"], padding_mask=kwargs["padding_mask"],
            condition_video_input_mask=kwargs.get("condition_video_input_mask"),
        )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"out": out.float().cpu()}, args.output)
    print(f"wrote {args.output}: out {tuple(out.shape)} ({cfg.name}, {args.dtype}, {args.device}, "
          f"rope {cfg.rope_extrapolation})")
    return 0


if __name__ == "__main__":
    run_tool(main)
