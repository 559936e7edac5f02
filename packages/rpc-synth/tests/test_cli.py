"""The CLI: happy paths on the tiny world, and bad input -> one clear line naming file and entry, exit 2."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from rpc_synth.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_world_cli_small(tmp_path):
    result = run("world", "--out", tmp_path / "w", "--skus", 10, "--azimuths", 2, "--elevations", "0,90",
                 "--exemplar-size", 96, "--size", 160, "--val", 3, "--test", 3, "--pool", 2, "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "w/instances_val2019.json").read_text())["images"][0]["level"] == "easy"
    pool = json.loads((tmp_path / "w/instances_pool2019.json").read_text())
    assert len(pool["images"]) == 2 and pool["annotations"] == [] and "level" not in pool["images"][0]
    assert (tmp_path / "w/pool_truth/instances_pool2019.json").is_file()


@pytest.mark.parametrize("args", [("--gap", "-1"), ("--density", "9"), ("--product-size", "0"), ("--pool", "-3"),
                                  ("--style", "other"), ("--lying", "0.8", "--standing", "0.5")])
def test_world_cli_bad_values(tmp_path, args):
    result = CliRunner().invoke(main, ["world", "--out", str(tmp_path / "w"), *args])
    assert result.exit_code == 2
    assert not (tmp_path / "w").exists()


def test_chain_cli(tiny_world, tmp_path):
    masks = tmp_path / "masks"
    assert run("masks", "--instances", tiny_world / "instances_train2019.json", "--images", tiny_world / "train2019",
               "--out", masks, "--quiet").exit_code == 0
    assert run("poses", "--masks", masks / "instances_masks.json", "--out", tmp_path / "poses.json").exit_code == 0
    result = run("quality", "--world", tiny_world, "--masks", masks, "--poses", tmp_path / "poses.json")
    assert json.loads(result.output)["masks"]["fine_mean_iou"] >= 0.9
    result = run("generate", "--exemplars", tmp_path / "poses.json", "--images", tiny_world / "train2019",
                 "--out", tmp_path / "synth", "--num-images", 3, "--size", 160, "--workers", 2, "--quiet")
    assert result.exit_code == 0 and "wrote 3 images" in result.output


@pytest.fixture
def broken(tiny_world, tiny_poses, tmp_path):
    """A copy of the poses JSON and exemplar photos that each test breaks in one way."""
    shutil.copytree(tiny_world / "train2019", tmp_path / "train2019")
    return tmp_path, json.loads(tiny_poses.read_text())


def _generate_with(tmp_path, data, *extra):
    (tmp_path / "bad.json").write_text(json.dumps(data))
    result = run("generate", "--exemplars", tmp_path / "bad.json", "--images", tmp_path / "train2019",
                 "--out", tmp_path / "out", "--num-images", 2, "--size", 128, "--quiet", *extra)
    assert result.exit_code == 2
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert len(result.output.strip().splitlines()) == 1
    return result.output


def test_missing_image_file(broken):
    tmp_path, data = broken
    (tmp_path / "train2019" / data["images"][3]["file_name"]).unlink()
    out = _generate_with(tmp_path, data)
    assert "bad.json" in out and "images id=4" in out and "not found" in out


def test_bbox_outside_image(broken):
    tmp_path, data = broken
    data["annotations"][2]["bbox"] = [150.0, 100.0, 400.0, 30.0]
    out = _generate_with(tmp_path, data)
    assert "bad.json" in out and f"annotations id={data['annotations'][2]['id']}" in out and "outside" in out


def test_unknown_category(broken):
    tmp_path, data = broken
    data["annotations"][0]["category_id"] = 999
    out = _generate_with(tmp_path, data)
    assert "bad.json" in out and "annotations[0]" in out and "999" in out


def test_file_name_leaving_its_folder(broken):
    tmp_path, data = broken
    data["images"][0]["file_name"] = "../../etc/passwd"
    out = _generate_with(tmp_path, data)
    assert "bad.json" in out and "leaves the image folder" in out


def test_empty_exemplar_set_for_a_requested_sku(broken):
    tmp_path, data = broken
    for ann in data["annotations"]:
        if ann["category_id"] == 2:
            ann["pose_kept"] = False
    out = _generate_with(tmp_path, data, "--categories", "1,2,3")
    assert "bad.json" in out and "[2]" in out and "no kept exemplar" in out


def test_masks_missing_image(tiny_world, tmp_path):
    shutil.copytree(tiny_world / "train2019", tmp_path / "train2019")
    (tmp_path / "train2019" / "exemplar_000001.jpg").unlink()
    result = run("masks", "--instances", tiny_world / "instances_train2019.json", "--images", tmp_path / "train2019",
                 "--out", tmp_path / "masks", "--quiet")
    assert result.exit_code == 2 and "images id=1" in result.output
    assert not (tmp_path / "masks").exists()


def test_masks_json_not_found(tmp_path):
    result = run("poses", "--masks", tmp_path / "nope.json", "--out", tmp_path / "p.json")
    assert result.exit_code == 2 and "nope.json" in result.output and not (tmp_path / "p.json").exists()


def test_resume_with_other_settings_is_refused(tiny_world, tiny_poses, tmp_path):
    args = ["generate", "--exemplars", tiny_poses, "--images", tiny_world / "train2019", "--out", tmp_path / "o",
            "--num-images", 2, "--size", 128, "--quiet"]
    assert run(*args).exit_code == 0
    result = run(*args[:-1], "--seed", 7, "--quiet")
    assert result.exit_code == 2 and "seed" in result.output and "new --out" in result.output


def _snapshot(folder):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_world_into_a_folder_of_another_world_is_refused(tiny_world, tmp_path):
    out = tmp_path / "w"
    shutil.copytree(tiny_world, out)
    before = _snapshot(out)
    result = run("world", "--out", out, "--seed", 4, "--skus", 10, "--azimuths", 2, "--quiet")
    assert result.exit_code == 2
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and line.startswith(f"rpc-synth: error: {out} holds a world made with other "
                                                           "settings (config.azimuths 4 -> 2; ")
    assert "config.seed 3 -> 4" in line and line.endswith("use the same settings, or a new --out to start over")
    assert _snapshot(out) == before


def test_masks_of_another_world_are_refused(tiny_world, tiny_masks, tmp_path):
    """OUT/masks.json records the instances JSON (path, digest), the photos folder and the settings."""
    out, instances, photos = tmp_path / "masks", tiny_world / "instances_train2019.json", tiny_world / "train2019"
    shutil.copytree(tiny_masks, out)
    args = ["--out", out, "--keep-coarse", "--quiet"]
    assert run("masks", "--instances", instances, "--images", photos, *args).exit_code == 0  # resumed: all done
    before = _snapshot(out)
    other = json.loads(instances.read_text())
    other["images"] = other["images"][1:]  # another world's exemplars
    other["annotations"] = [a for a in other["annotations"] if a["image_id"] != 1]
    (tmp_path / "other.json").write_text(json.dumps(other))
    result = run("masks", "--instances", tmp_path / "other.json", "--images", photos, *args)
    assert result.exit_code == 2
    assert result.output.strip() == (f"rpc-synth: error: {out} holds masks made with other settings (instances: "
                                     f"{instances.resolve()} -> {(tmp_path / 'other.json').resolve()}); use the "
                                     "same settings, or a new --out to start over")
    shutil.copytree(photos, tmp_path / "photos")
    result = run("masks", "--instances", instances, "--images", tmp_path / "photos", "--out", out, "--quiet")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert f"images \"{photos.resolve()}\" -> \"{(tmp_path / 'photos').resolve()}\"" in result.output
    assert "keep_coarse true -> false" in result.output
    assert _snapshot(out) == before


def test_generate_records_its_photos_and_remakes_lost_images(tiny_world, tiny_poses, tmp_path):
    out, photos = tmp_path / "o", tiny_world / "train2019"
    args = ["generate", "--exemplars", tiny_poses, "--out", out, "--num-images", 3, "--size", 128, "--quiet"]
    assert run(*args, "--images", photos).exit_code == 0
    assert json.loads((out / "generate.json").read_text())["images"] == str(photos.resolve())
    made = {p.name: p.read_bytes() for p in (out / "synth2019").iterdir()}
    before = _snapshot(out)
    shutil.copytree(photos, tmp_path / "photos")
    result = run(*args, "--images", tmp_path / "photos")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert f"images \"{photos.resolve()}\" -> \"{(tmp_path / 'photos').resolve()}\"" in result.output
    assert "new --out" in result.output and _snapshot(out) == before
    (out / "synth2019" / "synth_000001.jpg").unlink()  # a part whose image is gone, one whose image is cut short
    (out / "synth2019" / "synth_000002.jpg").write_bytes(made["synth_000002.jpg"][:100])
    result = run(*args, "--images", photos)
    assert result.exit_code == 0, result.output
    assert {p.name: p.read_bytes() for p in (out / "synth2019").iterdir()} == made
    assert (out / "synth2019" / "synth_000003.jpg").stat().st_mtime_ns == before[out / "synth2019" / "synth_000003.jpg"][1]
