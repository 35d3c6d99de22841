#!/usr/bin/env python
"""`cosmos-dist dit-forward` from a checkout: python tools/dit_forward.py --help (the code is cosmos_dist/commands/dit_forward.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmos_dist.commands import run_command  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_command("dit_forward", sys.argv[1:]))
