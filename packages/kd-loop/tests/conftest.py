"""A small toy world for kd-loop: a pool with ground truth, a noisy teacher's candidates, a source set."""

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from rpc_metrics.io import write_json
from rpc_metrics.synthetic import make_case

TESTS = Path(__file__).resolve().parent


def build_world(folder: Path, seed: int = 0, n_pool: int = 30) -> Path:
    """Write the toy world and a config using the toy learner; return the config's path."""
    rng = np.random.default_rng(seed)
    pool_gt, candidates = make_case(n_pool, 8, seed=seed, image_size=200, miss_rate=0.1, false_positives=1.0)
    source_gt, _ = make_case(12, 8, seed=seed + 100, image_size=200)
    for item in source_gt["images"] + source_gt["annotations"]:  # source ids apart from the pool's
        item["image_id" if "image_id" in item else "id"] += 1000
    for name in ("pool_images", "source_images", "val_images", "cal_images", "test_images"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    by_image = defaultdict(list)
    for det in candidates:
        by_image[str(det["image_id"])].append(det)
    truth = defaultdict(Counter)
    for ann in pool_gt["annotations"]:
        truth[str(ann["image_id"])][str(ann["category_id"])] += 1
    # The counting view: right (with float noise) on most images, one off on the others.
    view = {}
    for im in pool_gt["images"]:
        counts = {k: v + float(rng.normal(0, 0.15)) for k, v in truth[str(im["id"])].items()}
        if rng.random() < 0.3 and counts:
            key = sorted(counts)[0]
            counts[key] += 1
        view[str(im["id"])] = counts
    write_json(pool_gt, folder / "pool_gt.json")
    write_json(source_gt, folder / "source.json")
    write_json(dict(by_image), folder / "candidates.json")
    write_json(view, folder / "view_counts.json")
    val_gt, _val_candidates = make_case(9, 8, seed=seed + 7, image_size=200)
    write_json(val_gt, folder / "val_gt.json")
    # The toy teacher answers by image id, so labelled copies of pool images stand for other labelled checkout
    # images: a calibration split (the first 10) and a test split (all of them, under another file name).
    cal_ids = {im["id"] for im in pool_gt["images"][:10]}
    write_json({**pool_gt, "images": pool_gt["images"][:10],
                "annotations": [a for a in pool_gt["annotations"] if a["image_id"] in cal_ids]}, folder / "cal_gt.json")
    write_json(pool_gt, folder / "test_gt.json")
    config = folder / "loop.toml"
    config.write_text(f"""
rounds = 2
seed = {seed}
workdir = "run"

[learner]
path = "kdloop_toy:ToyLearner"
kwargs = {{ candidates = "{folder / 'candidates.json'}", counts = "{folder / 'view_counts.json'}" }}

[source]
datasets = [{{ instances = "source.json", images = "source_images" }}]

[pool]
instances = "pool_gt.json"
images = "pool_images"
gt = "pool_gt.json"

[selection]
thresholds = [0.6, 0.7]
ignore_threshold = 0.3
""")
    return config


@pytest.fixture
def toy_world(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    return build_world(tmp_path)


@pytest.fixture
def tests_dir():
    return TESTS
