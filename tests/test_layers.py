"""The import rules of docs/ARCHITECTURE.md ("Layers, bottom to top"), checked on the source: no module of
cosmos_dist imports one of a higher layer, and no two modules import each other, directly or round a loop,
counting imports inside functions too (a lazy import is still an arrow)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cosmos_dist"

# Layer of each top-level module or subpackage of cosmos_dist (docs/ARCHITECTURE.md's table). An import may go
# to the same layer or a lower one.
LAYERS = {
    "errors": 0, "choices": 0, "kernels": 0, "sampling": 0, "attention": 0,
    "config": 1, "configure": 1,
    "models": 2, "tokenizer": 2, "text": 2, "checkpoint": 2, "guardrails": 2,
    "io": 2,
    "parallel": 3,
    "pipeline": 4,
    "cli_util": 5, "cli": 5, "generate": 5, "run_summary": 5, "commands": 5, "__main__": 5,
    "__init__": 5,  # the package's lazy exports
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("cosmos_dist",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 2:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("cosmos_dist"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    edges[name].add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                edges[name].update(a.name for a in node.names if a.name in modules)
    return edges


def _layer_key(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    missing = {_layer_key(m) for m in _modules()} - set(LAYERS)
    assert not missing, f"add {sorted(missing)} to LAYERS here and to docs/ARCHITECTURE.md's layer table"


def test_no_import_goes_up_a_layer():
    edges = _imports(_modules())
    upward = sorted(
        f"{src} -> {dst}" for src, dsts in edges.items() for dst in dsts
        if dst != "cosmos_dist" and LAYERS[_layer_key(dst)] > LAYERS[_layer_key(src)]
    )
    assert not upward, "imports up the layers:\n" + "\n".join(upward)


def test_no_import_cycles():
    edges = _imports(_modules())
    edges = {m: {d for d in ds if d in edges and d != "cosmos_dist"} for m, ds in edges.items()}
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in edges:
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_a_cycle_and_an_upward_arrow(tmp_path, monkeypatch):
    """The scan itself: a planted upward import and a planted cycle are found (so the tests above can fail)."""
    import shutil

    fake = tmp_path / "cosmos_dist"
    shutil.copytree(PACKAGE, fake, ignore=shutil.ignore_patterns("__pycache__"))
    (fake / "errors.py").write_text((fake / "errors.py").read_text() + "\ndef _x():\n    from cosmos_dist.pipeline import base\n")
    (fake / "kernels" / "te.py").write_text((fake / "kernels" / "te.py").read_text()
                                            + "\ndef _y():\n    from cosmos_dist.kernels import fp8_numerics\n")
    (fake / "kernels" / "fp8_numerics.py").write_text((fake / "kernels" / "fp8_numerics.py").read_text()
                                                      + "\ndef _z():\n    from cosmos_dist.kernels import te\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    with pytest.raises(AssertionError, match="cosmos_dist.errors -> cosmos_dist.pipeline.base"):
        test_no_import_goes_up_a_layer()
    with pytest.raises(AssertionError, match="cosmos_dist.kernels.fp8_numerics"):
        test_no_import_cycles()
