"""The documentation's promises: sizes a reader can take in, a stage table whose paths exist, and no run-history
names outside docs/RESULTS.md."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_NAMES = re.compile(r"runs/(demo|recipe|e[0-9]|g[A-Z0-9])|demo[0-9]|recipe[0-9]")
SIZE_LIMITS = {"README.md": 8 * 1024, "docs/RESULTS.md": 20 * 1024}
PACKAGE_READMES = ["packages/rpc-metrics", "packages/rpc-synth", "packages/dpsnet", "packages/kd-loop", "kernels"]


def _stage_rows(text: str) -> list[list[str]]:
    """The rows of the README's table that starts with ``| stage | module | command |``, as lists of cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.replace(" ", "").startswith("|stage|module|command|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


@pytest.mark.parametrize("path,limit", [*SIZE_LIMITS.items(), *((f"{p}/README.md", 12 * 1024) for p in PACKAGE_READMES)])
def test_documents_stay_short(path, limit):
    size = len((ROOT / path).read_bytes())
    assert size <= limit, f"{path}: {size} bytes, over {limit}: move history to docs/RESULTS.md or git"


def test_every_module_of_the_stage_table_exists():
    rows = _stage_rows((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(rows) >= 10, "the README's stage table lost rows"
    for stage, module, _command in rows:
        paths = re.findall(r"`([^`]+)`", module)
        assert paths, f"README stage {stage!r}: no module path"
        for path in paths:
            assert (ROOT / path).exists(), f"README stage {stage!r}: {path} does not exist"


def test_stage_table_parser_reads_a_table():
    text = "x\n| stage | module | command |\n| --- | --- | --- |\n| a | `b.py` | `c` |\n\nafter\n"
    assert _stage_rows(text) == [["a", "`b.py`", "`c`"]]


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_run_names_only_in_results():
    offenders = []
    for path in _tracked_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel == "docs/RESULTS.md" or rel == "examples/test_docs.py" or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images and other binaries
        offenders += [f"{rel}:{n}" for n, line in enumerate(text.splitlines(), 1) if RUN_NAMES.search(line)]
    assert not offenders, "run-history names outside docs/RESULTS.md: " + ", ".join(offenders[:20])


@pytest.mark.parametrize("path", sorted(p.name for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("test_")))
def test_example_modules_are_short_and_say_their_job(path):
    import ast

    source = (ROOT / "examples" / path).read_text(encoding="utf-8")
    tree = ast.parse(source)
    assert ast.get_docstring(tree), f"examples/{path}: no module docstring naming its job"
    assert len(source.splitlines()) <= 400, f"examples/{path}: over 400 lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]
    assert not long, f"examples/{path}: functions over 80 lines: {', '.join(long)}"
