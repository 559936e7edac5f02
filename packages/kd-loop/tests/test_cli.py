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


def _snapshot(folder):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_resume_with_other_settings_is_refused_and_more_rounds_extend(toy_world, tmp_path):
    """The run's settings are recorded in WORKDIR/settings.json; a resume with another seed, selection or input
    is refused (exit 2, naming each key, old and new value) and changes nothing; a larger --rounds extends it."""
    runner, workdir = CliRunner(), tmp_path / "w"
    run = ["run", str(toy_world), "--workdir", str(workdir)]
    first = runner.invoke(cli.main, [*run, "--rounds", "1"])
    assert first.exit_code == 0, first.output
    assert (workdir / "settings.json").is_file()
    before = _snapshot(workdir)
    other = runner.invoke(cli.main, [*run, "--rounds", "1", "seed=1", 'selection.policy="instance"'])
    assert other.exit_code == 2
    assert other.output.strip() == (
        f"error: {workdir} holds a run made with other settings (seed 0 -> 1; selection.policy \"image+instance\" "
        "-> \"instance\"); resume it with its settings, or choose a new --workdir")
    assert _snapshot(workdir) == before
    pool = toy_world.parent / "pool_gt.json"
    pool.write_bytes(pool.read_bytes() + b"\n")  # the same path, another content
    changed = runner.invoke(cli.main, [*run, "--rounds", "1"])
    assert changed.exit_code == 2 and f"pool.instances {pool} changed since the run" in changed.output
    assert len(changed.output.strip().splitlines()) == 1 and _snapshot(workdir) == before
    pool.write_bytes(pool.read_bytes()[:-1])
    longer = runner.invoke(cli.main, [*run, "--rounds", "2"])
    assert longer.exit_code == 0, longer.output
    assert "[round 1] fit student: done earlier" in longer.output and (workdir / "round_002" / "fit.json").is_file()
