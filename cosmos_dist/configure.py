"""The command line's configuration for Python callers: the same Hydra configs, schema and validation.

`compose_config(overrides, **options)` gives what `cosmos-dist generate <overrides>` would run with;
`with_settings(cfg, settings)` is cfg with one call's generation settings, validated the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence


def config_dir() -> Path:
    """The folder of generate.yaml: inside the installed package, or the checkout's conf/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "generate.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no generate.yaml under {here / 'conf'} or {here.parent / 'conf'}")


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

    from cosmos_dist.config import register_configs, validate_config

    register_configs()
    args = list(overrides) + _flatten(options)
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app (e.g. a --multirun job): compose beside it
        cfg = compose(config_name="generate", overrides=args)
    else:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name="generate", overrides=args)
    validate_config(cfg, needs_prompt=False)  # calls bring their prompts
    return cfg


def with_settings(cfg, settings: Mapping[str, Any]):
    """cfg with a call's generation settings (num_steps, guidance, seed, negative_prompt, num_frames, height,
    width, fps, sampler, ...), validated like the command line's."""
    if not settings:
        return cfg
    from omegaconf import OmegaConf, open_dict

    from cosmos_dist.config import validate_config

    new = cfg.copy()
    with open_dict(new):
        for key, value in settings.items():
            if key == "sampler" and isinstance(value, str):
                key, value = "sampler.name", value
            if isinstance(value, Mapping):
                OmegaConf.update(new, key, dict(value), merge=True)
            else:
                OmegaConf.update(new, key, value, merge=False)
    validate_config(new, needs_prompt=False)
    return new
