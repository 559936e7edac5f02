"""`make demo QUICK=1` path: the example runs end to end and writes its report."""

import importlib.util
from pathlib import Path

from click.testing import CliRunner


def load_example():
    spec = importlib.util.spec_from_file_location("aco_pipeline", Path(__file__).with_name("aco_pipeline.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_demo_writes_the_report(tmp_path):
    result = CliRunner().invoke(load_example().main, ["--quick", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "protocol: transfer" in report and "protocol: oracle" in report
    assert report.count("| averaged | simulated |") == 2
