"""Packaging of every member package: metadata, LICENSE, sibling bounds, `--version`, and installs.

Fast checks read each member's pyproject.toml and README; the `slow` ones install each member the way its
README says (non-editable, with the siblings the README names) into an empty virtual environment.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import shlex
import subprocess
import sys
import time
import tomllib
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
ROOT_CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
TESTED_PYTHON = "3.11"


@dataclass(frozen=True)
class Member:
    path: str  # relative to the repository root, as in [tool.aco] members
    project: dict
    setuptools: dict

    @property
    def name(self) -> str:
        return canonicalize_name(self.project["name"])

    @property
    def version(self) -> str:
        return self.project["version"]

    @property
    def folder(self) -> Path:
        return REPO / self.path

    def requirements(self, extras: bool = True) -> list[Requirement]:
        texts = list(self.project.get("dependencies", []))
        if extras:
            for group in self.project.get("optional-dependencies", {}).values():
                texts += group
        return [Requirement(text) for text in texts]

    def import_names(self) -> list[str]:
        """The top-level import packages, found under the setuptools `where` folders."""
        names = []
        for where in self.setuptools.get("packages", {}).get("find", {}).get("where", ["."]):
            base = self.folder / where
            names += sorted(p.parent.name for p in base.glob("*/__init__.py"))
        return names


def _load_members() -> dict[str, Member]:
    members = {}
    for path in ROOT_CONFIG["tool"]["aco"]["members"]:
        file = REPO / path / "pyproject.toml"
        if file.exists():
            config = tomllib.loads(file.read_text(encoding="utf-8"))
            member = Member(path, config["project"], config.get("tool", {}).get("setuptools", {}))
            members[member.name] = member
    return members


MEMBERS = _load_members()
NAMES = sorted(MEMBERS)
CLIS = sorted((script, target) for m in MEMBERS.values() for script, target in m.project.get("scripts", {}).items())


def _siblings(member: Member, extras: bool = False) -> list[Requirement]:
    return [r for r in member.requirements(extras) if canonicalize_name(r.name) in MEMBERS]


def _needed_siblings(member: Member) -> set[str]:
    """Every sibling a plain install of `member` needs, directly or through another sibling."""
    needed, todo = set(), [member]
    while todo:
        for req in _siblings(todo.pop()):
            name = canonicalize_name(req.name)
            if name not in needed:
                needed.add(name)
                todo.append(MEMBERS[name])
    return needed


def _readme_install_paths(member: Member) -> list[str]:
    """The local paths of the README's first `pip install` line that installs `member` (`-e` dropped)."""
    readme = (member.folder / "README.md").read_text(encoding="utf-8")
    for line in readme.splitlines():
        if not line.strip().startswith("pip install"):
            continue
        args = shlex.split(line, comments=True)[2:]
        paths = [a for a in args if a.startswith("./")]
        if any(re.sub(r"\[.*\]$", "", p).rstrip("/") == f"./{member.path}" for p in paths):
            return paths
    raise AssertionError(f"{member.path}/README.md has no `pip install` line for ./{member.path}")


def test_every_member_is_found():
    assert NAMES and len(MEMBERS) == len(ROOT_CONFIG["tool"]["aco"]["members"])


@pytest.mark.parametrize("name", NAMES)
def test_requires_python_is_the_tested_one(name):
    member = MEMBERS[name]
    spec = SpecifierSet(member.project["requires-python"])
    assert TESTED_PYTHON in spec and "3.10" not in spec, member.project["requires-python"]
    versions = [c.rsplit(" :: ", 1)[1] for c in member.project.get("classifiers", [])
                if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    assert TESTED_PYTHON in versions
    assert all(v in spec for v in versions), versions


@pytest.mark.parametrize("name", NAMES)
def test_opencv_is_headless(name):
    names = {canonicalize_name(r.name) for r in MEMBERS[name].requirements()}
    assert not names & {"opencv-python", "opencv-contrib-python"}, "use opencv-python-headless: nothing shows windows"


def test_no_code_opens_an_opencv_window():
    gui = re.compile(r"\bcv2\.(imshow|namedWindow|waitKey|destroyAllWindows|destroyWindow|selectROI|createTrackbar|"
                     r"setMouseCallback|moveWindow|resizeWindow|startWindowThread)\b")
    files = [f for m in MEMBERS.values() for f in m.folder.rglob("*.py") if "build" not in f.parts]
    files += list((REPO / "examples").rglob("*.py"))
    offenders = [str(f.relative_to(REPO)) for f in files if gui.search(f.read_text(encoding="utf-8"))]
    assert not offenders, f"opencv-python-headless has no GUI functions: {offenders}"


@pytest.mark.parametrize("name", NAMES)
def test_license_file_is_declared_and_shipped(name):
    member = MEMBERS[name]
    assert member.project.get("license") == "Apache-2.0"  # an SPDX expression (PEP 639)
    assert "LICENSE" in member.project.get("license-files", [])
    text = (member.folder / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text


@pytest.mark.parametrize("name", NAMES)
def test_classifiers(name):
    classifiers = MEMBERS[name].project.get("classifiers", [])
    assert "Programming Language :: Python :: 3 :: Only" in classifiers
    assert any(c.startswith("Operating System :: ") for c in classifiers)
    assert any(c.startswith("Topic :: ") for c in classifiers)
    # With an SPDX `license` expression, setuptools (>= 77) refuses License :: classifiers.
    assert not [c for c in classifiers if c.startswith("License :: ")]


@pytest.mark.parametrize("name", NAMES)
def test_sibling_bounds_match_the_siblings(name):
    for req in _siblings(MEMBERS[name], extras=True):
        sibling = MEMBERS[canonicalize_name(req.name)]
        assert Version(sibling.version) in req.specifier, f"{req} refuses {sibling.name} {sibling.version}"
        uppers = [s for s in req.specifier if s.operator in ("<", "<=", "~=", "==")]
        assert uppers, f"{req}: give the sibling an upper bound (its next breaking release)"


@pytest.mark.parametrize("name", NAMES)
def test_dunder_version_matches_pyproject(name):
    member = MEMBERS[name]
    for module in member.import_names():
        init = member.folder / "src" / module / "__init__.py"
        found = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', init.read_text(encoding="utf-8"), re.M)
        if found:
            assert found.group(1) == member.version, f"{init.relative_to(REPO)}"


def test_triton_is_optional_in_aco_kernels():
    kernels = MEMBERS["aco-kernels"]
    assert "triton" not in {canonicalize_name(r.name) for r in kernels.requirements(extras=False)}
    assert any(canonicalize_name(Requirement(r).name) == "triton"
               for r in kernels.project["optional-dependencies"]["triton"])
    dev = (REPO / "requirements-dev.txt").read_text(encoding="utf-8").splitlines()
    dev_names = {canonicalize_name(Requirement(line).name) for line in dev if line.strip() and not line.startswith("#")}
    assert "triton" in dev_names, "development and CI keep triton for the kernel tests"


def test_aco_kernels_imports_and_runs_without_triton():
    code = (
        "import sys\n"
        "sys.modules['triton'] = None  # `import triton` now fails, as where it is not installed\n"
        "import torch, aco_kernels\n"
        "assert not aco_kernels.triton_available()\n"
        "out = aco_kernels.pyramid_fuse([torch.ones(1, 2, 4, 4), torch.ones(1, 2, 2, 2)], (4, 4))\n"
        "assert out.shape[-2:] == (4, 4), out.shape\n"
        "try:\n"
        "    with aco_kernels.dispatch_mode('triton'):\n"
        "        aco_kernels.use_kernel(torch.zeros(1))\n"
        "except RuntimeError as error:\n"
        "    assert 'triton does not import' in str(error)\n"
        "else:\n"
        "    raise AssertionError('forcing the kernel path without triton should fail clearly')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("name", NAMES)
def test_readme_install_line_names_the_needed_siblings(name):
    member = MEMBERS[name]
    paths = {re.sub(r"\[.*\]$", "", p).rstrip("/") for p in _readme_install_paths(member)}
    missing = [s for s in sorted(_needed_siblings(member)) if f"./{MEMBERS[s].path}" not in paths]
    assert not missing, f"pip cannot find a sibling by name: add ./{MEMBERS[missing[0]].path} to the install line"


def _cli_main(target: str):
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


@pytest.mark.parametrize(("script", "target"), CLIS)
def test_cli_version(script, target):
    result = CliRunner().invoke(_cli_main(target), ["--version"])
    assert result.exit_code == 0, result.output
    dist = next(m for m in MEMBERS.values() if script in m.project.get("scripts", {}))
    assert result.output == f"{script}, version {importlib.metadata.version(dist.name)}\n"
    assert importlib.metadata.version(dist.name) == dist.version


def test_cli_version_when_not_installed(monkeypatch):
    from rpc_metrics.version import installed_version

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert installed_version("rpc-metrics") == "unknown"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_readme_install_in_an_empty_venv(name, tmp_path):
    """The README's install line, non-editable, in a fresh venv: the package imports and its CLI answers."""
    member = MEMBERS[name]
    env = tmp_path / "venv"
    venv.create(env, with_pip=False)  # this interpreter's pip installs into it (`pip --python`): no ensurepip
    python = env / "bin" / "python"
    started = time.perf_counter()
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-compile",
         "--disable-pip-version-check", *_readme_install_paths(member)],
        cwd=REPO, capture_output=True, text=True, timeout=1200,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    print(f"{name}: pip install took {time.perf_counter() - started:.0f} s")
    listed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "list", "--format=freeze"],
                            capture_output=True, text=True, check=True).stdout.lower()
    assert f"{name}=={member.version}" in listed
    assert "opencv-python==" not in listed  # only the headless build

    for module in member.import_names():
        imported = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
        assert imported.returncode == 0, imported.stderr[-3000:]
    for script in member.project.get("scripts", {}):
        answer = subprocess.run([env / "bin" / script, "--version"], capture_output=True, text=True, timeout=300)
        assert answer.returncode == 0, answer.stderr[-3000:]
        assert answer.stdout == f"{script}, version {member.version}\n"

    if name == "aco-kernels" and "triton==" in listed:  # triton optional: remove it, the package still works
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "uninstall", "--quiet", "-y", "triton"],
                       capture_output=True, text=True, check=True)
        code = ("import torch, aco_kernels\nassert not aco_kernels.triton_available()\n"
                "print(aco_kernels.pyramid_fuse([torch.ones(1, 1, 2, 2)], (2, 2)).shape)")
        fallback = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
        assert fallback.returncode == 0, fallback.stderr[-3000:]
