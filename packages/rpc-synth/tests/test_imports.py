"""rpc-synth's layout: no import cycles (top-level and function-level imports alike), imports of its declared
dependencies only (torch only from the ``render`` extra, and only in the translator's modules: the rest imports
without it), and every module and function short enough to read (400 and 80 lines)."""

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1]
SRC = PACKAGE_DIR / "src" / "rpc_synth"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = ["rpc_synth", *path.relative_to(SRC).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def _imported(name: str, nodes=None) -> set[str]:
    """Every module name ``name`` imports in ``nodes`` (default: anywhere in its file, functions included), relative
    imports resolved. ``from package import submodule`` does not count ``package`` when it is one of the importer's
    own packages (already imported before the importer runs); any other name from a package counts it."""
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    found = set()
    for node in ast.walk(TREES[name]) if nodes is None else nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            submodules = {f"{base}.{alias.name}" for alias in node.names}
            found.update(submodules)
            if base not in ancestors or not submodules <= set(MODULES):
                found.add(base)
    return found


def _targets(name: str) -> set[str]:
    """The package's modules ``name`` imports, with the packages a target brings in (its parents, unless they are
    the importer's own)."""
    targets = {t for t in _imported(name) if t in MODULES and t != name}
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    for target in list(targets):
        parts = target.split(".")
        targets.update(p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p not in ancestors)
    return targets - {name}


GRAPH = {name: _targets(name) for name in MODULES}


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


def _declared() -> set[str]:
    """Import names of the dependencies (and optional extras, but ``test``) of this package's pyproject.toml."""
    project = tomllib.loads((PACKAGE_DIR / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = [d for name, deps in project.get("optional-dependencies", {}).items() if name != "test" for d in deps]
    names = {re.match(r"[A-Za-z0-9_.-]+", d).group().lower() for d in [*project["dependencies"], *extras]}
    return {{"opencv-python": "cv2", "opencv-python-headless": "cv2"}.get(n, n.replace("-", "_")) for n in names}


def _third_party(name: str) -> set[str]:
    tops = {m.split(".")[0] for m in _imported(name) if m}
    return {t for t in tops if t not in sys.stdlib_module_names and t != "rpc_synth"}


def _is_kernel(node: ast.AST) -> bool:
    """A ``@triton.jit`` function (a kernel body: unrolled by hand, exempt from the function length)."""
    return any("triton" in ast.unparse(d) for d in getattr(node, "decorator_list", []))


def test_the_checks_see_every_kind_of_import():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    assert all(GRAPH[name] <= set(MODULES) for name in MODULES) and "rpc_synth" in MODULES


def test_no_import_cycles():
    cycle = _cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_only_declared_dependencies(name):
    undeclared = _third_party(name) - _declared()
    assert not undeclared, f"{name} imports {sorted(undeclared)}, not among the dependencies in pyproject.toml"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_are_short_with_a_docstring_and_short_functions(name):
    tree, lines = TREES[name], len(MODULES[name].read_text(encoding="utf-8").splitlines())
    kernels = any(_is_kernel(node) for node in ast.walk(tree))
    assert lines <= MAX_MODULE_LINES or kernels, f"{name}: {lines} lines (Triton kernel files excepted)"
    assert name.endswith("__main__") or ast.get_docstring(tree), f"{name}: no docstring saying its job"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_kernel(node)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def _module_level_imports(name: str) -> set[str]:
    """What ``name`` imports when it is imported (its top-level statements)."""
    return _imported(name, TREES[name].body)

# The translator's modules (the ``render`` extra): the only ones that import torch when they are imported.
TORCH_MODULES = {"rpc_synth.render.networks", "rpc_synth.render.losses", "rpc_synth.render.train"}


@pytest.mark.parametrize("name", sorted(set(MODULES) - TORCH_MODULES))
def test_only_the_translator_needs_torch_to_import(name):
    loaded = _module_level_imports(name)
    assert not {m for m in loaded if m.split(".")[0] == "torch"} and not loaded & TORCH_MODULES, sorted(loaded)
