"""`rpc-synth render train|apply|measure`: happy paths, errors (exit 2), and rpc_synth without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from rpc_synth.cli import main

TINY_ARGS = ("--size", 32, "--iters", 2, "--gen-channels", 4, "--gen-blocks", 1, "--disc-channels", 4, "--quiet")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _train_args(tiny_world, tiny_generate, out):
    return ("render", "train", "--source", tiny_generate / "synth2019", "--source-ann",
            tiny_generate / "instances_synth2019.json", "--target", tiny_world / "val2019", "--out", out)


def test_render_cli_train_apply_measure(tiny_world, tiny_generate, tmp_path, helpers):
    pytest.importorskip("torch")
    ann = tiny_generate / "instances_synth2019.json"
    result = run(*_train_args(tiny_world, tiny_generate, tmp_path / "m.pt"), *TINY_ARGS)
    assert result.exit_code == 0 and "iteration 2" in result.output, result.output
    result = run("render", "apply", "--model", tmp_path / "m.pt", "--images", tiny_generate / "synth2019",
                 "--ann", ann, "--out", tmp_path / "cg", "--quiet")
    assert result.exit_code == 0, result.output
    result = run("render", "apply", "--model", tmp_path / "m.pt", "--images", tiny_generate / "synth2019",
                 "--ann", ann, "--out", tmp_path / "cg32", "--no-amp", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cg32/instances_render2019.json").read_text())["render"]["precision"] == "float32"
    for bad in ("tpu", "cuda:99"):  # a device that is not one, or not here: exit 2, nothing written
        for args in (("render", "apply", "--model", tmp_path / "m.pt", "--images", tiny_generate / "synth2019",
                      "--ann", ann, "--out", tmp_path / "bad"), _train_args(tiny_world, tiny_generate, tmp_path / "b.pt")):
            result = run(*args, "--device", bad, "--quiet")
            assert result.exit_code == 2 and "--device" in result.output, result.output
    assert not (tmp_path / "bad").exists() and not (tmp_path / "b.pt").exists()
    result = run("render", "apply", "--method", "histogram", "--target", tiny_world / "val2019", "--images",
                 tiny_generate / "synth2019", "--ann", ann, "--out", tmp_path / "hist", "--quiet")
    assert result.exit_code == 0, result.output
    result = run("render", "measure", "--images", tiny_generate / "synth2019", "--ann", ann, "--target",
                 tiny_world / "test2019", "--rendered", tmp_path / "cg/render2019")
    report = json.loads(result.output)
    assert report["products"] == len(helpers.load(ann)["annotations"])
    assert report["domain_gap_before"] > 0 and 0 <= report["products_kept_share"] <= 1


@pytest.mark.parametrize("case", ["no-model", "bad-model", "no-target", "missing-image", "other-settings"])
def test_render_cli_errors_exit_2(case, tiny_world, tiny_generate, tmp_path):
    pytest.importorskip("torch")
    ann = tiny_generate / "instances_synth2019.json"
    apply = ("render", "apply", "--images", tiny_generate / "synth2019", "--ann", ann, "--out", tmp_path / "o")
    if case == "no-model":
        result, expected = run(*apply), "--model"
    elif case == "bad-model":
        (tmp_path / "bad.pt").write_text("{}")
        result, expected = run(*apply, "--model", tmp_path / "bad.pt"), "bad.pt"
    elif case == "no-target":
        result, expected = run(*apply, "--method", "histogram"), "--target"
    elif case == "missing-image":
        data = json.loads(ann.read_text())
        data["images"][0]["file_name"] = "missing.jpg"
        (tmp_path / "ann.json").write_text(json.dumps(data))
        result = run("render", "apply", "--images", tiny_generate / "synth2019", "--ann", tmp_path / "ann.json",
                     "--out", tmp_path / "o", "--method", "histogram", "--target", tiny_world / "val2019")
        expected = "missing.jpg"
    else:
        assert run(*_train_args(tiny_world, tiny_generate, tmp_path / "m.pt"), *TINY_ARGS).exit_code == 0
        result = run(*_train_args(tiny_world, tiny_generate, tmp_path / "m.pt"), *TINY_ARGS[:-1], "--seed", 1)
        expected = "other settings (seed)"
    assert result.exit_code == 2 and expected in result.output, result.output
    assert not (tmp_path / "o").exists()


BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch blocked for this test")
sys.meta_path.insert(0, _NoTorch())
"""


def test_rpc_synth_works_without_torch(tiny_world, tiny_generate, tmp_path):
    ann = tiny_generate / "instances_synth2019.json"
    script = BLOCK_TORCH + f"""
import rpc_synth, rpc_synth.cli, rpc_synth.render, rpc_synth.render.apply, rpc_synth.render.measure
from rpc_synth.cli import main
assert "torch" not in sys.modules
args = ["render", "apply", "--method", "histogram", "--target", {str(tiny_world / "val2019")!r},
        "--images", {str(tiny_generate / "synth2019")!r}, "--ann", {str(ann)!r}, "--out", {str(tmp_path / "h")!r},
        "--quiet"]
try:
    main(args)
except SystemExit as done:
    assert done.code in (0, None), done.code
args = ["render", "train", "--source", "s", "--source-ann", "a.json", "--target", "t", "--out", "m.pt"]
try:
    main(args)
except SystemExit as done:
    print("train exit", done.code)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train exit 2" in result.stdout and "rpc-synth[render]" in result.stderr
    assert (tmp_path / "h/instances_render2019.json").is_file()
