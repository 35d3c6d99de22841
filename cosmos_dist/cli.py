"""The `cosmos-dist` command (also `python -m cosmos_dist`, and the top-level generate.py of a checkout).

    cosmos-dist generate model=tiny_text2world prompt="a robot walks through a warehouse"
    cosmos-dist generate --multirun model=tiny_text2world prompt="..." guidance=5,7 seed=1,2
    torchrun --nproc_per_node=8 -m cosmos_dist generate model=7b_text2world prompts_file=p.jsonl parallel.cp_size=4
    cosmos-dist shard-status --help

`generate` is Hydra's command line over the schema in cosmos_dist/config.py (every override, --multirun,
--help, --cfg job). The other subcommands are the modules named in cosmos_dist.commands.COMMANDS; a new
entry there is a new subcommand here without any edit.

Before Hydra composes anything, every override's key is checked against the schema, `+key=value`
included: an unknown key is one `error:` line with the closest known key, exit code 2 (errors.py lists
the exit codes). Under torchrun such an error is printed by rank 0 only (every rank sees the same one).
The configs, the key checks and the validation are cosmos_dist/configure.py's, the same the Python API
(`from_pretrained`, `compose_config`) goes through.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import io
import sys
from pathlib import Path
from typing import Sequence

from cosmos_dist.cli_util import is_rank_zero, report_once
from cosmos_dist.configure import PROG, check_override_keys, config_dir
from cosmos_dist.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, ConfigError

INTERRUPTED_LINE = "interrupted: stopped by Ctrl-C; finished samples are kept, a rerun continues with the rest"


# ---- generate --------------------------------------------------------------------------------------
def generate(argv: Sequence[str], prog: str = f"{PROG} generate") -> int:
    """Hydra's command line over conf/ and the schema; returns the exit code (the worst of a --multirun)."""
    import hydra
    from hydra._internal.utils import get_args_parser

    from cosmos_dist.config import register_configs
    from cosmos_dist.generate import run_cli

    args, _ = get_args_parser().parse_known_args(list(argv))
    try:
        conf = str(config_dir())
        check_override_keys(args.overrides or [], conf)
    except ConfigError as exc:
        report_once(f"error: {exc}")
        return EXIT_USAGE
    register_configs()
    state = {"code": EXIT_OK, "entered": False}

    @hydra.main(version_base="1.3", config_path=conf, config_name="generate")
    def task(cfg) -> None:
        state["entered"] = True
        _restore_stderr(held)
        # In a --multirun sweep one failed combination must not stop the others: remember, exit at the end.
        state["code"] = max(state["code"], run_cli(cfg))

    # Hydra reports a composition error (an unknown group option, a wrong type) on stderr and exits 1: on
    # ranks other than 0 that report is held back (rank 0 prints the same one), and it exits 2 here.
    held = None if is_rank_zero() else _hold_stderr()
    saved_argv = sys.argv
    sys.argv = [prog, *argv]
    try:
        task()
    except SystemExit as exc:
        if not state["entered"]:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if code != 0 and not is_rank_zero():
                report_once("")  # rank 0 prints Hydra's report; give it time to
            return EXIT_OK if code == 0 else EXIT_USAGE
        raise
    finally:
        sys.argv = saved_argv
        _restore_stderr(held)
    return state["code"]


def _hold_stderr():
    real = sys.stderr
    sys.stderr = io.StringIO()
    return real


def _restore_stderr(real) -> None:
    if real is not None and sys.stderr is not real:
        sys.stderr = real


# ---- the command -----------------------------------------------------------------------------------
def subcommands() -> dict[str, str]:
    """subcommand -> module under cosmos_dist.commands, `generate` first."""
    from cosmos_dist.commands import COMMANDS

    return {"generate": "", **COMMANDS}


def _summary_line(module: str) -> str:
    """The first line of a command module's docstring, read without importing it (no torch for --help)."""
    spec = importlib.util.find_spec(f"cosmos_dist.commands.{module}")
    try:
        doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError, TypeError, AttributeError):
        doc = ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def usage() -> str:
    lines = [
        f"usage: {PROG} COMMAND [ARGS...]   (also: python -m cosmos_dist COMMAND ...)",
        "",
        "commands:",
        f"  {'generate':<16} generate videos: Hydra overrides (model=... prompt=... | prompts_file=...), "
        "--multirun, --help, --cfg job",
    ]
    for name, module in subcommands().items():
        if module:
            lines.append(f"  {name:<16} {_summary_line(module)}")
    lines += [
        "",
        f"`{PROG} COMMAND --help` describes one. Under torchrun: torchrun --nproc_per_node=N -m cosmos_dist generate ...",
        "exit codes: 0 success; 1 some samples failed; 2 configuration or input error; 3 interrupted (a rerun continues)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch `cosmos-dist COMMAND ...`; returns the exit code."""
    from cosmos_dist.commands import run_command

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return EXIT_OK if argv else EXIT_USAGE
    if argv[0] in ("-V", "--version"):
        from cosmos_dist import __version__

        print(f"{PROG} {__version__}")
        return EXIT_OK
    name, rest = argv[0], argv[1:]
    commands = subcommands()
    try:
        if name == "generate":
            return generate(rest)
        if name in commands:
            saved = sys.argv
            sys.argv = [f"{PROG} {name}", *rest]  # argparse's usage line names the subcommand
            try:
                return run_command(commands[name], rest)
            finally:
                sys.argv = saved
    except KeyboardInterrupt:
        # The run's own cleanup (closing the process groups, temporary files) ran on the way out.
        print(INTERRUPTED_LINE, file=sys.stderr)
        return EXIT_INTERRUPTED
    hint = difflib.get_close_matches(name, sorted(commands), n=1)
    if "=" in name:
        hint = [f"generate {name}"]
    print(f"error: {name!r} is not a {PROG} command"
          + (f"; did you mean `{PROG} {hint[0]}`?" if hint else f"; choose one of {', '.join(commands)}"),
          file=sys.stderr)
    return EXIT_USAGE


def entry_point() -> None:
    """The console script `cosmos-dist` (pyproject.toml [project.scripts])."""
    sys.exit(main())
