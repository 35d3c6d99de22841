#!/usr/bin/env python
"""Convert a Cosmos-Predict1 DiT `model.pt` to safetensors (plus a small JSON record).

The output holds the network tensors only, with their `net.` prefix (and `net.pos_embedder.seq`,
which the loader ignores); Transformer Engine `_extra_state` entries and `logvar.*` are dropped.
Next to OUT.safetensors it writes OUT.json: the detected DiTConfig fields and the identity
(path, size, mtime, fingerprint) of the source. The source is validated strictly first.

Files whose extra state is pickled io.BytesIO (old Transformer Engine) are read with
--allow-unsafe-pickle, which still loads weights-only with io.BytesIO the one class allowed; a file
holding any other pickled object is refused unless --trust-file (full unpickling: only for a file you
made yourself). The safetensors output then loads safely everywhere.

Example:
    cosmos-dist convert checkpoints/Cosmos-Predict1-7B-Text2World/model.pt \\
        --output checkpoints/Cosmos-Predict1-7B-Text2World/model.safetensors
"""
from __future__ import annotations

import argparse

from cosmos_dist.checkpoint import convert_checkpoint
from cosmos_dist.cli_util import run_tool
from cosmos_dist.commands import add_unpickle_flags


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("input", help="model.pt to convert")
    ap.add_argument("--output", required=True, help="OUT.safetensors to write (OUT.json is written next to it)")
    add_unpickle_flags(ap)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rec = convert_checkpoint(args.input, args.output, args.allow_unsafe_pickle, args.trust_file)
    print(f"wrote {rec['output']['path']} ({rec['tensors']} tensors, {rec['output']['size']:,} bytes, "
          f"variant {rec['variant']})")
    print(f"wrote {rec['json']}")
    print(f"dropped {rec['dropped']['extra_state']} extra_state and {rec['dropped']['logvar']} logvar entries")
    return 0


if __name__ == "__main__":
    run_tool(main)
