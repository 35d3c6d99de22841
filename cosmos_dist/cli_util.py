"""Small helpers shared by the command-line tools in tools/."""
from __future__ import annotations

import sys
from typing import Callable

from cosmos_dist.errors import CosmosDistError


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
