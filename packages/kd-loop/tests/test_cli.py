import os
import subprocess
import sys

from click.testing import CliRunner

import kd_loop.cli as cli


def test_run_then_status(toy_world, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli.main, ["run", str(toy_world), "--rounds", "1", "--workdir", str(tmp_path / "w"),
                                      "selection.min_boxes=2"])
    assert result.exit_code == 0, result.output
    assert "[round 1] select:" in result.output and "| round | selected images |" in result.output
    status = runner.invoke(cli.main, ["status", str(tmp_path / "w")])
    assert status.exit_code == 0 and "| 1 |" in status.output and "| 0 |" in status.output


def test_errors_exit_2(toy_world, tmp_path):
    runner = CliRunner()
    bad_key = runner.invoke(cli.main, ["run", str(toy_world), "mix.nope=3"])
    assert bad_key.exit_code == 2 and "valid keys:" in bad_key.output and "mix.source_ratio" in bad_key.output
    missing = runner.invoke(cli.main, ["run", str(tmp_path / "absent.toml")])
    assert missing.exit_code == 2 and "config file not found" in missing.output
    learner = runner.invoke(cli.main, ["run", str(toy_world), 'learner.path="no.such:Learner"'])
    assert learner.exit_code == 2 and "unknown learner path" in learner.output
    empty = tmp_path / "empty"
    empty.mkdir()
    status = runner.invoke(cli.main, ["status", str(empty)])
    assert status.exit_code == 2 and "no round_" in status.output


def test_every_key_is_listed():
    runner = CliRunner()
    for args in (["keys"], ["run", "--help-config"]):
        result = runner.invoke(cli.main, args)
        assert result.exit_code == 0, result.output
        for key in ("selection.count_scale = 'auto'", "selection.min_share = 0.1", "selection.fallback = 'closest'",
                    "calibration.instances = ''", "calibration.images", "test.instances = ''", "test.images"):
            assert key in result.output


def test_console_script_is_installed():
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "kd-loop"), "keys"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "selection.thresholds" in result.stdout
