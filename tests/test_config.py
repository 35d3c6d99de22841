"""One source for configuration: the schema, the choice lists, the YAML files, the keys messages name."""
from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from cosmos_dist import choices
from cosmos_dist.configure import check_config_keys, check_override_keys, closest_key, schema_keys
from cosmos_dist.config import GenerateConfig, ParallelConfig, check_seed, validate_config, validate_sample_fields
from cosmos_dist.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SECTIONS = [f.name for f in dataclasses.fields(GenerateConfig)
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory())]


def compose(*overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cosmos_dist.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("generate", overrides=list(overrides))


# ---- every key a message names is a key the command line accepts -----------------------------------
_FILE_SUFFIXES = {"pt", "safetensors", "json", "jit", "mp4", "bin", "index"}
_KEY_IN_TEXT = re.compile(rf"(?<![\w.{{/\[(])({'|'.join(SECTIONS)})\.([A-Za-z_][A-Za-z0-9_]*)")


def _string_literals(path: Path):
    """The string constants of a file that are not docstrings (those show Python code too, `video.save(...)`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_keys_named_in_messages_are_schema_keys():
    known = schema_keys()
    files = [*sorted((REPO / "cosmos_dist").rglob("*.py")), *sorted((REPO / "tools").glob("*.py")), REPO / "generate.py"]
    found, wrong = 0, []
    for path in files:
        for line, text in _string_literals(path):
            for m in _KEY_IN_TEXT.finditer(text):
                if m.group(2) in _FILE_SUFFIXES:  # model.pt, model.safetensors: file names
                    continue
                found += 1
                if f"{m.group(1)}.{m.group(2)}" not in known:
                    wrong.append(f"{path.relative_to(REPO)}:{line}: {m.group(0)}")
    assert found > 30  # the scan sees the messages (parallel.cp_impl, precision.fp8_attention_kernel, ...)
    assert not wrong, "messages name keys the command line rejects:\n" + "\n".join(wrong)


def test_parallel_keys_of_layout_messages_are_accepted():
    # The usp / te messages tell users to set these: they must compose and reach the layout's config.
    cfg = compose("model=tiny_text2world", "prompt=x", "parallel.cp_size=4", "parallel.cp_impl=usp",
                  "parallel.ulysses_size=2", "parallel.te_comm_type=a2a")
    pcfg = ParallelConfig.from_node(cfg.parallel)
    assert (pcfg.ulysses_size, pcfg.te_comm_type, pcfg.cp_size) == (2, "a2a", 4)
    from cosmos_dist.parallel import layout

    assert layout.ParallelConfig is ParallelConfig  # one class
    with pytest.raises(ConfigError, match=r"parallel\.ulysses_size"):
        validate_config(compose("model=tiny_text2world", "prompt=x", "parallel.cp_size=4", "parallel.ulysses_size=3"))


# ---- choice lists defined once ---------------------------------------------------------------------
def test_modules_use_the_one_choice_lists():
    from cosmos_dist.attention import fp8 as attention_fp8
    from cosmos_dist.attention import local
    from cosmos_dist.io import visual_input
    from cosmos_dist.models import fp8 as models_fp8
    from cosmos_dist.parallel import layout
    from cosmos_dist.pipeline import residency
    from cosmos_dist.sampling import settings

    assert local.ATTENTION_KERNELS is choices.ATTENTION_KERNELS
    assert attention_fp8.KERNELS is choices.FP8_ATTENTION_KERNELS
    assert models_fp8.LINEAR_KERNELS is choices.FP8_LINEAR_KERNELS
    assert visual_input.RESIZE_MODES is choices.RESIZE_MODES
    assert layout.CP_IMPLS is choices.CP_IMPLS and layout.TE_COMM_TYPES is choices.TE_COMM_TYPES
    assert residency.OFFLOAD_LEVELS is choices.OFFLOAD_LEVELS
    assert settings.SAMPLER_NAMES is choices.SAMPLERS


@pytest.mark.parametrize("override, key, allowed", [
    ("parallel.cp_impl=flash", "parallel.cp_impl", choices.CP_IMPLS),
    ("precision.attention_kernel=xformers", "precision.attention_kernel", choices.ATTENTION_KERNELS),
    ("precision.fp8_attention_kernel=x", "precision.fp8_attention_kernel", choices.FP8_ATTENTION_KERNELS),
    ("precision.fp8_linear_kernel=x", "precision.fp8_linear_kernel", choices.FP8_LINEAR_KERNELS),
    ("parallel.te_comm_type=x", "parallel.te_comm_type", choices.TE_COMM_TYPES),
    ("sampler.name=ddim", "sampler.name", choices.SAMPLERS),
])
def test_validation_messages_list_every_choice(override, key, allowed):
    with pytest.raises(ConfigError) as err:
        validate_config(compose("model=tiny_text2world", "prompt=x", override))
    assert str(err.value).startswith(f"{key}:")
    assert all(v in str(err.value) for v in allowed), str(err.value)


def test_choices_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = "import sys, cosmos_dist.choices; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'hydra', 'omegaconf')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- YAML files hold only what differs from the schema ---------------------------------------------
def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[f.name] = _defaults(type(value)) if dataclasses.is_dataclass(value) else value
    return out


def _redundant(values: dict, defaults: dict, prefix: str = "") -> list[str]:
    same = []
    for key, value in values.items():
        if key == "defaults":
            continue
        assert key in defaults, f"{prefix}{key} is not in the schema"
        if isinstance(value, dict):
            same += _redundant(value, defaults[key], f"{prefix}{key}.")
        elif value == defaults[key]:
            same.append(f"{prefix}{key}")
    return same


@pytest.mark.parametrize("path", sorted(CONF.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_yaml_holds_only_differences_from_the_schema(path):
    text = path.read_text()
    values = yaml.safe_load(text) or {}
    schema = _defaults(GenerateConfig)
    defaults = schema if "@package _global_" in text else schema[path.parent.name]
    assert _redundant(values, defaults) == [], f"{path.name} repeats schema defaults"


def test_every_group_option_composes_and_validates():
    for path in sorted(CONF.glob("*/*.yaml")):
        group, option = path.parent.name, path.stem
        extra = ["input_path=x.jpg"] if "video2world" in option else []
        cfg = compose("model=tiny_text2world", "prompt=x", f"{group}={option}", *extra)
        if group == "model":
            assert cfg.model.preset == option
        validate_config(cfg)


# ---- one validation for the command line and a prompts file -----------------------------------------
@pytest.mark.parametrize("seed", [-1, 0, 7, 2**63 - 1, 2**63, 1.5, True, "3"])
def test_seed_rule_is_the_same_on_the_command_line_and_in_a_prompts_file(tmp_path, seed):
    from cosmos_dist.io.prompts import BadLine, load_prompts

    try:
        check_seed(seed)
        cli_ok = True
    except ConfigError:
        cli_ok = False
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"prompt": "a cat", "seed": seed}) + "\n")
    items, bad = load_prompts(p)
    assert (len(items) == 1) == cli_ok and all(isinstance(b, BadLine) for b in bad)
    if not cli_ok:
        assert "seed" in bad[0].reason


def test_command_line_seed_is_validated():
    with pytest.raises(ConfigError, match=r"^seed: -1"):
        validate_config(compose("model=tiny_text2world", "prompt=x", "seed=-1"))


def test_validate_sample_fields_names_the_field():
    validate_sample_fields({"seed": 3, "negative_prompt": "blurry", "resize_mode": "crop", "num_input_frames": 9})
    with pytest.raises(ConfigError, match=r"^line 4: resize_mode: 'zoom'"):
        validate_sample_fields({"resize_mode": "zoom"}, where="line 4: ")
    with pytest.raises(ConfigError, match="num_input_frames"):
        validate_sample_fields({"num_input_frames": 5})


# ---- unknown keys -----------------------------------------------------------------------------------
@pytest.mark.parametrize("override, hint", [
    ("num_step=3", "num_steps"),
    ("+num_step=3", "num_steps"),
    ("++guidence=3", "guidance"),
    ("ulysses_size=2", "parallel.ulysses_size"),
    ("parallel.cp_sise=2", "parallel.cp_size"),
    ("precision.fp8_atention=true", "precision.fp8_attention"),
])
def test_unknown_keys_are_refused_with_the_closest_key(override, hint):
    with pytest.raises(ConfigError) as err:
        check_override_keys(["prompt=x", override], str(CONF))
    key = override.lstrip("+").split("=")[0]
    assert str(err.value).startswith(f"{key}: not a configuration key; did you mean {hint}?")


def test_known_keys_and_group_choices_pass():
    check_override_keys(["model=tiny_text2world", "precision=fp8", "parallel.ulysses_size=2", "guidance=5,7",
                         "hydra.job.chdir=false", "guardrail.blocklist=[a,b]", "log_level=debug"], str(CONF))
    assert closest_key("zzzz", schema_keys()) is None


def test_composed_config_with_an_added_key_is_refused():
    from omegaconf import open_dict

    cfg = compose("model=tiny_text2world", "prompt=x")
    check_config_keys(cfg)
    with open_dict(cfg):
        cfg.num_step = 3  # what Hydra's own `+num_step=3` does
    with pytest.raises(ConfigError, match=r"num_step: not a configuration key; did you mean num_steps\?"):
        check_config_keys(cfg)


# ---- the Python API composes and checks through the command line's code -------------------------------
def test_python_api_refuses_what_the_command_line_refuses():
    from cosmos_dist.configure import compose_config, config_dir, with_settings

    assert config_dir() == CONF  # a checkout: its top-level conf/ (an installed wheel: tests/test_install.py)
    with pytest.raises(ConfigError, match=r"^num_step: not a configuration key; did you mean num_steps\?"):
        compose_config(["model=tiny_text2world", "num_step=3"])
    with pytest.raises(ConfigError, match=r"^parallel\.ulysses_sise: not a configuration key; did you mean "
                                          r"parallel\.ulysses_size\?"):
        compose_config(["model=tiny_text2world"], parallel={"ulysses_sise": 2})
    cfg = compose_config(["model=tiny_text2world", "cache=fbcache"], log_level="debug")
    assert (cfg.cache.policy, cfg.log_level) == ("fbcache", "debug")
    with pytest.raises(ConfigError, match=r"^guidence: not a configuration key; did you mean guidance\?"):
        with_settings(cfg, {"guidence": 3})
    with pytest.raises(ConfigError, match=r"^seed: -1"):
        with_settings(cfg, {"seed": -1})
