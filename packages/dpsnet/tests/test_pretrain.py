"""Backbone pretraining on exemplar crops, and loading its weights into the detector's backbone."""

import json

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dpsnet.backbone import build_backbone
from dpsnet.classifier import CropClassifier
from dpsnet.cli import main
from dpsnet.inference import CropRescorer
from dpsnet.training import crop_autocast, pretrain_backbone
from dpsnet.training import specialists as specialists_module
from dpsnet.training.crops import apply_crop_params, augment_crops, draw_crop_params, exemplar_crops
from dpsnet.training.specialists import confusable_pairs, train_specialist


def test_exemplar_crops_and_augmentation(world):
    crops, labels, category_ids = exemplar_crops(world / "instances.json", world / "images", 32)
    anns = [a for a in json.loads((world / "instances.json").read_text())["annotations"] if not a["iscrowd"]]
    # A crop per product box (not per image), crowd regions left out, labels in category order.
    assert crops.shape == (len(anns), 32, 32, 3) and crops.dtype == np.uint8 and category_ids == [3, 5, 9]
    assert sorted(labels.tolist()) == sorted([3, 5, 9].index(a["category_id"]) for a in anns)
    batch = augment_crops(crops[:3], np.random.default_rng(0))
    assert batch.shape == (3, 3, 32, 32) and 0 <= float(batch.min()) <= float(batch.max()) <= 1


def test_camera_effects_deterministic_and_bounded():
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 1, size=(24, 24, 3)).astype(np.float32)
    crops = (image[None].repeat(4, 0) * 255).astype(np.uint8)
    for seed in range(3):  # every crop gets the camera effects, with the flips and jitter drawn alike
        params = draw_crop_params(np.random.default_rng(seed), 4, 24, (1.0, 1.0), camera=1.0)
        plain = apply_crop_params(crops, {**params, "camera": np.zeros(4, dtype=bool)}).numpy()
        a = apply_crop_params(crops, params).numpy()
        b = apply_crop_params(crops, params).numpy()
        assert a.dtype == np.float32 and a.shape == crops.shape and np.array_equal(a, b)
        assert 0 <= float(a.min()) <= float(a.max()) <= 1
        # a degradation, not a new picture: the result stays close to the input (JPEG + noise + a cast)
        assert 0 < float(np.abs(a - plain).mean()) < 0.25
    # camera=0 draws nothing more from the generator: the batch is the one made without the option
    plain = augment_crops(crops, np.random.default_rng(1))
    assert torch.equal(plain, augment_crops(crops, np.random.default_rng(1), camera=0.0))
    assert not torch.equal(plain, augment_crops(crops, np.random.default_rng(1), camera=1.0))


def _slow_augment(crops, params):
    """:func:`apply_crop_params` written out per crop, step by step in float64 as the operations read."""
    size = crops.shape[1]
    cam_rows = {int(i): j for j, i in enumerate(np.flatnonzero(params["camera"]))}
    noise = None
    if cam_rows:
        noise = torch.randn((len(cam_rows), size, size, 3),
                            generator=torch.Generator().manual_seed(int(params["seed"][0]))).numpy()
    out = []
    for i, crop in enumerate(crops):
        image = crop.astype(np.float32) / 255
        small, ox, oy = int(params["small"][i]), int(params["ox"][i]), int(params["oy"][i])
        patch = np.rot90(cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA), int(params["turns"][i]))
        if params["flip"][i]:
            patch = patch[:, ::-1]
        canvas = np.full((size, size, 3), params["grey"][i], np.float64)
        canvas[oy:oy + small, ox:ox + small] = patch
        b, c, s = params["jitter"][i]
        canvas = canvas * b
        canvas = (canvas - canvas.mean()) * c + canvas.mean()
        grey = canvas.mean(axis=2, keepdims=True)
        canvas = np.clip((canvas - grey) * s + grey, 0.0, 1.0)
        if i in cam_rows:
            j = cam_rows[i]
            shot = (canvas * params["gain"][j]).astype(np.float32)
            if params["sigma"][j] > 0.3:
                shot = cv2.GaussianBlur(shot, (0, 0), float(params["sigma"][j]))
            shot = np.clip(shot + noise[j] * params["noise"][j], 0.0, 1.0)
            _, buffer = cv2.imencode(".jpg", (shot * 255).round().astype(np.uint8),
                                     [cv2.IMWRITE_JPEG_QUALITY, int(params["quality"][j])])
            canvas = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) / 255
        out.append(canvas)
    return np.stack(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_crop_augmentation_matches_the_per_crop_steps(seed):
    """The whole-batch augmentation equals resize, turn, flip, paste, the three jitter steps and the camera
    effects applied crop by crop; JPEG may round a pixel the other way, so with the camera effects a few pixels
    may differ by a grey level or two, no more."""
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 256, size=(9, 20, 20, 3), dtype=np.uint8)
    crops[:, :, :4] = 255  # an asymmetric mark, so a wrong turn or flip shows
    for camera in (0.0, 0.6, 1.0):
        params = draw_crop_params(np.random.default_rng(seed + 7), len(crops), 20, (0.3, 1.0), camera)
        fast = apply_crop_params(crops, params).numpy()
        ref = _slow_augment(crops, params)
        assert fast.shape == (9, 20, 20, 3) and fast.dtype == np.float32
        assert 0 <= fast.min() and fast.max() <= 1
        if camera == 0.0:
            assert not params["camera"].any()
            np.testing.assert_allclose(fast, ref, atol=2e-6)
        else:
            assert params["camera"].any()
            diff = np.abs(fast - ref)
            assert (diff > 2.5 / 255).mean() < 0.01 and diff.mean() < 1e-3
    # every turn and both flips occur over the seeds' draws, and the zoomed product fits its canvas
    many = draw_crop_params(np.random.default_rng(seed), 400, 20, (0.3, 1.0))
    assert set(many["turns"].tolist()) == {0, 1, 2, 3} and many["flip"].any() and not many["flip"].all()
    assert (many["ox"] + many["small"] <= 20).all() and (many["oy"] + many["small"] <= 20).all()
    assert many["small"].min() >= 4


def test_augment_crops_follows_the_seed_and_is_channels_last():
    crops = np.random.default_rng(0).integers(0, 256, size=(5, 16, 16, 3), dtype=np.uint8)
    a = augment_crops(crops, np.random.default_rng(3), camera=0.5)
    assert a.shape == (5, 3, 16, 16) and a.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, augment_crops(crops, np.random.default_rng(3), camera=0.5))
    assert not torch.equal(a, augment_crops(crops, np.random.default_rng(4), camera=0.5))


def test_crop_autocast_needs_bfloat16_units_and_crops_of_32_px(monkeypatch):
    from dpsnet import device

    monkeypatch.setattr(device, "cpu_bf16_units", lambda: ["AMX", "AVX512-BF16"])
    assert crop_autocast("auto", 64) and crop_autocast("auto", 32)
    assert not crop_autocast("auto", 16)  # the 2x2 input whose bfloat16 gradients are NaN
    assert not crop_autocast("float32", 64) and crop_autocast("bfloat16", 16)
    monkeypatch.setattr(device, "cpu_bf16_units", lambda: [])
    assert not crop_autocast("auto", 64)
    with pytest.raises(ValueError, match="precision"):
        crop_autocast("fp16")


def test_pretrain_stops_on_a_diverged_loss_naming_the_step(world, tmp_path, monkeypatch):
    """A loss that is no longer finite stops the run with a one-line error (exit 1), and nothing is written."""
    args = ["pretrain", "--instances", str(world / "instances.json"), "--images", str(world / "images"), "--out",
            str(tmp_path / "w.pt"), "--size", "16", "--channels", "4,4,4,8", "--steps", "20", "--batch-size", "4",
            "--precision", "float32"]
    # A loss gone to nan, as a far too high rate gives (--lr refuses the 1e30 that once made it so).
    cross_entropy = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: cross_entropy(*a, **k) * float("nan"))
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "loss is" in res.output and "at step" in res.output and "--lr" in res.output
    assert not (tmp_path / "w.pt").exists()
    res = CliRunner().invoke(main, [*args[:-1], "half"])
    assert res.exit_code == 2 and "--precision" in res.output


def test_pretrain_cli_rejects_bad_camera_share(world, tmp_path):
    res = CliRunner().invoke(main, ["pretrain", "--instances", str(world / "instances.json"), "--images",
                                    str(world / "images"), "--out", str(tmp_path / "w.pt"), "--camera", "1.5"])
    assert res.exit_code == 2 and "--camera" in res.output and not (tmp_path / "w.pt").exists()


def test_pretrain_cli_writes_loadable_weights(world, tmp_path):
    res = CliRunner().invoke(main, ["pretrain", "--instances", str(world / "instances.json"), "--images",
                                    str(world / "images"), "--out", str(tmp_path / "w.pt"), "--size", "32",
                                    "--channels", "8,16,16,32", "--steps", "2", "--batch-size", "4",
                                    "--camera", "0.5"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "w.pt.json").read_text())
    assert summary["steps"] == 2 and summary["classes"] == 3 and summary["camera"] == 0.5
    assert summary["precision"] in ("float32", "bfloat16 autocast")
    backbone = build_backbone("small", weights=tmp_path / "w.pt", small_channels=(8, 16, 16, 32), out_channels=16)
    saved = torch.load(tmp_path / "w.pt", weights_only=True)["model"]
    assert torch.equal(backbone.body.stem[0][0].weight, saved["stem.0.0.weight"])
    # the run's progress lines, results.csv (one row per log step) and curves
    assert "pretrain: step 2/2" in res.output and "crops/s" in res.output and "eta " in res.output
    rows = (tmp_path / "w.pt.results.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and "loss_classifier" in rows[0] and "train_acc" in rows[0] and len(rows) == 2
    assert cv2.imread(str(tmp_path / "w.pt.results.png")) is not None


def _slow_confusable_pairs(truth, named, num_classes, min_rate, min_errors, max_pairs):
    """The rule written out: every pair's mutual errors over its support, most confused first, classes once."""
    found = []
    for a in range(num_classes):
        for b in range(a + 1, num_classes):
            errors = sum(1 for t, n in zip(truth, named, strict=True) if (t, n) in ((a, b), (b, a)))
            support = sum(1 for t in truth if t in (a, b))
            if support and errors >= min_errors and errors / support >= min_rate:
                found.append((-errors / support, a, b))
    pairs, used = [], set()
    for neg_rate, a, b in sorted(found):
        if a not in used and b not in used and len(pairs) < max_pairs:
            used.update((a, b))
            pairs.append((a, b, -neg_rate))
    return pairs


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_confusable_pairs_match_the_rule_written_out(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 7, 300)
    named = truth.copy()
    flip = rng.random(300) < 0.3
    named[flip] = rng.integers(0, 7, int(flip.sum()))  # random confusions, some pairs more than others
    swap = (truth == 2) & (rng.random(300) < 0.5)
    named[swap] = 5  # a look-alike pair
    for min_rate, min_errors, max_pairs in ((0.05, 2, 8), (0.02, 1, 2), (0.5, 2, 8)):
        got = confusable_pairs(truth, named, 7, min_rate=min_rate, min_errors=min_errors, max_pairs=max_pairs)
        want = _slow_confusable_pairs(truth.tolist(), named.tolist(), 7, min_rate, min_errors, max_pairs)
        assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in want]
        np.testing.assert_allclose([r for *_, r in got], [r for *_, r in want])
    assert confusable_pairs(truth, named, 7)[0][:2] == (2, 5)
    assert confusable_pairs(truth, truth, 7) == []  # a perfect classifier confuses nothing


def test_specialist_sees_its_pair_balanced_and_is_deterministic(monkeypatch):
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, size=(30, 16, 16, 3), dtype=np.uint8)
    labels = np.repeat([0, 1, 2], [20, 6, 4])
    crops[:, 0, 0, 0] = labels  # each crop says its class in one pixel
    body = CropClassifier(3, (4, 8, 8, 8)).body.state_dict()
    seen = []
    real = specialists_module.augment_crops
    monkeypatch.setattr(specialists_module, "augment_crops",
                        lambda c, r, **kw: (seen.append(c[:, 0, 0, 0].copy()), real(c, r, **kw))[1])
    kwargs = dict(channels=(4, 8, 8, 8), norm="batch", steps=3, batch_size=8, lr=0.05, camera=0.5)
    a = train_specialist(crops, labels, (0, 2), body, seed=4, **kwargs)
    assert a.fc.out_features == 2 and not a.training
    for batch in seen:  # only the pair's crops, as many of each (the rarer class drawn again)
        assert sorted(batch.tolist()) == [0, 0, 0, 0, 2, 2, 2, 2]
    b = train_specialist(crops, labels, (0, 2), body, seed=4, **kwargs)
    c = train_specialist(crops, labels, (0, 2), body, seed=5, **kwargs)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.fc.weight, c.fc.weight)
    with pytest.raises(ValueError, match="no crops of class"):
        train_specialist(crops, labels, (0, 3), body, seed=4, **kwargs)


def test_pretrain_cli_writes_specialists_the_rescorer_loads(world, tmp_path):
    out = tmp_path / "new" / "w.pt"  # into a folder that does not exist yet, as the demo's pretrain/ stage does
    res = CliRunner().invoke(main, ["pretrain", "--instances", str(world / "instances.json"), "--images",
                                    str(world / "images"), "--out", str(out), "--size", "16",
                                    "--channels", "4,8,8,8", "--steps", "2", "--batch-size", "4",
                                    "--specialist-steps", "2", "--specialist-min-rate", "0.0001"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "new" / "w.pt.results.csv").is_file()
    tmp_path = tmp_path / "new"
    summary = json.loads((tmp_path / "w.pt.json").read_text())
    saved = torch.load(tmp_path / "w.pt", weights_only=True)
    assert summary["specialist_steps"] == 2 and len(saved["specialists"]) == len(summary["specialists"])
    for row, spec in zip(summary["specialists"], saved["specialists"], strict=True):
        assert row["categories"] == [saved["category_ids"][c] for c in spec["classes"]]
        assert 0 <= row["holdout_specialist"] <= 1 and row["confusion_rate"] >= 0.0001
    rescorer = CropRescorer.from_file(tmp_path / "w.pt", saved["category_ids"])
    assert len(rescorer.specialists) == len(saved["specialists"])
    res = CliRunner().invoke(main, ["pretrain", "--instances", str(world / "instances.json"), "--images",
                                    str(world / "images"), "--out", str(tmp_path / "x.pt"),
                                    "--specialist-steps", "-1"])
    assert res.exit_code == 2 and "--specialist-steps" in res.output and not (tmp_path / "x.pt").exists()


def test_confusable_pairs_puts_the_given_pairs_first():
    truth = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    named = np.array([0, 1, 2, 0, 1, 2, 0, 1, 3, 3])
    # counted by hand: crops of 0 or 1 (five) named as the other one: 0 -> 1 once, 1 -> 0 once; 1 or 2: 2 -> 1
    # once; 0 or 2 (six): 0 -> 2 once, 2 -> 0 once; 3 is never confused
    assert confusable_pairs(truth, named, 4, min_rate=0.01, min_errors=1) == [(0, 1, pytest.approx(2 / 5))]
    # given pairs lead whatever their rate; the confused ones fill up without reusing a class
    assert confusable_pairs(truth, named, 4, min_rate=0.01, min_errors=1, first=[(2, 3)]) == [
        (2, 3, 0.0), (0, 1, pytest.approx(2 / 5))]
    assert confusable_pairs(truth, named, 4, min_rate=0.01, min_errors=1, first=[(1, 3)]) == [
        (1, 3, 0.0), (0, 2, pytest.approx(2 / 6))]
    # max_pairs bounds the confused ones only: every given pair stays
    assert confusable_pairs(truth, named, 4, min_rate=0.01, max_pairs=1, first=[(1, 3), (0, 2)]) == [
        (1, 3, 0.0), (0, 2, pytest.approx(2 / 6))]
    assert confusable_pairs(truth[:0], named[:0], 4, first=[(0, 1)]) == [(0, 1, 0.0)]


def test_pretrain_cli_specialist_pairs_given_by_the_user(world, tmp_path):
    base = ["pretrain", "--instances", str(world / "instances.json"), "--images", str(world / "images"),
            "--size", "16", "--channels", "4,8,8,8", "--steps", "2", "--batch-size", "4", "--specialist-steps", "2"]
    # min rate 1.0 and at most one specialist: only the given pair can get it, confused or not
    res = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "w.pt"), "--specialist-pair", "9,3",
                                    "--specialist-min-rate", "1.0", "--max-specialists", "1"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "w.pt.json").read_text())
    assert [row["categories"] for row in summary["specialists"]] == [[3, 9]]
    for row in summary["specialists"]:  # measured on the pair's held-out crops, or None without any
        for key in ("holdout_generalist", "holdout_specialist"):
            assert (row[key] is None) == (row["holdout_crops"] == 0)
            assert row[key] is None or 0 <= row[key] <= 1
    saved = torch.load(tmp_path / "w.pt", weights_only=True)
    assert [saved["category_ids"][c] for c in saved["specialists"][0]["classes"]] == [3, 9]
    # with room for more, the confused pairs never reuse an SKU of the given one
    res = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "v.pt"), "--specialist-pair", "3,5",
                                    "--specialist-min-rate", "0.0001"])
    assert res.exit_code == 0, res.output
    cats = [c for row in json.loads((tmp_path / "v.pt.json").read_text())["specialists"] for c in row["categories"]]
    assert cats[:2] == [3, 5] and len(cats) == len(set(cats))
    for pairs, message in ((["3,3"], "two different category ids"), (["3,4"], "category id 4"),
                           (["3,9", "9,5"], "already in another pair"), (["3;9"], "not two category ids")):
        out = tmp_path / "bad.pt"
        res = CliRunner().invoke(main, [*base, "--out", str(out), *[a for p in pairs for a in ("--specialist-pair", p)]])
        assert res.exit_code == 2 and message in res.output, res.output
        assert not out.exists()


def test_pretrain_is_deterministic_given_its_seed(world, tmp_path):
    kwargs = dict(size=16, channels=(4, 8, 8, 8), steps=3, batch_size=4, camera=0.5, echo=False)
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        summary = pretrain_backbone(world / "instances.json", world / "images", tmp_path / f"{name}.pt", seed=seed,
                                    **kwargs)
        assert summary["steps"] == 3
        runs.append(torch.load(tmp_path / f"{name}.pt", weights_only=True)["model"])
    a, b, c = runs
    assert all(torch.equal(a[k], b[k]) and torch.isfinite(a[k].float()).all() for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
