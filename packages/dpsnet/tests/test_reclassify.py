"""The crop classifier's second opinion: crops, the score rule, the model hook and the predict option."""

import json

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torchvision.ops import roi_align

from dpsnet.classifier import CropClassifier
from dpsnet.cli import main
from dpsnet.config import make_config
from dpsnet.inference import CropRescorer, crop_accuracy, crop_boxes, model_from_checkpoint
from dpsnet.training import train
from rpc_metrics.io import read_pool, read_results

from .conftest import tiny_overrides


def _slow_crop_box(box, height, width, margin=0.1):
    """exemplar_crops' square, written out for one box (without its int truncation)."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    lx, ly = max(0.0, cx - side / 2), max(0.0, cy - side / 2)
    return [lx, ly, max(min(width, cx + side / 2), lx + 1), max(min(height, cy + side / 2), ly + 1)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crop_boxes_match_the_training_crops_geometry(seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(20, 2, generator=g) * 120 - 10  # some beyond the borders
    boxes = torch.cat([xy, xy + 1 + torch.rand(20, 2, generator=g) * 60], 1)
    got = crop_boxes(boxes, 90, 110)
    want = torch.tensor([_slow_crop_box(b.tolist(), 90, 110) for b in boxes])
    torch.testing.assert_close(got, want)


def _rescorer(num_classes=3, power=0.5, size=16):
    torch.manual_seed(0)
    return CropRescorer(CropClassifier(num_classes, (4, 8, 8, 8)), torch.tensor([-1, 0, 1, 2]), power=power,
                        size=size)


@pytest.mark.parametrize("seed", [0, 3])
def test_crops_are_bilinear_resizes_of_the_cut_squares(seed, monkeypatch):
    """Upsampled crops of integer squares equal OpenCV's bilinear resize of the cut region (pixel centres at
    +0.5 in both), away from the crop's border, where OpenCV replicates the cut's edge."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.random((60, 70, 3)).astype(np.float32), (5, 5), 2)
    rescorer = _rescorer(size=16)
    seen = {}
    monkeypatch.setattr(rescorer.classifier, "forward", lambda x: seen.setdefault("x", x)[:, :3, 0, 0])
    boxes = torch.tensor([[10.0, 12.0, 20.0, 22.0], [30.0, 5.0, 40.0, 15.0]])
    rescorer.probabilities(torch.from_numpy(image).permute(2, 0, 1)[None], [boxes], [(60, 70)])
    crops = seen["x"][:2]  # rotation 0 of both
    for crop, box in zip(crops, crop_boxes(boxes, 60, 70), strict=True):
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        assert torch.allclose(box, torch.tensor([x1, y1, x2, y2], dtype=box.dtype))  # integer squares here
        want = cv2.resize(image[y1:y2, x1:x2], (16, 16), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(crop.permute(1, 2, 0).numpy()[2:-2, 2:-2], want[2:-2, 2:-2], atol=1e-5)


def test_score_rule_power_and_unknown_labels(monkeypatch):
    rescorer = _rescorer(power=0.5)
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    monkeypatch.setattr(rescorer, "probabilities", lambda *a: probs)
    rescorer.class_of_label = torch.tensor([-1, 0, 1, -1])  # label 3: unknown to the classifier
    scores = [torch.tensor([0.9, 0.5]), torch.tensor([0.6])]
    labels = [torch.tensor([1, 2]), torch.tensor([3])]
    out = rescorer(torch.zeros(2, 3, 8, 8), [torch.zeros(2, 4), torch.zeros(1, 4)], scores, labels, [(8, 8)] * 2)
    torch.testing.assert_close(out[0], torch.tensor([0.9 * 0.7 ** 0.5, 0.5 * 0.1 ** 0.5]))
    torch.testing.assert_close(out[1], torch.tensor([0.6]))
    empty = _rescorer()(torch.zeros(1, 3, 8, 8), [torch.zeros(0, 4)], [torch.zeros(0)],
                        [torch.zeros(0, dtype=torch.int64)], [(8, 8)])  # no detections: no crops, no scores
    assert len(empty) == 1 and empty[0].shape == (0,)
    rescorer.power = 0.0
    assert rescorer(torch.zeros(2, 3, 8, 8), [torch.zeros(2, 4), torch.zeros(1, 4)], scores, labels,
                    [(8, 8)] * 2) is scores


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(make_config("cpu-small", tiny_overrides(world, **{"model.box_score_thresh": 0.0,
                                                             "model.box_agnostic_nms_thresh": 0.0,
                                                             "model.test_flips": ""})), out, echo=False)
    res = CliRunner().invoke(main, ["pretrain", "--instances", str(world / "instances.json"), "--images",
                                    str(world / "images"), "--out", str(out / "crops.pt"), "--size", "16",
                                    "--channels", "4,8,8,8", "--steps", "2", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    return out / "last.pt", out / "crops.pt"


def test_rescore_argument_rescales_the_box_heads_scores(world, trained):
    checkpoint, crops = trained
    model, categories = model_from_checkpoint(checkpoint)
    images = [torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    plain = model(images)
    rescorer = CropRescorer.from_file(crops, categories.category_ids, power=1.0)
    rescored = model(images, rescore=rescorer)
    for p, r, img in zip(plain, rescored, images, strict=True):
        # no agnostic NMS here: the same detections, each score times its crop's probability of its label
        assert len(p["scores"]) == len(r["scores"]) > 0
        probs = rescorer.probabilities(img[None], [p["boxes"]], [(96, 96)])
        want = p["scores"] * probs.gather(1, rescorer.class_of_label[p["labels"]][:, None]).squeeze(1)
        order = want.argsort(descending=True, stable=True)
        torch.testing.assert_close(r["scores"], want[order], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(r["boxes"], p["boxes"][order])
    torch.testing.assert_close(model(images)[0]["scores"], plain[0]["scores"])  # nothing stays behind


def test_predict_option_and_its_errors(world, trained, tmp_path):
    checkpoint, crops = trained

    def predict(*extra):
        return CliRunner().invoke(main, ["predict", "--checkpoint", str(checkpoint), "--instances",
                                         str(world / "pool.json"), "--images", str(world / "images"),
                                         "--out-results", str(tmp_path / "r.json"), "--out-counts",
                                         str(tmp_path / "c.json"), "--quiet", *extra])

    assert predict("--reclassifier-power", "0").exit_code == 0  # the option alone: no classifier, no change
    plain = read_results(tmp_path / "r.json", gt=read_pool(world / "pool.json"))
    res = predict("--reclassifier", str(crops))
    assert res.exit_code == 0, res.output
    rescored = read_results(tmp_path / "r.json", gt=read_pool(world / "pool.json"))
    assert len(rescored) == len(plain) and sum(r["score"] for r in rescored) < sum(r["score"] for r in plain)
    old = tmp_path / "old.pt"  # a body-only weights file, as older `dpsnet pretrain` wrote
    saved = torch.load(crops, weights_only=True)
    torch.save({"model": saved["model"], "channels": saved["channels"]}, old)
    res = predict("--reclassifier", str(old))
    assert res.exit_code == 2 and "run `dpsnet pretrain` again" in res.output and str(old) in res.output
    res = predict("--reclassifier", str(tmp_path / "missing.pt"))
    assert res.exit_code == 2 and "missing.pt" in res.output
    summary = json.loads(crops.with_name("crops.pt.json").read_text())
    assert summary["size"] == 16


def test_kd_learner_predicts_with_the_reclassifier(world, trained, tmp_path):
    from dpsnet.kd import Learner

    checkpoint, crops = trained
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        Learner("cpu-small", reclassifier=str(tmp_path / "nope.pt"))
    learner = Learner("cpu-small", batch_size=2, device="cpu", reclassifier=str(crops), reclassifier_power=0.7)
    got = learner.predict(checkpoint, world / "pool.json", world / "images", out_dir=tmp_path / "kd")
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(checkpoint), "--instances", str(world / "pool.json"),
                                    "--images", str(world / "images"), "--out-results", str(tmp_path / "r.json"),
                                    "--out-counts", str(tmp_path / "c.json"), "--batch-size", "2", "--device", "cpu",
                                    "--reclassifier", str(crops), "--reclassifier-power", "0.7", "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads(got.results.read_text()) == json.loads((tmp_path / "r.json").read_text())


def test_crop_accuracy_matches_a_box_by_box_reference(world, trained, tmp_path):
    from dpsnet.data import read_image

    _, crops = trained
    gt = json.loads((world / "instances.json").read_text())
    cats = sorted(c["id"] for c in gt["categories"])
    rescorer = CropRescorer.from_file(crops, cats)
    files = {im["id"]: im["file_name"] for im in gt["images"]}
    want = {}
    for ann in gt["annotations"]:
        if ann["iscrowd"]:
            continue
        image = torch.from_numpy(read_image(world / "images" / files[ann["image_id"]])).permute(2, 0, 1)[None]
        x, y, w, h = ann["bbox"]
        probs = rescorer.probabilities(image, [torch.tensor([[x, y, x + w, y + h]])], [tuple(image.shape[2:])])
        named = cats[int(probs.argmax())]
        want[(ann["category_id"], named)] = want.get((ann["category_id"], named), 0) + 1
    got = crop_accuracy(crops, world / "instances.json", world / "images")
    products = sum(want.values())
    right = sum(n for (t, p), n in want.items() if t == p)
    assert got["products"] == products and got["right"] == right
    assert got["accuracy"] == pytest.approx(right / products)
    assert {(t, p): n for t, p, n in got["confusions"]} == {k: n for k, n in want.items() if k[0] != k[1]}
    counts = [n for _, _, n in got["confusions"]]
    assert counts == sorted(counts, reverse=True)

    def cli(*args):
        return CliRunner().invoke(main, ["crop-accuracy", *args])

    res = cli("--classifier", str(crops), "--instances", str(world / "instances.json"), "--images",
              str(world / "images"), "--json-out", str(tmp_path / "acc.json"))
    assert res.exit_code == 0, res.output
    assert f"{right} of {products} products named right" in res.output
    assert json.loads((tmp_path / "acc.json").read_text())["right"] == right
    res = cli("--classifier", str(tmp_path / "none.pt"), "--instances", str(world / "instances.json"),
              "--images", str(world / "images"))
    assert res.exit_code == 2 and "none.pt" in res.output
    bad = dict(gt, images=[dict(gt["images"][0], file_name="../escape.jpg"), *gt["images"][1:]])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    res = cli("--classifier", str(crops), "--instances", str(tmp_path / "bad.json"), "--images", str(world / "images"))
    assert res.exit_code == 2 and "leaves the image folder" in res.output


def test_specialists_split_their_pairs_probability(monkeypatch):
    """The generalist's probability of a pair is shared out as the specialist sees the crop (four rotations
    averaged); crops that give the pair under 1% and classes outside it keep the generalist's numbers."""
    torch.manual_seed(0)
    general = CropClassifier(4, (4, 8, 8, 8))
    special = CropClassifier(2, (4, 8, 8, 8))
    rescorer = CropRescorer(general, torch.tensor([-1, 0, 1, 2, 3]), size=8, specialists=[([1, 3], special)])
    # Logits from the crops' pixel values, so that each crop and rotation gets its own numbers.
    base = torch.tensor([[2.0, 0.5, 0.0, 1.0], [0.0, -9.0, 3.0, -9.0], [0.2, 1.0, 0.1, 1.5]])
    monkeypatch.setattr(general, "forward", lambda x: base.repeat(4, 1)[: len(x)] + x[:, :1, 0, 0])
    spec_calls = []

    def spec_forward(x):
        spec_calls.append(len(x))
        return torch.stack([x[:, 0, 0, 0] * 3, x[:, 0, -1, -1] * 3], dim=1)

    monkeypatch.setattr(special, "forward", spec_forward)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(1, 3, 40, 40, generator=g)
    boxes = [torch.tensor([[2.0, 2.0, 12.0, 12.0], [15.0, 3.0, 30.0, 18.0], [5.0, 20.0, 25.0, 38.0]])]
    got = rescorer.probabilities(images, boxes, [(40, 40)])
    # The same numbers by hand: the generalist's average, then the pair's mass split by the specialist's average.
    rescorer.specialists, rescorer.specialist_classes = torch.nn.ModuleList(), []
    plain = rescorer.probabilities(images, boxes, [(40, 40)])
    crops = roi_align(images, [crop_boxes(boxes[0], 40, 40)], (8, 8), spatial_scale=1.0, sampling_ratio=0,
                      aligned=True)
    want = plain.clone()
    for i in range(3):
        mass = float(plain[i, 1] + plain[i, 3])
        if mass < 0.01:
            continue
        views = torch.stack([torch.rot90(crops[i], k, (1, 2)) for k in range(4)])
        split = torch.softmax(spec_forward(views), dim=1).mean(dim=0)
        want[i, 1], want[i, 3] = mass * split[0], mass * split[1]
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(3))
    assert float(plain[1, 1] + plain[1, 3]) < 0.01 and spec_calls[0] == 4 * 2  # crop 1 skipped
    torch.testing.assert_close(got[:, [0, 2]], plain[:, [0, 2]])
