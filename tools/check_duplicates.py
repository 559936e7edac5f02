#!/usr/bin/env python3
"""Report code that was written twice: runs of >= 6 identical normalized lines in two places.

Reads the Python sources of ``packages/*/src``, ``kernels/src`` and ``examples/``; tests (``tests/`` folders,
``test_*.py``, ``conftest.py``), ``benchmarks/``, ``build/`` and other generated or hidden folders are not read.

Each line is normalized before comparing, and left out when nothing is left of it:

- white space is folded (leading and trailing removed, inner runs become one space);
- comments, blank lines and docstrings are dropped (documentation prose is not code; a docstring between
  two copied blocks does not hide the copy);
- lines of lone punctuation (``)``, ``]``, ``}``, ``):``, ``],``, ``*,`` ...) and import statements (all
  their lines) are dropped: they repeat everywhere and say nothing about the logic;
- functions decorated with ``@triton.jit`` are dropped whole: Triton kernels unroll their per-level code by
  design, so their bodies repeat on purpose.

Every run of ``--min-lines`` (default 6) or more consecutive normalized lines that stands identically in two
places, in one file or in two, is reported once per pair of places, as ``a.py:10-24 ~ b.py:40-54`` (lines of
the files as they are, first to last line of the run). Known and accepted pairs go in
``tools/duplicates_allow.txt``, one a line: ``path:start-end ~ path:start-end  # reason`` (the reason is
required); a finding is allowed when each of its two ranges lies inside the entry's matching range.

Exit status: 0 when nothing is found, 1 with the report when something is, 2 for a malformed allowlist.
Standard library only (Python >= 3.11).
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import sys
import tokenize
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE_ROOTS = ("packages/*/src", "kernels/src", "examples")
SKIP_DIRS = {"tests", "benchmarks", "build", "dist", "__pycache__", ".venv", "node_modules"}
ALLOWLIST = "tools/duplicates_allow.txt"
DEFAULT_MIN_LINES = 6

_PUNCTUATION = re.compile(r"^[()\[\]{},:;.*\s]*$")
_ALLOW_ENTRY = re.compile(r"^(?P<a>\S+):(?P<a0>\d+)-(?P<a1>\d+)\s*~\s*(?P<b>\S+):(?P<b0>\d+)-(?P<b1>\d+)"
                          r"\s*#\s*(?P<reason>\S.*)$")


@dataclass(frozen=True)
class Place:
    path: str
    start: int
    end: int

    def __str__(self) -> str:
        return f"{self.path}:{self.start}-{self.end}"

    def within(self, other: Place) -> bool:
        return self.path == other.path and other.start <= self.start and self.end <= other.end


@dataclass(frozen=True)
class Finding:
    a: Place
    b: Place
    lines: int  # normalized lines shared

    def __str__(self) -> str:
        return f"{self.a} ~ {self.b}  ({self.lines} lines)"


@dataclass(frozen=True)
class Allowed:
    a: Place
    b: Place
    reason: str

    def covers(self, finding: Finding) -> bool:
        return ((finding.a.within(self.a) and finding.b.within(self.b))
                or (finding.a.within(self.b) and finding.b.within(self.a)))


def source_files(root: Path) -> list[Path]:
    """The Python files the check reads, sorted."""
    files: set[Path] = set()
    for pattern in SOURCE_ROOTS:
        for top in sorted(root.glob(pattern)):
            if not top.is_dir():
                continue
            for path in top.rglob("*.py"):
                parts = path.relative_to(root).parts
                if any(part in SKIP_DIRS or part.startswith(".") or part.endswith(".egg-info") for part in parts[:-1]):
                    continue
                if path.name.startswith("test_") or path.name == "conftest.py":
                    continue
                files.add(path)
    return sorted(files)


def _is_triton_jit(decorator: ast.expr, jit_names: set[str]) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    if isinstance(target, ast.Attribute):
        return target.attr == "jit" and isinstance(target.value, ast.Name) and target.value.id == "triton"
    return isinstance(target, ast.Name) and target.id in jit_names


def _dropped_lines(tree: ast.Module) -> set[int]:
    """Lines of import statements, docstrings and @triton.jit functions (1-based)."""
    jit_names = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module == "triton" for alias in node.names if alias.name == "jit"}
    dropped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            dropped.update(range(node.lineno, node.end_lineno + 1))
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                dropped.update(range(first.lineno, first.end_lineno + 1))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                _is_triton_jit(d, jit_names) for d in node.decorator_list):
            start = min(d.lineno for d in node.decorator_list)
            dropped.update(range(start, node.end_lineno + 1))
    return dropped


def _strip_comments(text: str, lines: list[str]) -> list[str]:
    """The lines with their comments cut off (by the tokenizer, so a ``#`` inside a string stays)."""
    out = list(lines)
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                row, col = tok.start
                out[row - 1] = out[row - 1][:col]
    except (tokenize.TokenError, SyntaxError):
        pass
    return out


def normalize(text: str) -> list[tuple[str, int]]:
    """The file's normalized lines, each with its 1-based line number, in order."""
    lines = text.splitlines()
    try:
        dropped, parsed = _dropped_lines(ast.parse(text)), True
    except SyntaxError:
        dropped, parsed = set(), False
    out = []
    for number, line in enumerate(_strip_comments(text, lines), start=1):
        if number in dropped:
            continue
        folded = " ".join(line.split())
        if not folded or _PUNCTUATION.match(folded):
            continue
        if not parsed and (folded.startswith("import ") or (folded.startswith("from ") and " import " in folded)):
            continue  # a file the parser cannot read: imports recognized by their first words
        out.append((folded, number))
    return out


def find_duplicates(sources: dict[str, str], min_lines: int = DEFAULT_MIN_LINES) -> list[Finding]:
    """Runs of ``min_lines`` or more identical normalized lines in two places of ``sources`` (path -> text)."""
    if min_lines < 1:
        raise ValueError(f"min_lines should be >= 1, got {min_lines}")
    names = sorted(sources)
    normalized = [normalize(sources[name]) for name in names]
    windows: dict[tuple[str, ...], list[tuple[int, int]]] = defaultdict(list)
    for f, lines in enumerate(normalized):
        texts = [t for t, _ in lines]
        for i in range(len(texts) - min_lines + 1):
            windows[tuple(texts[i:i + min_lines])].append((f, i))
    # Matching windows of one pair of places lie on one diagonal (same file pair, same offset): collect the
    # window starts per diagonal, then merge consecutive ones into a run.
    diagonals: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for places in windows.values():
        if len(places) < 2:
            continue
        for x in range(len(places)):
            fa, ia = places[x]
            for y in range(x + 1, len(places)):
                fb, ib = places[y]
                diagonals[(fa, fb, ib - ia)].append(ia)
    findings = []
    for (fa, fb, delta), starts in diagonals.items():
        starts.sort()
        run_start = previous = starts[0]
        for i in [*starts[1:], None]:
            if i is not None and i == previous + 1:
                previous = i
                continue
            last = previous + min_lines - 1
            a, b = normalized[fa], normalized[fb]
            findings.append(Finding(Place(names[fa], a[run_start][1], a[last][1]),
                                    Place(names[fb], b[run_start + delta][1], b[last + delta][1]),
                                    last - run_start + 1))
            if i is not None:
                run_start = previous = i
    return sorted(findings, key=lambda f: (-f.lines, f.a.path, f.a.start, f.b.path, f.b.start))


def read_allowlist(path: Path) -> list[Allowed]:
    """Entries ``path:start-end ~ path:start-end  # reason``; blank lines and ``#`` lines are skipped."""
    if not path.exists():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _ALLOW_ENTRY.match(line)
        if m is None:
            raise ValueError(f"{path}:{number}: expected 'path:start-end ~ path:start-end  # reason', got {line!r}")
        entries.append(Allowed(Place(m["a"], int(m["a0"]), int(m["a1"])), Place(m["b"], int(m["b0"]), int(m["b1"])),
                               m["reason"].strip()))
    return entries


def check(root: Path, min_lines: int = DEFAULT_MIN_LINES, allowlist: Path | None = None
          ) -> tuple[list[Finding], list[Allowed], int]:
    """``(findings not allowed, allowlist entries that matched nothing, files read)`` for the tree at ``root``."""
    files = source_files(root)
    sources = {path.relative_to(root).as_posix(): path.read_text(encoding="utf-8", errors="replace")
               for path in files}
    allowed = read_allowlist(root / ALLOWLIST if allowlist is None else allowlist)
    findings, used = [], set()
    for finding in find_duplicates(sources, min_lines):
        covering = [k for k, entry in enumerate(allowed) if entry.covers(finding)]
        used.update(covering)
        if not covering:
            findings.append(finding)
    return findings, [entry for k, entry in enumerate(allowed) if k not in used], len(files)


def report(findings: Sequence[Finding], stale: Iterable[Allowed], n_files: int, min_lines: int) -> str:
    lines = []
    if findings:
        lines.append(f"{len(findings)} duplicated runs of {min_lines} or more normalized lines ({n_files} files read):")
        lines.extend(f"  {finding}" for finding in findings)
        lines.append("Factor the shared logic out, or, where the repetition is deliberate, add the pair to "
                     f"{ALLOWLIST} with its reason.")
    else:
        lines.append(f"no duplicates ({n_files} files read, runs of {min_lines} or more normalized lines)")
    for entry in stale:
        lines.append(f"note: allowlist entry matches nothing (stale line numbers?): {entry.a} ~ {entry.b}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-lines", type=int, default=DEFAULT_MIN_LINES,
                        help=f"shortest reported run of normalized lines (default {DEFAULT_MIN_LINES})")
    parser.add_argument("--root", type=Path, default=REPO, help="repository root (default: this checkout)")
    parser.add_argument("--allowlist", type=Path, default=None, help=f"default: ROOT/{ALLOWLIST}")
    args = parser.parse_args(argv)
    if args.min_lines < 1:
        parser.error("--min-lines should be >= 1")
    try:
        findings, stale, n_files = check(args.root.resolve(), args.min_lines, args.allowlist)
    except ValueError as err:
        print(f"check_duplicates: {err}", file=sys.stderr)
        return 2
    print(report(findings, stale, n_files, args.min_lines))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
