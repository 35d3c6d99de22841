#!/usr/bin/env python
"""`cosmos-dist make-checkpoint` from a checkout: python tools/make_checkpoint.py --help (the code is cosmos_dist/commands/make_checkpoint.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmos_dist.commands import run_command  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_command("make_checkpoint", sys.argv[1:]))
