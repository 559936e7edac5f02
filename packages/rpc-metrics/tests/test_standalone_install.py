"""`pip install ./packages/rpc-metrics` into an empty virtual environment gives a working command."""

import subprocess
import sys
import venv
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_installs_alone_and_evaluates(tmp_path, data_dir):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / ("Scripts" if sys.platform == "win32" else "bin")
    install = subprocess.run([bin_dir / "python", "-m", "pip", "install", "--quiet", str(PACKAGE)],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    installed = subprocess.run([bin_dir / "python", "-m", "pip", "list", "--format=freeze"],
                               capture_output=True, text=True, check=True).stdout.lower()
    assert "rpc-metrics==" in installed
    assert not any(name in installed for name in ("torch==", "pandas==", "opencv"))
    result = subprocess.run([bin_dir / "rpc-metrics", "evaluate", data_dir / "results.json", data_dir / "gt.json",
                             "--search", "grid"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| averaged | default | 66.60% | 95.40% | 0.56 | 0.05 | 95.65% | 77.43% |" in result.stdout
    bad = subprocess.run([bin_dir / "rpc-metrics", "validate", tmp_path / "missing.json"], capture_output=True, text=True)
    assert bad.returncode == 2 and "file not found" in bad.stderr
