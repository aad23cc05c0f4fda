"""The package layout shows the architecture: data -> keras_codec (layers, models, training, evaluation)
-> export -> edge_runtime, with imports going one way and no import cycle between modules."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("keras_codec", "export", "edge_runtime", "data")


def _modules() -> dict:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict) -> set:
    """Project modules `name` imports anywhere in its file (module top or inside functions)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # a package's own __init__ is not a cycle
                found.add(t)
    return found


def _graph() -> dict:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_cycle_between_modules():
    """Over the workstation side (keras_codec, export, data). The edge runtime imports some of its own modules
    inside functions, each only on the path that needs it (a decode's start-up time), so it is not held to this."""
    graph = {m: {n for n in deps if not n.startswith("edge_runtime")} for m, deps in _graph().items()
             if not m.startswith("edge_runtime")}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_go_one_way():
    graph = _graph()
    rules = {"edge_runtime": ("keras_codec", "export"), "data": ("keras_codec", "export"),
             "export": ("keras_codec.training", "keras_codec.cli"),
             "keras_codec.models": ("keras_codec.training", "keras_codec.evaluation", "keras_codec.cli", "export"),
             "keras_codec.layers": ("keras_codec.models", "keras_codec.training", "keras_codec.evaluation", "export")}
    bad = [f"{m} imports {n}" for m, deps in graph.items() for prefix, banned in rules.items()
           if m == prefix or m.startswith(prefix + ".") for n in deps if n.startswith(banned)]
    assert not bad, bad


def test_keras_codec_top_level_is_packages_and_the_entry_points():
    flat = sorted(p.name for p in (ROOT / "keras_codec").glob("*.py"))
    assert flat == ["__init__.py", "cli.py", "config.py"], flat
    for pkg in ("layers", "models", "training", "evaluation"):
        assert (ROOT / "keras_codec" / pkg / "__init__.py").is_file()
    assert (ROOT / "keras_codec" / "models" / "default.py").is_file()
    for mod in ("conversion", "int8", "verify"):
        assert (ROOT / "export" / f"{mod}.py").is_file()
