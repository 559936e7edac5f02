"""A package's import graph read from its source (no import is run): every module, what each imports (top-level and
inside functions, relative imports resolved), cycles, third-party imports, and the declared dependencies of its
pyproject.toml. `tools/tests/test_package_layout.py` checks every member package with it."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

# Distribution names whose import name differs.
IMPORT_NAMES = {"opencv-python": "cv2", "opencv-python-headless": "cv2"}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
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


def is_kernel(node: ast.AST) -> bool:
    """A ``@triton.jit`` function (a kernel body, unrolled by hand)."""
    return any("triton" in ast.unparse(d) for d in getattr(node, "decorator_list", []))


class PackageLayout:
    """The modules of the import package ``name`` under ``package_dir/src/name`` and their import graph."""

    def __init__(self, package_dir: Path, name: str):
        self.package_dir, self.name = package_dir, name
        src = package_dir / "src" / name
        self.modules: dict[str, Path] = {}
        for path in sorted(src.rglob("*.py")):
            parts = [name, *path.relative_to(src).with_suffix("").parts]
            self.modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
        self.trees = {m: ast.parse(p.read_text(encoding="utf-8")) for m, p in self.modules.items()}
        self.graph = {m: self._targets(m) for m in self.modules}

    def imported(self, module: str, nodes=None) -> set[str]:
        """Every module name ``module`` imports in ``nodes`` (default: anywhere in its file). ``from package import
        submodule`` does not count ``package`` when it is one of the importer's own packages (imported before it
        runs); any other name from a package counts it."""
        package = module if self.modules[module].name == "__init__.py" else module.rpartition(".")[0]
        ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        found = set()
        for node in ast.walk(self.trees[module]) if nodes is None else nodes:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                submodules = {f"{base}.{alias.name}" for alias in node.names}
                found.update(submodules)
                if base not in ancestors or not submodules <= set(self.modules):
                    found.add(base)
        return found

    def module_level_imports(self, module: str) -> set[str]:
        """What ``module`` imports when it is imported (its top-level statements)."""
        return self.imported(module, self.trees[module].body)

    def _targets(self, module: str) -> set[str]:
        """The package's modules ``module`` imports, with the packages a target brings in (its parents, unless they
        are the importer's own)."""
        targets = {t for t in self.imported(module) if t in self.modules and t != module}
        ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        for target in list(targets):
            parts = target.split(".")
            targets.update(p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p not in ancestors)
        return targets - {module}

    def reach(self, start: str) -> set[str]:
        """Every module of the package that importing ``start`` may import, directly or not."""
        seen, todo = set(), [start]
        while todo:
            for target in self.graph[todo.pop()]:
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return seen

    def declared(self) -> set[str]:
        """Import names of the dependencies (and optional extras, but ``test``) in the package's pyproject.toml."""
        text = (self.package_dir / "pyproject.toml").read_text(encoding="utf-8")
        project = tomllib.loads(text)["project"]
        extras = [d for extra, deps in project.get("optional-dependencies", {}).items() if extra != "test"
                  for d in deps]
        names = {re.match(r"[A-Za-z0-9_.-]+", d).group().lower() for d in [*project["dependencies"], *extras]}
        return {IMPORT_NAMES.get(n, n.replace("-", "_")) for n in names}

    def third_party(self, module: str) -> set[str]:
        tops = {m.split(".")[0] for m in self.imported(module) if m}
        return {t for t in tops if t not in sys.stdlib_module_names and t != self.name}

    def length_problems(self, module: str, max_module: int = 400, max_function: int = 80) -> list[str]:
        """What makes ``module`` hard to read: over ``max_module`` lines (Triton kernel files excepted), no
        docstring naming its job, functions over ``max_function`` lines (kernel bodies excepted)."""
        tree = self.trees[module]
        lines = len(self.modules[module].read_text(encoding="utf-8").splitlines())
        problems = []
        if lines > max_module and not any(is_kernel(node) for node in ast.walk(tree)):
            problems.append(f"{lines} lines")
        if not module.endswith("__main__") and not ast.get_docstring(tree):
            problems.append("no docstring saying its job")
        problems += [f"{node.name} is {node.end_lineno - node.lineno + 1} lines" for node in ast.walk(tree)
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not is_kernel(node)
                     and node.end_lineno - node.lineno + 1 > max_function]
        return problems
