"""The subcommands of `cosmos-dist` other than `generate`: each module has `main(argv) -> exit code`.

`run_command(name, argv)` runs one the way every entry point does (tools/NAME.py from a checkout, and the
console command): a user error (CosmosDistError) is one `error:` line and exit code 2 (4 for a busy shard),
never a traceback.
"""
from __future__ import annotations

import importlib
import sys

from cosmos_dist.errors import EXIT_USAGE, CosmosDistError

#: subcommand -> module under cosmos_dist.commands
COMMANDS = {
    "shard-status": "shard_status",
    "inspect": "inspect_checkpoint",
    "convert": "convert_checkpoint",
    "make-checkpoint": "make_checkpoint",
    "download": "download_checkpoints",
    "dit-forward": "dit_forward",
    "pack": "pack",
    "manifest": "manifest",
}


def run_command(module: str, argv: list[str] | None = None) -> int:
    """Run cosmos_dist.commands.<module>.main(argv); returns its exit code."""
    main = importlib.import_module(f"cosmos_dist.commands.{module}").main
    try:
        return int(main(argv) or 0)
    except CosmosDistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_USAGE)  # ShardBusy: EXIT_SHARD_BUSY


def add_unpickle_flags(ap) -> None:
    """The two ways past the weights-only load of a `model.pt`, worded the same in every command that reads one."""
    ap.add_argument("--allow-unsafe-pickle", action="store_true",
                    help="accept the one benign pickled form of the released files: old Transformer Engine "
                         "io.BytesIO extra state (the load stays weights-only; any other pickled object is refused)")
    ap.add_argument("--trust-file", action="store_true",
                    help="I trust this file: unpickle it fully (weights_only=False), whatever it holds. "
                         "Unpickling can run code from the file; only for a file you made yourself")
