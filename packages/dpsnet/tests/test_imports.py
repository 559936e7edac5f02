"""dpsnet's layout: no import cycles (top-level and function-level imports alike), inference never imports
training, the model layer imports neither, and every module and function stays short enough to read."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dpsnet"
MODEL_LAYER = {"dpsnet.model", "dpsnet.backbone", "dpsnet.counting", "dpsnet.detection", "dpsnet.classifier"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = ["dpsnet", *path.relative_to(SRC).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _targets(name: str, path: Path) -> set[str]:
    """The dpsnet modules ``name`` imports anywhere in its file (functions included), with the packages a target
    brings in (its parents, unless they are the importer's own)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    targets = {t for t in found if t in MODULES and t != name}
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    for target in list(targets):
        parts = target.split(".")
        targets.update(p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p not in ancestors)
    return targets - {name}


GRAPH = {name: _targets(name, path) for name, path in MODULES.items()}


def _reach(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in GRAPH[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (module -> the modules it imports) as a path back to its start, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*stack[stack.index(target):], target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_every_kind_of_import():
    assert "dpsnet.training" in GRAPH["dpsnet.cli"]  # `from .training import train` inside a command
    assert "dpsnet.training.detector" in _reach("dpsnet.cli") and "dpsnet.model" in GRAPH["dpsnet"]
    assert {"dpsnet.checkpoint", "dpsnet.inference.rescore"} <= GRAPH["dpsnet.inference.prediction"]
    assert "dpsnet.inference" in GRAPH["dpsnet.training.detector"]  # the package a submodule import runs
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = _cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith(("dpsnet.inference", "dpsnet.deploy"))))
def test_inference_never_imports_training(name):
    reached = _reach(name)
    assert not {n for n in reached if n.startswith(("dpsnet.training", "dpsnet.kd", "dpsnet.cli"))}, sorted(reached)


@pytest.mark.parametrize("name", sorted(MODEL_LAYER))
def test_the_model_layer_imports_only_the_model_layer(name):
    assert _reach(name) - {"dpsnet"} <= MODEL_LAYER


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_are_short_with_a_docstring_and_short_functions(name):
    text = MODULES[name].read_text(encoding="utf-8")
    tree = ast.parse(text)
    assert len(text.splitlines()) <= 400, f"{name}: {len(text.splitlines())} lines"
    assert name == "dpsnet.__main__" or ast.get_docstring(tree), f"{name}: no docstring saying its job"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80]
    assert not long, f"{name}: functions over 80 lines: {long}"
