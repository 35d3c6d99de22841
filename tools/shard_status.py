#!/usr/bin/env python
"""`cosmos-dist shard-status` from a checkout: python tools/shard_status.py --help (the code is cosmos_dist/commands/shard_status.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmos_dist.commands import run_command  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_command("shard_status", sys.argv[1:]))
