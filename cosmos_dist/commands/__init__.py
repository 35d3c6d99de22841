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
