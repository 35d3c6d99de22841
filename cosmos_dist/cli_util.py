"""Small helpers shared by the command line (cli.py, generate.py) and the tools in cosmos_dist/commands/."""
from __future__ import annotations

import os
import sys
import time
from typing import Callable

from cosmos_dist.errors import CosmosDistError


def is_rank_zero() -> bool:
    """True outside torchrun and on its rank 0 (the rank that prints errors every rank shares)."""
    return os.environ.get("RANK", "0") == "0"


#: How long a rank other than 0 waits before it leaves on an error every rank shares (a configuration error): torchrun
#: ends the whole job when the first rank exits, which could cut rank 0 off before it printed the one line.
PEER_GRACE_S = 3.0


def report_once(message: str) -> None:
    """Print `message` on rank 0 only; the other ranks give rank 0 time to print it before they exit."""
    if is_rank_zero():
        print(message, file=sys.stderr, flush=True)
    else:
        time.sleep(PEER_GRACE_S)


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
