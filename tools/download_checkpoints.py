#!/usr/bin/env python
"""`cosmos-dist download` from a checkout: python tools/download_checkpoints.py --help (the code is cosmos_dist/commands/download_checkpoints.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmos_dist.commands import run_command  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_command("download_checkpoints", sys.argv[1:]))
