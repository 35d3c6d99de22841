"""`python -m cosmos_dist COMMAND ...`: the same as the `cosmos-dist` console command (cosmos_dist/cli.py).

Under torchrun, after a plain install: `torchrun --nproc_per_node=8 -m cosmos_dist generate ...`.
"""
import sys

from cosmos_dist.cli import main

if __name__ == "__main__":
    sys.exit(main())
