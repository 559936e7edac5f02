"""`rpc-synth catalog`: a store's photo folders to RPC exemplars (boxes from masks, stable category ids, bad
photos listed together before anything is written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from rpc_synth.catalog import MAPPING, REPORT, safe_file_name
from rpc_synth.cli import main


def _iou(a, b) -> float:
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return iw * ih / (a[2] * a[3] + b[2] * b[3] - iw * ih)


@pytest.fixture(scope="module")
def world_catalog(tiny_world, tmp_path_factory):
    """Two views of each of the tiny world's first 4 SKUs in CATALOG/<sku name>/, and their true boxes."""
    data = json.loads((tiny_world / "instances_train2019.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    boxes = {a["image_id"]: a["bbox"] for a in data["annotations"]}
    root, truth = tmp_path_factory.mktemp("catalog"), {}
    for image in data["images"]:
        ann = next(a for a in data["annotations"] if a["image_id"] == image["id"])
        sku = names[ann["category_id"]]
        if ann["category_id"] > 4 or sum(k.startswith(sku + "/") for k in truth) >= 2 or ann["bbox"][3] < 12:
            continue
        (root / sku).mkdir(exist_ok=True)
        shutil.copyfile(tiny_world / "train2019" / image["file_name"], root / sku / image["file_name"])
        truth[f"{sku}/{image['file_name']}"] = boxes[image["id"]]
    return root, truth


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _run(*args):
    return CliRunner().invoke(main, ["catalog", *map(str, args), "--quiet"])


def _load(out: Path) -> dict:
    return json.loads((out / "instances_train2019.json").read_text())


def test_boxes_match_the_true_boxes_and_the_layout_is_rpc(world_catalog, tmp_path):
    root, truth = world_catalog
    result = _run("--catalog", root, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    data = _load(tmp_path / "out")
    assert len(data["images"]) == len(truth) and len(data["annotations"]) == len(truth)
    for image, ann in zip(data["images"], data["annotations"], strict=True):
        assert ann["image_id"] == image["id"] and (tmp_path / "out" / "train2019" / image["file_name"]).is_file()
        assert _iou(ann["bbox"], truth[image["source_file"]]) >= 0.85, (image["source_file"], ann["bbox"])
    assert [c["name"] for c in data["categories"]] == sorted({k.split("/")[0] for k in truth})
    assert {c["supercategory"] for c in data["categories"]} == {"product"}
    mapping = json.loads((tmp_path / "out" / MAPPING).read_text())
    assert sorted(mapping["ids"].values()) == [1, 2, 3, 4]
    assert json.loads((tmp_path / "out" / REPORT).read_text())["no_product"] == []


def test_a_new_sku_keeps_the_old_ids_and_a_removed_one_is_refused(world_catalog, tmp_path):
    root, _ = world_catalog
    cat, out = _copy(root, tmp_path / "cat"), tmp_path / "out"
    assert _run("--catalog", cat, "--out", out).exit_code == 0
    old = json.loads((out / MAPPING).read_text())["ids"]
    first = sorted(old)[0]
    shutil.copytree(cat / first, cat / "0_new_sku")  # sorts first: must not take the old ids
    assert _run("--catalog", cat, "--out", out).exit_code == 0
    new = json.loads((out / MAPPING).read_text())["ids"]
    assert {k: new[k] for k in old} == old and new["0_new_sku"] == 5
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    shutil.rmtree(cat / first)
    result = _run("--catalog", cat, "--out", out)
    assert result.exit_code == 2 and "--allow-removed" in result.output and repr(first) in result.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing written
    result = _run("--catalog", cat, "--out", out, "--allow-removed")
    assert result.exit_code == 0, result.output
    mapping = json.loads((out / MAPPING).read_text())
    assert mapping["retired"] == {first: old[first]} and first not in mapping["ids"]
    assert len(list((out / "train2019").iterdir())) == len(_load(out)["images"])  # stale copies removed


def test_image_ids_are_kept_across_imports_and_a_removed_photos_id_is_not_reused(world_catalog, tmp_path):
    root, _ = world_catalog
    cat, out = _copy(root, tmp_path / "cat"), tmp_path / "out"
    assert _run("--catalog", cat, "--out", out).exit_code == 0
    first = {im["source_file"]: im["id"] for im in _load(out)["images"]}
    assert sorted(first.values()) == list(range(1, len(first) + 1))
    removed = sorted(first)[0]
    sku = removed.split("/")[0]
    shutil.copy(cat / removed, cat / sku / "0_added_view.jpg")  # sorts first in its SKU: must not take old ids
    (cat / removed).unlink()
    assert _run("--catalog", cat, "--out", out).exit_code == 0
    data = _load(out)
    second = {im["source_file"]: im["id"] for im in data["images"]}
    assert {k: second[k] for k in first if k != removed} == {k: v for k, v in first.items() if k != removed}
    assert second[f"{sku}/0_added_view.jpg"] == len(first) + 1 and first[removed] not in second.values()
    assert [a["image_id"] for a in data["annotations"]] == [im["id"] for im in data["images"]]
    (out / "image_ids.json").write_text('{"ids": {"a/b.jpg": -3}}')
    result = _run("--catalog", cat, "--out", out)
    assert result.exit_code == 2 and "image_ids.json" in result.output and len(result.output.strip().splitlines()) == 1


def test_unreadable_and_empty_photos_are_all_listed_and_nothing_written(world_catalog, tmp_path):
    root, _ = world_catalog
    cat = _copy(root, tmp_path / "cat")
    sku = sorted(p.name for p in cat.iterdir())[0]
    (cat / sku / "empty.jpg").write_bytes(b"")
    (cat / sku / "broken.png").write_bytes(b"not an image at all")
    (cat / "no_photos").mkdir()
    result = _run("--catalog", cat, "--out", tmp_path / "out")
    assert result.exit_code == 2
    for text in (f"{sku}/empty.jpg", f"{sku}/broken.png", "no_photos/", "3 unreadable"):
        assert text in result.output
    assert not (tmp_path / "out").exists()


def test_no_product_reported_hidden_files_ignored_supercategories_and_safe_names(world_catalog, tmp_path):
    root, truth = world_catalog
    cat = _copy(root, tmp_path / "cat")
    sku = sorted(p.name for p in cat.iterdir())[0]
    cv2.imwrite(str(cat / sku / "blank.png"), np.full((150, 200, 3), 210, np.uint8))
    (cat / sku / ".hidden.jpg").write_bytes(b"junk")  # unreadable, but hidden: never read
    (cat / ".DS_Store").write_bytes(b"junk")
    tricky = "x\\..\\..\\evil name ü; rm.jpg"
    shutil.copyfile(cat / next(k for k in truth if k.startswith(sku + "/")), cat / sku / tricky)
    (cat / "skus.csv").write_text(f"name,supercategory\n{sku},drinks\nnot_here,x\n", encoding="utf-8")
    out = tmp_path / "out"
    result = _run("--catalog", cat, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"{sku}/blank.png" in result.output and "no product found" in result.output
    assert "not_here" in result.output  # a skus.csv row without a folder is a warning
    report = json.loads((out / REPORT).read_text())
    assert [r["file"] for r in report["no_product"]] == [f"{sku}/blank.png"]
    data = _load(out)
    assert "blank" not in json.dumps(data["images"]) and ".hidden" not in json.dumps(data["images"])
    assert {c["name"]: c["supercategory"] for c in data["categories"]}[sku] == "drinks"
    image = next((im for im in data["images"] if im["source_file"] == f"{sku}/{tricky}"), None)
    assert image is not None, [im["source_file"] for im in data["images"]]
    assert "/" not in image["file_name"] and "\\" not in image["file_name"] and ".." not in image["file_name"]
    assert (out / "train2019" / image["file_name"]).resolve().parent == (out / "train2019").resolve()
    assert safe_file_name("a", "x.JPEG").endswith(".jpg") and safe_file_name("a", "b") != safe_file_name("a_", "b")


def test_same_bytes_for_any_worker_count(world_catalog, tmp_path):
    root, _ = world_catalog
    assert _run("--catalog", root, "--out", tmp_path / "a").exit_code == 0
    assert _run("--catalog", root, "--out", tmp_path / "b", "--workers", "2").exit_code == 0
    for name in ("instances_train2019.json", MAPPING):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
