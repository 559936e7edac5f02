"""The mini world: RPC layout and validity, levels, visible boxes, determinism, frozen default properties."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from rpc_metrics.io import LEVELS, read_instances
from rpc_synth.baskets import LEVEL_RANGES
from rpc_synth.checkout_camera import checkout_elevation
from rpc_synth.compose import box_iou
from rpc_synth.world import (
    POOL_TRUTH,
    TRUE_MASKS,
    WorldConfig,
    build_world,
    catalog,
    lookalike_ceiling,
    lookalike_evidence,
    render_checkout,
    render_exemplar,
)

EXAMPLES = Path(__file__).resolve().parents[3].parent / "shared" / "rpc-format"


def test_layout_and_validity(tiny_world, tiny_config):
    TINY = tiny_config
    for folder in ("train2019", "val2019", "test2019", TRUE_MASKS):
        assert (tiny_world / folder).is_dir()
    train = read_instances(tiny_world / "instances_train2019.json")
    assert len(train["images"]) == len(train["annotations"]) == TINY.skus * len(TINY.elevations) * TINY.azimuths
    for split in ("val", "test"):
        read_instances(tiny_world / f"instances_{split}2019.json", require_levels=True)
    ids = [c["id"] for c in train["categories"]]
    assert ids == list(range(1, TINY.skus + 1))
    for c in train["categories"]:
        assert c["name"].startswith(f"{c['id']}_") and c["supercategory"]
    assert 2 <= len({c["supercategory"] for c in train["categories"]}) <= 6
    for ann in train["annotations"]:
        assert set(ann) >= {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "point_xy", "segmentation"}


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="shared/rpc-format examples not present")
def test_same_shape_as_the_rpc_examples(tiny_world):
    for split in ("train", "test"):
        example = json.loads((EXAMPLES / f"instances_{split}2019.example.json").read_text())
        ours = json.loads((tiny_world / f"instances_{split}2019.json").read_text())
        assert set(ours) == set(example)
        for key in ("images", "annotations", "categories", "__raw_Chinese_name_df"):
            assert set(ours[key][0]) >= set(example[key][0]), key


def test_levels_in_equal_thirds_and_ranges_respected(tiny_world):
    for split in ("val", "test"):
        data = read_instances(tiny_world / f"instances_{split}2019.json")
        levels = Counter(im["level"] for im in data["images"])
        assert set(levels) == set(LEVELS) and len(set(levels.values())) == 1
        per_image: dict[int, list[int]] = {im["id"]: [] for im in data["images"]}
        for ann in data["annotations"]:
            per_image[ann["image_id"]].append(ann["category_id"])
        for im in data["images"]:
            (c_lo, c_hi), (n_lo, n_hi) = LEVEL_RANGES[im["level"]]
            cats = per_image[im["id"]]
            assert n_lo <= len(cats) <= n_hi and c_lo <= len(set(cats)) <= c_hi


def test_checkout_boxes_match_visible_pixels(tiny_world, helpers):
    for split in ("val", "test"):
        data = read_instances(tiny_world / f"instances_{split}2019.json")
        helpers.check_visible_boxes(data, tiny_world / f"{split}2019")


def test_exemplar_boxes_are_tight_around_the_true_mask(tiny_world):
    train = read_instances(tiny_world / "instances_train2019.json")
    images = {im["id"]: im for im in train["images"]}
    for ann in train["annotations"][::7]:
        name = images[ann["image_id"]]["file_name"].replace(".jpg", ".png")
        mask = cv2.imread(str(tiny_world / TRUE_MASKS / name), cv2.IMREAD_GRAYSCALE) > 127
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        assert ann["bbox"] == [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]


def test_same_seed_same_bytes_any_workers(tiny_world, tiny_config, tmp_path, helpers):
    TINY = tiny_config
    build_world(tmp_path / "again", TINY, workers=2, progress=False)
    assert helpers.files_bytes(tmp_path / "again") == helpers.files_bytes(tiny_world)


def test_other_seed_other_world(tiny_config):
    TINY = tiny_config
    a, _ = render_exemplar(TINY, 5)
    b, _ = render_exemplar(WorldConfig(**{**TINY.__dict__, "seed": TINY.seed + 1}), 5)
    assert not np.array_equal(a, b)


# ------------------------------------------------------------------ frozen properties of the defaults


DEFAULT = WorldConfig()
LEGACY = WorldConfig(style="legacy")


def test_default_catalog_is_not_easier():
    skus = catalog(DEFAULT)
    assert len(skus) >= 24
    assert len({s.shape for s in skus}) >= 4
    pairs = [s for s in skus if s.twin_of is not None]
    assert len(pairs) >= 4
    for twin in pairs:
        original = skus[twin.twin_of - 1]
        assert (twin.shape, twin.dims) == (original.shape, original.dims)
        assert twin.letters != original.letters
    assert len(DEFAULT.elevations) >= 4 and min(DEFAULT.elevations) == 0 and max(DEFAULT.elevations) == 90
    assert 256 <= DEFAULT.checkout_size <= 512 and 256 <= DEFAULT.exemplar_size <= 512
    # The default is the world with a real gap: geometric (a camera above, products lying) and photometric.
    assert DEFAULT.style == "gap" and DEFAULT.gap >= 1.0 and DEFAULT.lying >= 0.5 and DEFAULT.density >= 1.0
    assert DEFAULT.pool_images >= DEFAULT.test_images
    domain = LEGACY.domain
    assert domain.color_cast > 0 and domain.uneven_light > 0 and domain.shadow_strength > 0
    assert domain.blur_sigma > 0 and domain.noise_sigma > 0 and domain.jpeg_quality < 95


def test_style_defaults_and_errors():
    assert (DEFAULT.product_size, DEFAULT.min_visible) == (0.26, 0.35)
    assert (LEGACY.product_size, LEGACY.min_visible) == (0.2, 0.5)
    assert WorldConfig(product_size=0.3).product_size == 0.3
    for bad in ({"style": "other"}, {"gap": -0.1}, {"density": 0.0}, {"product_size": 0.9}, {"lying": 0.7, "standing": 0.4},
                {"pool_images": -1}):
        with pytest.raises(ValueError):
            WorldConfig(**bad)


def test_default_world_has_degenerate_views():
    """A can from the top and a flat pack edge-on cover far less than the SKU's largest view."""
    n_views = len(DEFAULT.elevations) * DEFAULT.azimuths
    ratios = {}
    for sku in catalog(DEFAULT)[:4]:  # one of each shape
        first = (sku.id - 1) * n_views
        areas = [render_exemplar(DEFAULT, first + v)[1].sum() for v in range(n_views)]
        ratios[sku.shape] = min(areas) / max(areas)
    assert ratios["can"] < 0.45 and ratios["bag"] < 0.45 and ratios["bottle"] < 0.45


def test_checkout_elevations_follow_the_shares():
    rng = np.random.default_rng(0)
    elevations = np.array([checkout_elevation(rng, 0.6, 0.1) for _ in range(4000)])
    lying, standing = (elevations <= 12).mean(), (elevations >= 78).mean()
    leaning = ((elevations >= 20) & (elevations <= 55)).mean()
    assert abs(lying - 0.6) < 0.03 and abs(standing - 0.1) < 0.02 and abs(leaning - 0.3) < 0.03
    assert lying + standing + leaning == 1.0


@pytest.fixture(scope="module")
def default_samples():
    """A sample of default-size exemplars and checkout images of both styles, rendered in memory."""
    n_views = len(DEFAULT.elevations) * DEFAULT.azimuths
    exemplars = [render_exemplar(DEFAULT, i) for i in range(0, len(catalog(DEFAULT)) * n_views, 37)]
    checkouts = {c.style: [render_checkout(c, "val", i) for i in range(9)] for c in (DEFAULT, LEGACY)}
    return exemplars, checkouts


def _tray_pixels(checkouts) -> np.ndarray:
    pixels = []
    for image, _, anns in checkouts:
        covered = np.zeros(image.shape[:2], bool)
        for ann in anns:
            x, y, w, h = (int(v) for v in ann["bbox"])
            covered[y : y + h + 1, x : x + w + 1] = True
        pixels.append(image[~covered])
    return np.concatenate(pixels).astype(np.float64)


@pytest.mark.parametrize("style", ["gap", "legacy"])
def test_checkout_domain_differs_from_exemplars(default_samples, style):
    exemplars, checkouts = default_samples
    ex_bg = np.concatenate([img[~mask] for img, mask in exemplars]).astype(np.float64)
    co_bg = _tray_pixels(checkouts[style])
    unevenness = []
    for image, _, _ in checkouts[style]:
        grey = image.mean(axis=2)
        q = image.shape[0] // 2
        unevenness.append(np.ptp([np.median(g) for g in (grey[:q, :q], grey[:q, q:], grey[q:, :q], grey[q:, q:])]))
    # Exemplars on a light neutral turntable; checkout trays darker and tinted, unevenly lit.
    assert ex_bg.mean() - co_bg.mean() > 40
    assert np.ptp(ex_bg.mean(axis=0)) < 15
    assert np.median(unevenness) > 8


def test_gap_style_camera_is_warm_hazy_and_soft(default_samples):
    """The gap camera: warm white balance (red over blue on the tray), a raised black level and less detail."""
    _, checkouts = default_samples
    gap, legacy = (np.stack([c[0] for c in checkouts[s]]).astype(np.float64) for s in ("gap", "legacy"))
    tray = _tray_pixels(checkouts["gap"])
    assert tray[:, 2].mean() > tray[:, 0].mean() + 10  # BGR: red above blue
    assert np.percentile(gap, 1) > np.percentile(legacy, 1)  # haze lifts the blacks

    def detail(image):  # energy of a mid-frequency band: blur removes it, white noise adds little there
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
        return float((cv2.GaussianBlur(grey, (0, 0), 1.5) - cv2.GaussianBlur(grey, (0, 0), 3.0)).var())

    for index in (1, 2):  # the same tray at rising strength
        details = [detail(render_checkout(replace(DEFAULT, gap=g), "val", index)[0]) for g in (0.0, 1.0, 2.0)]
        assert details[0] > details[1] > details[2]


def _overlap_and_size(config, n=9):
    largest_iou, sizes = [], []
    for i in range(n):
        _, _, anns = render_checkout(config, "val", i)
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns])
        iou = box_iou(boxes, boxes)
        np.fill_diagonal(iou, 0)
        largest_iou.append(iou.max(axis=1).mean())
        sizes += [np.sqrt(a["bbox"][2] * a["bbox"][3]) / config.checkout_size for a in anns]
    return float(np.mean(largest_iou)), float(np.median(sizes))


def test_density_piles_and_product_size_scales():
    small = replace(DEFAULT, checkout_size=256)
    base_iou, base_size = _overlap_and_size(small)
    dense_iou, _ = _overlap_and_size(replace(small, density=2.0))
    _, big_size = _overlap_and_size(replace(small, product_size=0.34))
    assert dense_iou > base_iou + 0.03
    assert 1.15 < big_size / base_size < 1.45  # 0.34 / 0.26 = 1.31, less what occlusion hides


def test_checkout_levels_and_occlusion(default_samples):
    exemplars, checkouts = default_samples
    for style, samples in checkouts.items():
        overlaps = 0
        for _, level, anns in samples:
            boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns])
            iou = box_iou(boxes, boxes)
            overlaps += int((iou[np.triu_indices(len(boxes), 1)] > 0).sum())
            (c_lo, c_hi), (n_lo, n_hi) = LEVEL_RANGES[level]
            assert n_lo <= len(anns) <= n_hi and c_lo <= len({a["category_id"] for a in anns}) <= c_hi
        assert overlaps > 0, style
    # The legacy world's products are smaller than the exemplars' (kept views; degenerate ones are tiny anyway).
    areas = np.array([mask.sum() for _, mask in exemplars], dtype=np.float64)
    ex_size = np.median(np.sqrt(areas[areas > 0.45 * np.percentile(areas, 90)]))
    full = [np.sqrt(a["area"]) for _, _, anns in checkouts["legacy"] for a in anns]
    assert np.median(full) / ex_size < 0.8


def test_pool_is_unlabeled_and_its_truth_apart(tiny_world, tiny_config):
    pool = read_instances(tiny_world / "instances_pool2019.json")
    truth = read_instances(tiny_world / POOL_TRUTH / "instances_pool2019.json", require_levels=True)
    assert pool["annotations"] == [] and len(pool["images"]) == tiny_config.pool_images
    assert all("level" not in im for im in pool["images"])
    assert [im["file_name"] for im in pool["images"]] == [im["file_name"] for im in truth["images"]]
    assert truth["annotations"] and all((tiny_world / "pool2019" / im["file_name"]).is_file() for im in pool["images"])
    test = cv2.imread(str(tiny_world / "test2019" / "test_000001.jpg"))
    assert not np.array_equal(cv2.imread(str(tiny_world / "pool2019" / "pool_000001.jpg")), test)


def test_lookalike_evidence_rows_follow_the_annotations(default_samples):
    _, checkouts = default_samples
    twins = {s.id: s.twin_of for s in catalog(DEFAULT) if s.twin_of is not None}
    twins.update({b: a for a, b in twins.items()})
    seen_twins = 0
    for i, (_, level, anns) in enumerate(checkouts["gap"][:4]):
        got_level, rows = lookalike_evidence(DEFAULT, "val", i)
        assert got_level == level
        assert [r["category_id"] for r in rows] == [a["category_id"] for a in anns]
        for r, a in zip(rows, anns, strict=True):
            assert r["visible_px"] == a["area"]
            assert r["twin"] == twins.get(r["category_id"])
            if r["twin"] is None:
                assert r["evidence_px"] is None
            else:
                seen_twins += 1
                assert 0 <= r["evidence_px"] <= r["visible_px"]
        # No channel differs by more than 255 grey levels: nothing tells the twins apart at that contrast.
        _, blind = lookalike_evidence(DEFAULT, "val", i, contrast=255)
        assert all(r["evidence_px"] in (None, 0) for r in blind)
    assert seen_twins > 0


def test_lookalike_ceiling_by_hand():
    def row(cid, twin, px):
        return {"category_id": cid, "twin": twin, "evidence_px": px, "visible_px": 100}

    plain = [row(5, None, None), row(6, None, None)]
    assert lookalike_ceiling([plain]) == 1.0
    # Two blind products of one pair: AA, AB, BA, BB equally likely; guessing one of each is right half the time.
    assert lookalike_ceiling([[row(1, 21, 0), row(21, 1, 3)]], min_px=10) == 0.5
    assert lookalike_ceiling([[row(1, 21, 0), row(21, 1, 3)]], min_px=3) == 1.0 / 2  # only the first is blind
    assert lookalike_ceiling([[row(1, 21, 0), row(1, 21, 0), row(21, 1, 0)]]) == 3 / 8
    # Blind products of two pairs multiply; images average.
    two_pairs = [row(1, 21, 0), row(2, 22, 0), row(3, None, None)]
    assert lookalike_ceiling([two_pairs, plain]) == (0.25 + 1.0) / 2
    assert lookalike_ceiling([[row(1, 21, 50)]]) == 1.0
    with pytest.raises(ValueError):
        lookalike_ceiling([])


def test_textured_turntable_is_recorded_and_a_plain_world_json_is_unchanged(tmp_path):
    """``--turntable textured`` is in world.json (a resume with the plain turntable is refused, exit 2); a plain
    world's world.json has no ``turntable`` key, as before the option, so older folders still resume."""
    from click.testing import CliRunner

    from rpc_synth.cli import main
    from rpc_synth.world import world_summary

    assert "turntable" not in world_summary(WorldConfig())["config"]
    assert world_summary(WorldConfig(turntable="textured"))["config"]["turntable"] == "textured"
    args = ["world", "--out", str(tmp_path / "w"), "--skus", "10", "--azimuths", "1", "--elevations", "0",
            "--val", "0", "--test", "0", "--pool", "0", "--quiet"]
    assert CliRunner().invoke(main, [*args, "--turntable", "textured"]).exit_code == 0
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and "turntable" in refused.output, refused.output
    bad = CliRunner().invoke(main, ["world", "--turntable", "wood"])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1 and "--turntable" in bad.output
    with pytest.raises(ValueError, match="turntable"):
        WorldConfig(turntable="wood")
