#!/usr/bin/env python
"""Describe a Cosmos-Predict1 DiT checkpoint (model.pt or safetensors) and validate it.

Prints the variant the shapes describe, parameter count, dtypes, key counts (network /
extra_state / logvar / ignored), the file size and fingerprint, and the result of strict
validation against the detected variant or the preset given with --model. Exits 0 when the file
is valid, 1 when validation fails, 2 when the file cannot be read.

Examples:
    cosmos-dist inspect checkpoints/Cosmos-Predict1-7B-Text2World/model.pt
    cosmos-dist inspect --verify checkpoints/Cosmos-Predict1-7B-Text2World/model.pt   # SHA-256 vs the hub
    cosmos-dist inspect model.pt --model 14b_video2world --json
"""
from __future__ import annotations

import argparse
import json
import sys

from cosmos_dist.checkpoint import inspect_checkpoint
from cosmos_dist.cli_util import human_size, run_tool
from cosmos_dist.commands import add_unpickle_flags
from cosmos_dist.models import PRESET_NAMES, get_preset


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("path", help="checkpoint file (model.pt or .safetensors)")
    ap.add_argument("--model", choices=PRESET_NAMES, default=None,
                    help="validate against this preset instead of the detected variant")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument("--verify", action="store_true",
                    help="first check the file's SHA-256 against the hub's published hash that `cosmos-dist "
                         "download` recorded next to it (hub-sha256.json); exit 1 on a mismatch, before unpickling")
    add_unpickle_flags(ap)
    return ap.parse_args(argv)


def _text(info: dict) -> str:
    k = info["keys"]
    lines = [
        f"checkpoint   {info['path']}",
        f"format       {info['format']}, {human_size(info['size_bytes'])}",
        f"fingerprint  {info['fingerprint']}",
        f"variant      {info['variant'] or 'unknown'}"
        + (f" ({info['variant_description']})" if info["variant_description"] else f": {info['detect_error']}"),
    ]
    if info["config"]:
        c = info["config"]
        lines.append(
            f"config       D={c['model_channels']} blocks={c['num_blocks']} heads={c['num_heads']} "
            f"mlp_ratio={c['mlp_ratio']} crossattn={c['crossattn_emb_channels']} "
            f"adaln_lora={c['adaln_lora_dim']} video2world={c['video2world']}"
        )
    lines += [
        f"parameters   {info['parameters']:,}",
        "dtypes       " + (", ".join(f"{d}: {n}" for d, n in sorted(info["dtypes"].items())) or "-"),
        f"keys         {k['total']} = network {k['network']} + extra_state {k['extra_state']} "
        f"+ logvar {k['logvar']} + ignored {k['ignored']}",
    ]
    if info["extra_state_forms"]:
        lines.append("extra state  " + ", ".join(f"{n} x {form}" for form, n in info["extra_state_forms"].items()))
    if info["valid"]:
        lines.append(f"validation   OK against {info['validated_against']}")
    else:
        lines.append("validation   FAILED")
        lines += ["  " + line for line in info["validation_message"].splitlines()]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    model = get_preset(args.model) if args.model else None
    if args.verify:
        from cosmos_dist.checkpoint.hashes import verify_file
        from cosmos_dist.errors import CheckpointError

        try:
            print(f"verify       {verify_file(args.path)}", file=sys.stderr if args.json else sys.stdout)
        except CheckpointError as exc:
            if "no published SHA-256" in str(exc):
                raise
            print(f"error: {exc}", file=sys.stderr)
            return 1
    info = inspect_checkpoint(args.path, model, args.allow_unsafe_pickle, args.trust_file)
    print(json.dumps(info, indent=2) if args.json else _text(info))
    return 0 if info["valid"] else 1


if __name__ == "__main__":
    run_tool(main)
