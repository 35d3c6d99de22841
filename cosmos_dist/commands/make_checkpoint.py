#!/usr/bin/env python
"""Write a random Cosmos-Predict1 DiT checkpoint in the exact format of the real `model.pt`.

Keys are `net.*` (the network's state dict, including `net.pos_embedder.seq` = arange(128)), one
Transformer Engine `...attn.attn_op._extra_state` entry per self- and cross-attention of every
block in the chosen form, and `logvar.0.freqs`, `logvar.0.phases`, `logvar.1.weight`. A 7B file
has 630 keys, a 14B file 806. Weights are N(0, 0.02) (norm weights 1), generated directly in the
output dtype, so a 7B/14B file needs one copy of the weights in memory (about 14.5 / 28.5 GB in
bfloat16) and a few minutes.

`--format safetensors` writes what `cosmos-dist convert` produces: the `net.*` tensors only
(no logvar, no extra state unless asked for; BytesIO is impossible there).

Examples:
    cosmos-dist make-checkpoint --preset tiny_text2world --output /tmp/tiny/model.pt
    cosmos-dist make-checkpoint --preset 7b_video2world --output ckpt/7b_v2w/model.pt --extra-state bytesio
"""
from __future__ import annotations

import argparse

import torch

from cosmos_dist.checkpoint.synthetic import EXTRA_STATE_FORMS, FORMATS, write_random_checkpoint
from cosmos_dist.cli_util import human_size, run_tool
from cosmos_dist.models import PRESET_NAMES, get_preset

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--preset", required=True, choices=PRESET_NAMES, help="network to write")
    ap.add_argument("--output", required=True, help="file to write (e.g. .../model.pt or .../model.safetensors)")
    ap.add_argument("--format", choices=FORMATS, default=None,
                    help="file format (default: safetensors if OUTPUT ends in .safetensors, else pt)")
    ap.add_argument("--extra-state", choices=EXTRA_STATE_FORMS, default=None,
                    help="form of the TE _extra_state entries: none, pickled-none (uint8 tensor of "
                         "pickle.dumps(None); default for pt), empty (empty uint8 tensor) or bytesio "
                         "(io.BytesIO objects of old TE: needs --allow-unsafe-pickle to load)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16", help="tensor dtype (default bfloat16)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    fmt = args.format or ("safetensors" if args.output.endswith(".safetensors") else "pt")
    info = write_random_checkpoint(
        args.output, get_preset(args.preset), fmt=fmt, extra_state=args.extra_state,
        dtype=DTYPES[args.dtype], seed=args.seed,
    )
    print(f"wrote {info['path']}")
    print(f"  preset      {args.preset} ({fmt}, {args.dtype}, extra state: {info['extra_state']}, seed {args.seed})")
    print(f"  keys        {info['keys']}")
    print(f"  parameters  {info['parameters']:,}")
    print(f"  size        {human_size(info['bytes'])}")
    return 0


if __name__ == "__main__":
    run_tool(main)
