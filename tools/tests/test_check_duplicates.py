"""tools/check_duplicates.py: the detector on small planted trees, then on this repository."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "check_duplicates.py"
REPO = TOOL.parent.parent


def _load():
    spec = importlib.util.spec_from_file_location("check_duplicates", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


cd = _load()


def block(n: int, tag: str = "a", indent: str = "    ") -> str:
    """``n`` distinct statements (no line repeats another)."""
    return "".join(f"{indent}{tag}_{k} = combine({tag}_{k - 1}, {k}) * weight_{k}\n" for k in range(1, n + 1))


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def run(root: Path, min_lines: int = 6) -> tuple[int, list]:
    findings, _, _ = cd.check(root, min_lines)
    return len(findings), findings


def test_planted_six_line_copy_is_found_with_its_line_ranges(tmp_path):
    write(tmp_path, "packages/p/src/p/one.py", "def f():\n" + block(6, "x") + "    return x_6\n")
    write(tmp_path, "examples/two.py", "import os\n\n\ndef g(y):\n    y = 1\n" + block(6, "x") + "    return y\n")
    n, findings = run(tmp_path)
    assert n == 1
    (f,) = findings
    assert (str(f.a), str(f.b), f.lines) == ("examples/two.py:6-11", "packages/p/src/p/one.py:2-7", 6)


def test_five_line_copy_is_not_reported_unless_min_lines_allows(tmp_path):
    write(tmp_path, "kernels/src/k/one.py", "def f():\n" + block(5, "x") + "    return 1\n")
    write(tmp_path, "kernels/src/k/two.py", "def g():\n" + block(5, "x") + "    return 2\n")
    assert run(tmp_path)[0] == 0
    assert run(tmp_path, 5)[0] == 1


def test_comments_blank_lines_docstrings_and_white_space_do_not_hide_a_copy(tmp_path):
    lines = block(7, "x", indent="        ").splitlines(keepends=True)
    noisy = (lines[0] + "\n        # a comment in the copy\n" + lines[1].rstrip() + "  # trailing note\n\n"
             + lines[2].replace(" = ", "   =   ") + "".join(lines[3:]))
    write(tmp_path, "examples/one.py", "def f():\n" + block(7, "x"))
    write(tmp_path, "examples/two.py", 'class C:\n    def g(self):\n        """A docstring."""\n' + noisy)
    n, findings = run(tmp_path)
    assert n == 1 and findings[0].lines == 7
    assert (str(findings[0].a), str(findings[0].b)) == ("examples/one.py:2-8", "examples/two.py:4-13")
    # A '#' inside a string is not a comment: these lines differ.
    write(tmp_path, "examples/two.py", "def g():\n" + block(7, "x").replace("weight_4", "weight_4, '#'"))
    assert run(tmp_path)[0] == 0


def test_overlapping_windows_merge_into_one_report_per_pair(tmp_path):
    write(tmp_path, "examples/one.py", "def f():\n" + block(15, "x") + "    return 0\n")
    write(tmp_path, "examples/two.py", "def g():\n    q = 2\n" + block(15, "x") + "    return 1\n")
    n, findings = run(tmp_path)
    assert n == 1 and findings[0].lines == 15
    assert (str(findings[0].a), str(findings[0].b)) == ("examples/one.py:2-16", "examples/two.py:3-17")


def test_copy_inside_one_file_and_two_separate_runs(tmp_path):
    text = ("def f():\n" + block(6, "x") + "    return 0\n\n\ndef g():\n" + block(6, "x") + "    return 1\n"
            + "\n\ndef h():\n" + block(8, "y") + "\n\ndef i():\n" + block(8, "y"))
    write(tmp_path, "examples/one.py", text)
    n, findings = run(tmp_path)
    assert n == 2
    assert sorted(f.lines for f in findings) == [6, 8]
    assert all(f.a.path == f.b.path == "examples/one.py" for f in findings)


def test_triton_jit_bodies_imports_and_lone_punctuation_are_ignored(tmp_path):
    kernel = ("@triton.jit\ndef {name}(x_ptr, BLOCK: tl.constexpr):\n" + block(10, "v") + "\n\n"
              "@triton.autotune(configs=[], key=[])\n@triton.jit(do_not_specialize=[])\ndef {name}_2(x):\n"
              + block(10, "w") + "\n\n@jit\ndef {name}_3(x):\n" + block(10, "u"))
    header = "import triton\nimport triton.language as tl\nfrom triton import jit\n\n"
    write(tmp_path, "kernels/src/k/one.py", header + kernel.format(name="k1"))
    write(tmp_path, "kernels/src/k/two.py", header + kernel.format(name="k2"))
    imports = ("from a import (\n    b,\n    c,\n)\nimport d\nimport e\nimport f\nfrom g import h\nfrom i import j\n"
               "x = call(\n    1,\n)\n]\n}\n):\n")
    write(tmp_path, "examples/one.py", imports)
    write(tmp_path, "examples/two.py", imports)
    assert run(tmp_path)[0] == 0
    # The same functions without their decorators are reported, one run each.
    for name in ("one", "two"):
        write(tmp_path, f"kernels/src/k/{name}.py", kernel.format(name=name).replace("@triton.autotune(configs=[], "
              "key=[])\n", "").replace("@triton.jit(do_not_specialize=[])\n", "").replace("@triton.jit\n", "")
              .replace("@jit\n", ""))
    assert run(tmp_path)[0] == 3


def test_tests_benchmarks_build_and_other_roots_are_not_read(tmp_path):
    for rel in ("packages/p/tests/test_a.py", "packages/p/src/p/test_b.py", "packages/p/benchmarks/c.py",
                "packages/p/build/lib/p/d.py", "packages/p/scripts/e.py", "examples/conftest.py", "docs/f.py"):
        write(tmp_path, rel, "def f():\n" + block(8, "x"))
    write(tmp_path, "packages/p/src/p/real.py", "def f():\n" + block(8, "x"))
    assert [p.relative_to(tmp_path).as_posix() for p in cd.source_files(tmp_path)] == ["packages/p/src/p/real.py"]
    assert run(tmp_path)[0] == 0


def test_allowlist_exit_codes_and_report(tmp_path, capsys):
    write(tmp_path, "examples/one.py", "def f():\n" + block(6, "x"))
    write(tmp_path, "examples/two.py", "def g():\n" + block(6, "x"))
    assert cd.main(["--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "examples/one.py:2-7 ~ examples/two.py:2-7  (6 lines)" in out
    allow = tmp_path / "tools" / "duplicates_allow.txt"
    allow.parent.mkdir()
    allow.write_text("# comment\n\nexamples/two.py:1-7 ~ examples/one.py:2-9  # deliberate, for the test\n")
    assert cd.main(["--root", str(tmp_path)]) == 0
    assert "no duplicates" in capsys.readouterr().out
    allow.write_text("examples/two.py:1-7 ~ examples/one.py:2-9\n")  # no reason
    assert cd.main(["--root", str(tmp_path)]) == 2
    allow.write_text("examples/two.py:3-7 ~ examples/one.py:2-9  # too narrow\n")
    assert cd.main(["--root", str(tmp_path)]) == 1
    assert "note: allowlist entry matches nothing" in capsys.readouterr().out


def test_repository_has_no_duplicated_code():
    """Runs in CI (`make test`): the repository's own sources, as `make lint` checks them."""
    proc = subprocess.run([sys.executable, str(TOOL)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode != 2, proc.stderr
    if proc.returncode:
        pytest.fail("duplicated code in the repository (tools/check_duplicates.py); factor it out or allowlist it "
                    "with a reason in tools/duplicates_allow.txt:\n" + proc.stdout, pytrace=False)
