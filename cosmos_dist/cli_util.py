"""Small helpers shared by the command line (cli.py, generate.py) and the tools in cosmos_dist/commands/."""
from __future__ import annotations

import os
import sys
from typing import Callable

from cosmos_dist.errors import CosmosDistError


def is_rank_zero() -> bool:
    """True outside torchrun and on its rank 0 (the rank that prints errors every rank shares)."""
    return os.environ.get("RANK", "0") == "0"


def human_size(n: int) -> str:
    """`14,472,601,083 bytes (13.48 GiB)`."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n:,} bytes ({n / scale:.2f} {unit})"
    return f"{n:,} bytes"


def run_tool(main: Callable[[], int]) -> None:
    """Exit with main()'s code; a user error is one `error:` line and exit code 2, no traceback."""
    try:
        sys.exit(main())
    except CosmosDistError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
