"""A plain (non-editable) install from a built wheel, used from a directory outside the checkout.

The wheel is built once per session from a copy of the checkout's sources (nothing is written into the
checkout), installed with --no-deps into a virtualenv that sees this interpreter's packages (torch and the
other dependencies are not downloaded again), and driven only through what the wheel installs: the
`cosmos-dist` console command and `python -m cosmos_dist`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="session")
def venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("cosmos_dist", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(wheels), str(src)], check=True, env=_env(), cwd=root, timeout=600)
    (wheel,) = wheels.glob("cosmos_dist-*.whl")
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)], check=True, timeout=300)
    subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, env=_env(), cwd=root, timeout=600)
    return env_dir


def run(venv: Path, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = _env()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def site_package(venv: Path) -> Path:
    (pkg,) = venv.glob("lib/python*/site-packages/cosmos_dist")
    return pkg


def package_files(pkg: Path) -> set[str]:
    return {str(p.relative_to(pkg)) for p in pkg.rglob("*") if "__pycache__" not in p.parts}


def test_the_installed_package_is_the_wheels(venv, tmp_path):
    proc = run(venv, "python", "-c", "import cosmos_dist, cosmos_dist.configure as c; print(cosmos_dist.__file__); print(c.config_dir())",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    module, conf = proc.stdout.split()
    pkg = site_package(venv)
    assert Path(module).parent == pkg  # not the checkout, not an editable install elsewhere
    assert Path(conf) == pkg / "conf" and (pkg / "conf" / "model" / "tiny_text2world.yaml").is_file()
    shipped = {str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")}
    assert shipped == {str(p.relative_to(pkg / "conf")) for p in (pkg / "conf").rglob("*.yaml")}  # conf/cache too


def test_python_api_composes_from_the_wheel(venv, tmp_path):
    # compose_config (what from_pretrained calls) reads the wheel's configs and refuses keys as the command does
    code = ("from cosmos_dist import compose_config\n"
            "cfg = compose_config(['model=tiny_text2world', 'cache=teacache'], parallel={'ulysses_size': 1})\n"
            "print(cfg.model.preset, cfg.cache.policy, cfg.parallel.ulysses_size)\n"
            "try:\n    compose_config(['model=tiny_text2world', 'num_step=3'])\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    proc = run(venv, "python", "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.strip().splitlines()
    assert first == "tiny_text2world teacache 1"
    assert second.startswith("ConfigError num_step: not a configuration key; did you mean num_steps?"), second
    assert not list(tmp_path.iterdir())


def test_generate_from_an_empty_directory(venv, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    before = package_files(site_package(venv))
    proc = run(venv, "cosmos-dist", "generate", "model=tiny_text2world", "prompt=a red ball rolls on a wooden floor",
               "name=ball", "height=32", "width=48", "num_frames=9", "num_steps=2", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert (work / "outputs" / "ball.mp4").stat().st_size > 0
    assert (work / "outputs" / "ball.json").is_file() and (work / "outputs" / "manifest.jsonl").is_file()
    # the tiny preset's random checkpoints land under ./checkpoints; nothing is written beside the package
    assert (work / "checkpoints" / "tiny-random").is_dir()
    assert sorted(p.name for p in work.iterdir()) == ["checkpoints", "outputs"]
    assert package_files(site_package(venv)) == before
    assert "1 done" in proc.stderr


def test_subcommands_and_module_form(venv, tmp_path):
    proc = run(venv, "cosmos-dist", "shard-status", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "usage: cosmos-dist shard-status" in proc.stdout, proc.stdout + proc.stderr
    proc = run(venv, "python", "-m", "cosmos_dist", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("generate", "shard-status", "inspect", "convert", "make-checkpoint", "download", "dit-forward"):
        assert f"  {name} " in proc.stdout, name
    proc = run(venv, "python", "-m", "cosmos_dist", "generate", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "tiny_text2world" in proc.stdout and "num_steps" in proc.stdout, proc.stderr
    proc = run(venv, "cosmos-dist", "generate", "prompt=x", "num_step=3", cwd=tmp_path)
    assert proc.returncode == 2 and "did you mean num_steps?" in proc.stderr, proc.stderr
    assert not list(tmp_path.iterdir()), "--help and refused runs must not create files"


def test_pyproject_lists_every_package():
    """The package list is explicit (conf/ is mapped in as cosmos_dist.conf): a new subpackage must be added."""
    from setuptools import find_packages

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert listed == set(find_packages(str(REPO), include=["cosmos_dist*"])) | {"cosmos_dist.conf"}
