"""One way to a run configuration, for the command line and for Python callers alike.

`cosmos-dist generate <overrides>` (cosmos_dist/cli.py) and the Python API (`from_pretrained`, `compose_config`)
both read the Hydra configs of `config_dir()`, refuse keys the schema does not have (`check_override_keys`
before composing, `check_config_keys` after), and validate with `check_config`. So an override that the command
line refuses is refused by `compose_config` with the same message, and an installed wheel (no checkout around
it) reads the same files.

`compose_config(overrides, **options)` gives what `cosmos-dist generate <overrides>` would run with;
`with_settings(cfg, settings)` is cfg with one call's generation settings, validated the same way.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from cosmos_dist.errors import ConfigError

#: How the command is called, for the messages (the console script of pyproject.toml).
PROG = "cosmos-dist"


def config_dir() -> Path:
    """The folder of generate.yaml: inside the installed package (a wheel carries the checkout's conf/ as
    cosmos_dist/conf, see pyproject.toml), else the checkout's top-level conf/ next to the package."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "generate.yaml").is_file():
            return candidate
    raise ConfigError(f"no Hydra configuration found (looked for conf/generate.yaml in {package} and "
                      f"{package.parent}); reinstall cosmos-dist")


# ---- keys against the schema ------------------------------------------------------------------------
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


def config_groups(conf: str | Path | None = None) -> set[str]:
    """The config groups of conf/ (model, sampler, precision, parallel, offload, guardrail, cache)."""
    root = Path(conf or config_dir())
    return {p.name for p in root.iterdir() if p.is_dir()}


def closest_key(key: str, known: Iterable[str]) -> str | None:
    """The known key a misspelt one most likely meant: by the whole dotted name, else by its last part
    (`ulysses_size` -> `parallel.ulysses_size`)."""
    known = sorted(known)
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if match:
        return match[0]
    leaf = key.rsplit(".", 1)[-1]
    by_leaf = {k.rsplit(".", 1)[-1]: k for k in known if "." in k}
    match = difflib.get_close_matches(leaf, sorted(by_leaf), n=1, cutoff=0.75)
    return by_leaf[match[0]] if match else None


def unknown_key_error(key: str, known: Iterable[str]) -> ConfigError:
    hint = closest_key(key, known)
    fix = f"did you mean {hint}?" if hint else "no configuration key is close to it"
    return ConfigError(f"{key}: not a configuration key; {fix} (`{PROG} generate --help` lists every key; "
                       "a leading + does not add keys)")


def check_override_keys(overrides: Sequence[str], conf: str | Path | None = None) -> None:
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
    --config-dir added, a setting of a Python call, or anything that slipped past the override check)."""
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


def check_config(cfg, *, needs_prompt: bool = True) -> None:
    """The one check of a composed configuration: schema keys, then the value rules of config.validate_config.
    `needs_prompt=False`: the Python API, whose calls bring the prompts."""
    from cosmos_dist.config import validate_config

    check_config_keys(cfg)
    validate_config(cfg, needs_prompt=needs_prompt)


# ---- the Python API's way in ------------------------------------------------------------------------
def _flatten(options: Mapping[str, Any], prefix: str = "") -> list[str]:
    """{"precision": "fp8", "parallel": {"cp_size": 2}, "offload__chunk": 4} -> Hydra override strings."""
    out = []
    for key, value in options.items():
        key = prefix + key.replace("__", ".")
        if isinstance(value, Mapping):
            out.extend(_flatten(value, key + "."))
        else:
            out.append(f"{key}={_hydra_value(value)}")
    return out


def _hydra_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace("'", "\\'")
        return f"'{escaped}'"
    return str(value)


def compose_config(overrides: Sequence[str] = (), **options) -> Any:
    """The validated run configuration for Hydra `overrides` plus keyword `options` (see _flatten)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cosmos_dist.config import register_configs

    register_configs()
    args = list(overrides) + _flatten(options)
    conf = config_dir()
    check_override_keys(args, conf)  # the command line's message for a misspelt key, not Hydra's
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app (e.g. a --multirun job): compose beside it
        cfg = compose(config_name="generate", overrides=args)
    else:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(config_name="generate", overrides=args)
    check_config(cfg, needs_prompt=False)  # calls bring their prompts
    return cfg


def with_settings(cfg, settings: Mapping[str, Any]):
    """cfg with a call's generation settings (num_steps, guidance, seed, negative_prompt, num_frames, height,
    width, fps, sampler, ...), validated like the command line's."""
    if not settings:
        return cfg
    from omegaconf import OmegaConf, open_dict

    new = cfg.copy()
    with open_dict(new):
        for key, value in settings.items():
            if key == "sampler" and isinstance(value, str):
                key, value = "sampler.name", value
            if isinstance(value, Mapping):
                OmegaConf.update(new, key, dict(value), merge=True)
            else:
                OmegaConf.update(new, key, value, merge=False)
    check_config(new, needs_prompt=False)  # a misspelt setting is refused, not silently added
    return new
