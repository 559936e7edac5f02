import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from rpc_metrics import io


@pytest.mark.parametrize("name", ["instances_train2019.example.json", "instances_test2019.example.json"])
def test_real_rpc_files_are_accepted_and_round_trip(name, data_dir, tmp_path):
    dataset = io.read_instances(data_dir / name)
    assert "__raw_Chinese_name_df" in dataset and len(dataset["categories"]) == 200
    out = io.write_instances(dataset, tmp_path / name)
    assert json.loads(out.read_text()) == dataset  # unknown keys kept, nothing changed
    assert "instances" in io.validate_file(out)


def test_test_split_levels_are_required_only_when_asked(data_dir):
    dataset = io.read_instances(data_dir / "instances_test2019.example.json", require_levels=True)
    del dataset["images"][0]["level"]
    io.validate_instances(dataset)
    with pytest.raises(io.FormatError, match=r"images id=\d+: missing 'level'"):
        io.validate_instances(dataset, require_levels=True)


def minimal():
    return {"images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 6, "level": "easy"}],
            "categories": [{"id": 3, "name": "sku", "supercategory": "food"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2], "area": 4, "iscrowd": 0,
                             "point_xy": [2, 2]}]}


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["annotations"][0].update(image_id=5), r"annotations\[0\]: image_id 5 is not in images"),
    (lambda d: d["annotations"][0].update(category_id=9), r"annotations\[0\]: category_id 9 is not in categories"),
    (lambda d: d["annotations"][0].update(bbox=[1, 1, float("inf"), 2]), "non-finite"),
    (lambda d: d["annotations"][0].update(bbox=[1, 1, -2, 2]), ">= 0"),
    (lambda d: d["annotations"][0].update(iscrowd=2), "iscrowd should be 0 or 1"),
    (lambda d: d["annotations"][0].update(point_xy=[1]), "point_xy"),
    (lambda d: d["annotations"].append(dict(d["annotations"][0])), "unique integer"),
    (lambda d: d["images"].append(dict(d["images"][0])), "duplicate id 1"),
    (lambda d: d["images"][0].update(level="expert"), "level should be one of"),
    (lambda d: d.pop("categories"), "categories: missing top-level key"),
    (lambda d: d["annotations"][0].update(segmentation={"size": [5, 5], "counts": "abc"}), "differs from its image"),
])
def test_instances_errors_name_the_entry(edit, message):
    dataset = minimal()
    edit(dataset)
    with pytest.raises(io.FormatError, match=message) as err:
        io.validate_instances(dataset, source="gt.json")
    assert str(err.value).startswith("gt.json")


def test_level_ranges_and_area_are_not_enforced():
    dataset = minimal()
    dataset["annotations"][0]["area"] = 123.0  # not w * h: fine
    io.validate_instances(dataset)


def test_malformed_and_missing_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(io.FormatError, match=r"bad\.json: malformed JSON"):
        io.read_instances(bad)
    with pytest.raises(io.FormatError, match="file not found"):
        io.read_results(tmp_path / "missing.json")


@pytest.mark.parametrize(("detection", "message"), [
    ({"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}, "missing required field 'score'"),
    ({"image_id": "1", "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}, "image_id should be an integer"),
    ({"image_id": 1, "category_id": 3, "bbox": [0, 0, 1], "score": 0.5}, "4 numbers"),
    ({"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": float("nan")}, "non-finite"),
    ({"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": True}, "score should be a number"),
    ({"image_id": 1, "category_id": 4, "bbox": [0, 0, 1, 1], "score": 0.5}, "category_id 4 is not in the ground truth"),
    ("not an object", "should be an object"),
])
def test_results_errors_name_the_entry(detection, message):
    ok = {"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}
    with pytest.raises(io.FormatError, match=r"res.json: \[1\]: .*" + message):
        io.validate_results([ok, detection], source="res.json", gt=minimal())


def test_results_round_trip_and_empty(tmp_path):
    results = [{"image_id": 1, "category_id": 3, "bbox": [0.5, 0, 1, 1], "score": 0.25, "extra": "kept"}]
    path = io.write_results(results, tmp_path / "r.json")
    assert io.read_results(path, gt=minimal()) == results
    assert io.read_results(io.write_results([], tmp_path / "e.json")) == []
    arrays = io.results_to_arrays(results)
    assert arrays.boxes.shape == (1, 4) and arrays.scores.tolist() == [0.25]


def test_counts_files(tmp_path):
    pool = io.as_pool(minimal())
    assert pool["annotations"] == [] and io.detect_format(pool) == "pool"
    counts = {"count_classes": "category", "images": [{"image_id": 1, "counts": {"3": 2.03}}]}
    path = io.write_counts(counts, tmp_path / "counts.json")
    assert io.read_counts(path, pool=pool) == counts
    with pytest.raises(io.FormatError, match="pool images are not listed"):
        io.validate_counts({"count_classes": "category", "images": []}, pool=pool)
    with pytest.raises(io.FormatError, match="count_classes"):
        io.validate_counts({"count_classes": "sku", "images": []})
    with pytest.raises(io.FormatError, match="finite number"):
        io.validate_counts({"count_classes": "object", "images": [{"image_id": 1, "counts": {"object": None}}]})


@pytest.mark.parametrize("seed", range(3))
def test_rle_round_trip_matches_pycocotools(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((17, 23)) < 0.3
    rle = io.encode_mask(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [17, 23]
    json.dumps(rle)
    assert (io.decode_mask(rle) == mask).all()
    reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle["counts"] == reference["counts"].decode()
    # Uncompressed RLE (list counts), as COCO crowd annotations store it.
    flat = mask.T.reshape(-1).astype(int)
    changes = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]]))
    runs = np.diff(np.r_[0, changes]).tolist()
    assert (io.decode_mask({"size": [17, 23], "counts": runs}) == mask).all()


def test_image_path_stays_in_its_folder(tmp_path):
    assert io.image_path(tmp_path, "sub/a.jpg") == (tmp_path / "sub" / "a.jpg").resolve()
    for name in ["../a.jpg", "/etc/passwd", "sub/../../a.jpg", ""]:
        with pytest.raises(io.FormatError, match="file_name"):
            io.image_path(tmp_path, name, source="gt.json")


def test_writes_are_atomic(tmp_path):
    target = tmp_path / "out.json"
    io.write_json({"a": 1}, target)
    with pytest.raises(ValueError):
        io.write_json({"a": float("nan")}, target)  # refused mid-write: the old file stays whole
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["out.json"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)
    with pytest.raises(RuntimeError), io.atomic_output(tmp_path / "img.png") as tmp:
        assert tmp.suffix == ".png"
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed")
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_format_errors_pickle():
    import pickle

    err = pickle.loads(pickle.dumps(io.FormatError("a.json", "images[0]", "bad")))
    assert str(err) == "a.json: images[0]: bad" and err.entry == "images[0]"
