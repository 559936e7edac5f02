"""Datasets, category maps, the mixing sampler and augmentation."""

import numpy as np
import pytest
import torch

from dpsnet.data import Augment, CategoryMap, InstancesDataset, MixSampler, colour_jitter
from rpc_metrics.io import read_instances

from .conftest import CATEGORIES


@pytest.mark.parametrize(("mode", "names", "of_label"), [
    ("category", ["3", "5", "9"], [0, 0, 1, 2]),
    ("supercategory", ["boxes", "round"], [0, 0, 1, 0]),
    ("object", ["object"], [0, 0, 0, 0]),
])
def test_category_map(mode, names, of_label):
    cmap = CategoryMap.from_categories(list(reversed(CATEGORIES)), mode)
    assert cmap.category_ids == [3, 5, 9] and cmap.num_classes == 4
    assert cmap.count_names == names and cmap.count_class_of_label == of_label
    assert CategoryMap(**cmap.to_dict()) == cmap


def test_dataset_items(world):
    gt = read_instances(world / "instances.json")
    ds = InstancesDataset(world / "instances.json", world / "images", CategoryMap.from_categories(gt["categories"]))
    assert len(ds) == 6
    image, target = ds[2]
    assert image.shape == (3, 96, 96) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    anns = [a for a in gt["annotations"] if a["image_id"] == target["image_id"]]
    assert len(target["boxes"]) == len(anns) and target["iscrowd"].sum() == 1
    a = anns[0]
    assert target["boxes"][0].tolist() == [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]


def test_dataset_missing_folder_named(world, tmp_path):
    gt = read_instances(world / "instances.json")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        InstancesDataset(gt, tmp_path / "nowhere", CategoryMap.from_categories(gt["categories"]))


def test_flips_keep_boxes_on_their_objects():
    image = np.zeros((40, 60, 3), np.float32)
    image[5:15, 10:30] = 1.0
    boxes = np.array([[10.0, 5, 30, 15]], np.float32)
    aug = Augment(hflip=1.0, vflip=1.0, scale=(0.5, 0.5))
    out, out_boxes = aug(image, boxes, np.random.default_rng(0))
    assert out.shape == (20, 30, 3)
    x1, y1, x2, y2 = out_boxes[0].round().astype(int)
    assert (x1, y1, x2, y2) == (15, 12, 25, 18)
    assert out[y1:y2, x1:x2].mean() > 0.75 and out.sum() == pytest.approx(out[y1:y2, x1:x2].sum(), rel=0.05)


def test_colour_jitter_stays_in_range():
    image = np.random.default_rng(0).random((8, 8, 3), dtype=np.float32)
    out = colour_jitter(image, np.random.default_rng(1), 0.5, 0.5, 0.5)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1 and not np.allclose(out, image)


def slow_colour_jitter(image, rng, brightness, contrast, saturation):
    """The three steps one after the other, in float64, as their definitions read."""
    image = image.astype(np.float64)
    if brightness:
        image = image * rng.uniform(1 - brightness, 1 + brightness)
    if contrast:
        mean = image.mean()
        image = (image - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
    if saturation:
        grey = image.mean(axis=2, keepdims=True)
        image = (image - grey) * rng.uniform(1 - saturation, 1 + saturation) + grey
    return np.clip(image, 0.0, 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("strengths", [(0.5, 0.5, 0.5), (0.2, 0.0, 0.3), (0.0, 0.4, 0.0), (0.0, 0.0, 0.0)])
def test_colour_jitter_is_the_three_steps_composed(seed, strengths):
    """The one-pass affine map equals brightness, contrast and saturation applied in turn (same random draws,
    same generator state after), on an odd-sized image and a strip, with values clipped at both ends."""
    for shape in ((37, 23, 3), (1, 5, 3)):
        image = np.random.default_rng(seed).random(shape, dtype=np.float32)
        fast_rng, slow_rng = np.random.default_rng(seed + 10), np.random.default_rng(seed + 10)
        out = colour_jitter(image, fast_rng, *strengths)
        ref = slow_colour_jitter(image, slow_rng, *strengths)
        assert out.dtype == np.float32 and out.shape == shape
        np.testing.assert_allclose(out, ref, atol=2e-6)
        assert fast_rng.random() == slow_rng.random()
    bright = colour_jitter(np.full((4, 4, 3), 0.9, np.float32), np.random.default_rng(0), 0.0, 0.0, 0.0)
    assert np.array_equal(bright, np.full((4, 4, 3), 0.9, np.float32))


def test_mix_sampler_ratios_determinism_and_shards():
    sampler = MixSampler([10, 3], [0.5, 0.5], seed=3, epoch_size=20)
    samples = sampler.epoch_samples(0)
    assert len(samples) == 20 and sum(s[0] == 1 for s in samples) == 10
    assert all(i < 3 for ds, i, _ in samples if ds == 1)
    assert samples == MixSampler([10, 3], [0.5, 0.5], seed=3, epoch_size=20).epoch_samples(0)
    assert samples != sampler.epoch_samples(1)
    shards = [list(MixSampler([10, 3], [0.5, 0.5], seed=3, epoch_size=19, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 10
    single = MixSampler([10, 3], [0.5, 0.5], seed=3, epoch_size=19).epoch_samples(0)
    assert sorted(shards[0] + shards[1]) == sorted([*single, single[0]])


def test_mix_sampler_default_is_proportional():
    samples = MixSampler([6, 2], seed=0).epoch_samples(0)
    assert sorted((ds, i) for ds, i, _ in samples) == [(0, i) for i in range(6)] + [(1, 0), (1, 1)]
    with pytest.raises(ValueError, match="ratios"):
        MixSampler([6, 2], [1.0])
