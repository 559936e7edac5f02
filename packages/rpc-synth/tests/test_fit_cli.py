"""`rpc-synth fit` and `generate --settings`: the settings file, precedence of explicit options, exit-2 errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rpc_synth.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def fitted(tiny_world, tiny_poses, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "synthesis.json"
    result = run("fit", "--exemplars", tiny_poses, "--images", tiny_world / "train2019",
                 "--checkout", tiny_world / "instances_val2019.json", "--out", out, "--probe-images", 6)
    assert result.exit_code == 0, result.output
    return out


def _generate(tiny_world, tiny_poses, out, *extra):
    return run("generate", "--exemplars", tiny_poses, "--images", tiny_world / "train2019", "--out", out,
               "--num-images", 3, "--quiet", *extra)


def test_fit_writes_settings_and_report(fitted):
    data = json.loads(fitted.read_text())
    assert set(data["generate"]) == {"size", "levels", "ranges", "scale", "max_iou"}
    assert data["generate"]["size"] == 224  # the tiny world's checkout side
    assert data["report"]["checkout"]["kind"] == "labelled" and data["report"]["probe"]["images"] == 6


def test_generate_takes_the_settings(tiny_world, tiny_poses, fitted, tmp_path):
    assert _generate(tiny_world, tiny_poses, tmp_path / "a", "--settings", fitted).exit_code == 0
    recorded = json.loads((tmp_path / "a" / "generate.json").read_text())["config"]
    assert {k: recorded[k] for k in ("size", "levels", "ranges", "scale", "max_iou")} == json.loads(fitted.read_text())["generate"]
    # options given on the command line win over the file; the others still come from it
    assert _generate(tiny_world, tiny_poses, tmp_path / "b", "--settings", fitted, "--scale", "0.3,0.4", "--size", 128).exit_code == 0
    recorded = json.loads((tmp_path / "b" / "generate.json").read_text())["config"]
    assert recorded["scale"] == [0.3, 0.4] and recorded["size"] == 128
    assert recorded["ranges"] == json.loads(fitted.read_text())["generate"]["ranges"]
    # resuming the first folder with other settings is refused, as for any other option
    result = _generate(tiny_world, tiny_poses, tmp_path / "a", "--settings", fitted, "--max-iou", 0.9)
    assert result.exit_code == 2 and "other settings (config.max_iou " in result.output and "-> 0.9)" in result.output


def test_fit_from_unlabeled_photos(tiny_world, tiny_poses, tmp_path):
    result = run("fit", "--exemplars", tiny_poses, "--images", tiny_world / "train2019",
                 "--checkout-images", tiny_world / "val2019", "--out", tmp_path / "s.json", "--probe-images", 6)
    assert result.exit_code == 0, result.output
    assert "max_iou is the base's" in result.output  # the warning, on stderr
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["generate"]["levels"] == ["all"] and data["report"]["checkout"]["kind"] == "unlabeled"


@pytest.mark.parametrize("case", ["both", "neither", "pool", "no-images-folder"])
def test_fit_bad_input(tiny_world, tiny_poses, tmp_path, case):
    checkout = {"both": ["--checkout", tiny_world / "instances_val2019.json", "--checkout-images", tiny_world / "val2019"],
                "neither": [],
                "pool": ["--checkout", tiny_world / "instances_pool2019.json"],
                "no-images-folder": ["--checkout-images", tmp_path / "missing"]}[case]
    result = run("fit", "--exemplars", tiny_poses, "--images", tiny_world / "train2019", *checkout,
                 "--out", tmp_path / "s.json", "--probe-images", 6)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "s.json").exists()
    if case == "pool":
        assert "instances_pool2019.json" in result.output and "--checkout-images" in result.output


@pytest.mark.parametrize("content", [None, "{not json", '{"generate": {"scael": [0.5, 0.7]}}', '{"generate": {"size": 8}}'])
def test_generate_bad_settings(tiny_world, tiny_poses, tmp_path, content):
    settings = tmp_path / "s.json"
    if content is not None:
        settings.write_text(content)
    result = _generate(tiny_world, tiny_poses, tmp_path / "out", "--settings", settings)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and "s.json" in result.output
    assert not (tmp_path / "out").exists()
