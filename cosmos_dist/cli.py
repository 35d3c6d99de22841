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
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import io
import os
import sys
from pathlib import Path
from typing import Sequence

from cosmos_dist.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, ConfigError

PROG = "cosmos-dist"
INTERRUPTED_LINE = "interrupted: stopped by Ctrl-C; finished samples are kept, a rerun continues with the rest"


def is_rank_zero() -> bool:
    """True outside torchrun and on its rank 0 (the rank that prints errors every rank shares)."""
    return os.environ.get("RANK", "0") == "0"


def config_dir() -> str:
    """The folder holding generate.yaml: inside the installed package (a wheel carries the checkout's conf/
    as cosmos_dist/conf, see pyproject.toml), else the checkout's top-level conf/ next to the package."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "generate.yaml").is_file():
            return str(candidate)
    raise ConfigError(f"no Hydra configuration found (looked for conf/generate.yaml in {package} and {package.parent}); "
                      "reinstall cosmos-dist")


# ---- override keys against the schema -------------------------------------------------------------
def schema_keys() -> set[str]:
    """Every dotted key of GenerateConfig (`num_steps`, `parallel.ulysses_size`, ...), sections included."""
    import dataclasses

    from cosmos_dist.config import GenerateConfig

    keys: set[str] = set()

    def walk(cls, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            key = prefix + f.name
            keys.add(key)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                walk(type(default), key + ".")

    walk(GenerateConfig, "")
    return keys


def config_groups(conf: str | None = None) -> set[str]:
    """The config groups of conf/ (model, sampler, precision, parallel, offload, guardrail)."""
    root = Path(conf or config_dir())
    return {p.name for p in root.iterdir() if p.is_dir()}


def closest_key(key: str, known: set[str]) -> str | None:
    """The known key a misspelt one most likely meant: by the whole dotted name, else by its last part
    (`ulysses_size` -> `parallel.ulysses_size`)."""
    match = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    if match:
        return match[0]
    leaf = key.rsplit(".", 1)[-1]
    by_leaf = {k.rsplit(".", 1)[-1]: k for k in sorted(known) if "." in k}
    match = difflib.get_close_matches(leaf, sorted(by_leaf), n=1, cutoff=0.75)
    return by_leaf[match[0]] if match else None


def unknown_key_error(key: str, known: set[str]) -> ConfigError:
    hint = closest_key(key, known)
    fix = f"did you mean {hint}?" if hint else "no configuration key is close to it"
    return ConfigError(f"{key}: not a configuration key; {fix} (`{PROG} generate --help` lists every key; "
                       "a leading + does not add keys)")


def check_override_keys(overrides: Sequence[str], conf: str | None = None) -> None:
    """ConfigError for the first override whose key the schema does not have (`+key=...` included). Group
    choices (model=..., precision=...) and hydra.* are Hydra's to check; malformed overrides too."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return  # Hydra reports the syntax error itself
    known = schema_keys()
    groups = config_groups(conf)
    for override in parsed:
        key = override.key_or_group
        if key == "hydra" or key.startswith(("hydra.", "hydra/")) or override.package is not None:
            continue
        if key in groups or key.split("/", 1)[0] in groups and "/" in key:
            continue
        if key not in known:
            raise unknown_key_error(key, known)


def check_config_keys(cfg) -> None:
    """ConfigError for a key of the composed config that the schema does not have (a key a YAML file of
    --config-dir added, or anything that slipped past the override check)."""
    from omegaconf import DictConfig

    known = schema_keys()

    def walk(node, prefix: str) -> None:
        for key in node.keys():
            dotted = prefix + str(key)
            if dotted == "hydra":
                continue
            if dotted not in known:
                raise unknown_key_error(dotted, known)
            value = node._get_node(key)
            if isinstance(value, DictConfig) and not value._is_none():
                walk(value, dotted + ".")

    walk(cfg, "")


# ---- generate --------------------------------------------------------------------------------------
def generate(argv: Sequence[str], prog: str = f"{PROG} generate") -> int:
    """Hydra's command line over conf/ and the schema; returns the exit code (the worst of a --multirun)."""
    import hydra
    from hydra._internal.utils import get_args_parser

    from cosmos_dist.config import register_configs
    from cosmos_dist.generate import run_cli

    conf = config_dir()
    args, _ = get_args_parser().parse_known_args(list(argv))
    try:
        check_override_keys(args.overrides or [], conf)
    except ConfigError as exc:
        if is_rank_zero():
            print(f"error: {exc}", file=sys.stderr)
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
