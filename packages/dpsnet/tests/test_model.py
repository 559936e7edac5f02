"""Model: shapes, finite losses, eval outputs, ignore regions in the RPN, box head and counting view."""

import math

import pytest
import torch

from dpsnet import dpsnet_model
from dpsnet.backbone import build_backbone
from dpsnet.detection import agnostic_nms, box_ioa, fuse_views, mark_ignored
from dpsnet.model import parse_test_flips, split_ignore

TINY = dict(backbone="small", small_channels=(8, 16, 16, 32), fpn_channels=16, min_size=96, max_size=96,
            anchor_sizes=(16, 32, 64, 128, 256), rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50,
            rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, rpn_batch_size_per_image=32,
            box_batch_size_per_image=32, box_representation_size=32, count_channels=16)


def tiny_model(num_classes=4, **kw):
    torch.manual_seed(0)
    return dpsnet_model(num_classes, **{**TINY, **kw})


def batch():
    torch.manual_seed(1)
    images = [torch.rand(3, 96, 96), torch.rand(3, 80, 96)]
    targets = [
        {"boxes": torch.tensor([[10.0, 10, 40, 50], [50, 55, 90, 90], [0, 0, 30, 30]]),
         "labels": torch.tensor([1, 2, 3]), "iscrowd": torch.tensor([0, 0, 1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "iscrowd": torch.zeros(0)},
    ]
    return images, targets


def test_train_losses_finite_and_backward():
    model = tiny_model().train()
    images, targets = batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg",
                           "loss_density", "loss_count"}
    assert all(v.dim() == 0 and math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(p.grad.abs().sum().item() > 0 for p in model.counting_view.parameters())


def test_eval_outputs_per_image():
    model = tiny_model(count_class_of_label=[0, 0, 1, 0]).eval()
    images, _ = batch()
    with torch.no_grad():
        out = model(images, return_density=True)
    assert len(out) == 2
    for det, img in zip(out, images, strict=True):
        n = det["boxes"].shape[0]
        assert det["boxes"].shape == (n, 4) and det["labels"].shape == (n,) and det["scores"].shape == (n,)
        assert det["counts"].shape == (2,) and (det["counts"] >= 0).all()
        assert det["density"].shape[0] == 2
        if n:
            assert float(det["boxes"][:, 2].max()) <= img.shape[2] + 1e-3
            assert float(det["boxes"][:, 3].max()) <= img.shape[1] + 1e-3
    assert all((det["labels"] >= 1).all() for det in out)


def slow_agnostic_nms(boxes, scores, labels, thresh, decay=0.0):
    """Greedy NMS written out: visit by decreasing score, keep what overlaps no kept box above ``thresh``; the
    rest dropped, or (``decay > 0``) listed after with scores times ``decay``, everything by decreasing score."""
    kept = []
    for i in sorted(range(len(scores)), key=lambda k: -float(scores[k])):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        ok = True
        for j in kept:
            a1, b1, a2, b2 = (float(v) for v in boxes[j])
            inter = max(0.0, min(x2, a2) - max(x1, a1)) * max(0.0, min(y2, b2) - max(y1, b1))
            union = (x2 - x1) * (y2 - y1) + (a2 - a1) * (b2 - b1) - inter
            if inter / union > thresh:
                ok = False
                break
        if ok:
            kept.append(i)
    if not decay:
        return boxes[kept], scores[kept], labels[kept]
    rest = [i for i in range(len(scores)) if i not in kept]
    entries = [(float(scores[i]), i) for i in kept] + [(float(scores[i] * decay), i) for i in rest]
    entries = sorted(entries, key=lambda e: -e[0])
    idx = [i for _, i in entries]
    return boxes[idx], torch.tensor([e[0] for e in entries]), labels[idx]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("thresh", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("decay", [0.0, 0.01])
def test_agnostic_nms_matches_greedy_reference(seed, thresh, decay):
    g = torch.Generator().manual_seed(seed)
    n = 60
    xy = torch.rand(n, 2, generator=g) * 80
    wh = 5 + torch.rand(n, 2, generator=g) * 30
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[n // 2:] = boxes[: n - n // 2] + torch.rand(n - n // 2, 4, generator=g) * 4  # near-duplicates
    scores = (1 + torch.randperm(n, generator=g).float()) / n  # distinct scores: one greedy order
    labels = torch.randint(1, 5, (n,), generator=g)
    got = agnostic_nms(boxes, scores, labels, thresh, decay)
    want = slow_agnostic_nms(boxes, scores, labels, thresh, decay)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    kept = len(slow_agnostic_nms(boxes, scores, labels, thresh)[0])
    assert kept < n  # the near-duplicates were suppressed across labels
    assert len(got[0]) == (n if decay else kept)


def test_agnostic_nms_empty_and_bad_threshold():
    empty = agnostic_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert all(t.shape[0] == 0 for t in empty)
    assert agnostic_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5, 0.01)[0].shape \
        == (0, 4)
    with pytest.raises(ValueError, match="agnostic_nms_thresh"):
        tiny_model(box_agnostic_nms_thresh=1.5)
    with pytest.raises(ValueError, match="agnostic_nms_decay"):
        tiny_model(box_agnostic_nms_decay=1.0)


@pytest.mark.parametrize("decay", [0.0, 0.01])
def test_model_agnostic_nms_is_the_reference_on_its_per_class_output(decay):
    images, _ = batch()
    plain = tiny_model(box_score_thresh=0.0).eval()
    agnostic = tiny_model(box_score_thresh=0.0, box_agnostic_nms_thresh=0.4, box_agnostic_nms_decay=decay).eval()
    agnostic.load_state_dict(plain.state_dict())
    with torch.no_grad():
        out_plain, out_agn = plain(images), agnostic(images)
    suppressed = 0
    for p, a in zip(out_plain, out_agn, strict=True):
        want = slow_agnostic_nms(p["boxes"], p["scores"], p["labels"], 0.4, decay)
        assert torch.equal(a["boxes"], want[0]) and torch.equal(a["scores"], want[1])
        assert torch.equal(a["labels"], want[2]) and torch.equal(a["counts"], p["counts"])
        suppressed += int((a["scores"] < p["scores"].min()).sum()) if decay else len(p["boxes"]) - len(a["boxes"])
    assert suppressed > 0  # random weights give overlapping boxes of several classes


def _iou(a, b):
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def slow_fuse_views(boxes, scores, labels, views, num_views, thresh, decay, max_detections):
    """fuse_views written out: greedy heads by decreasing score, each detection in the group of the head it
    overlaps most, per group and class the mean over views of the view's best score, score-weighted boxes."""
    b = boxes.tolist()
    heads = []
    for i in sorted(range(len(b)), key=lambda k: -float(scores[k])):
        if all(_iou(b[i], b[h]) <= thresh for h in heads):
            heads.append(i)
    groups = {h: [] for h in heads}
    for i in range(len(b)):
        groups[max(heads, key=lambda h: (_iou(b[i], b[h]), -heads.index(h)))].append(i)
    out = []
    for h in heads:
        members = groups[h]
        total = sum(float(scores[i]) for i in members)
        box = [sum(b[i][j] * float(scores[i]) for i in members) / total for j in range(4)]
        per_class = {}
        for lab in sorted({int(labels[i]) for i in members}):
            best = [max([float(scores[i]) for i in members if int(labels[i]) == lab and int(views[i]) == v],
                        default=0.0) for v in range(num_views)]
            per_class[lab] = sum(best) / num_views
        top = max(per_class, key=lambda lab: (per_class[lab], -lab))
        for lab, score in per_class.items():
            if lab == top:
                out.append((score, box, lab))
            elif decay > 0:
                out.append((score * decay, box, lab))
    out = sorted(out, key=lambda e: -e[0])[:max_detections]
    return [e[1] for e in out], [e[0] for e in out], [e[2] for e in out]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("decay", [0.0, 0.01])
def test_fuse_views_matches_slow_reference(seed, decay):
    g = torch.Generator().manual_seed(seed)
    n_objects, num_views = 12, 3
    xy = torch.rand(n_objects, 2, generator=g) * 150
    wh = 10 + torch.rand(n_objects, 2, generator=g) * 30
    objects = torch.cat([xy, xy + wh], 1)
    boxes, views = [], []
    for v in range(num_views):  # each view sees most objects, jittered, some twice (look-alike labels)
        seen = torch.rand(n_objects, generator=g) < 0.8
        twice = torch.rand(n_objects, generator=g) < 0.3
        for rows in (seen, seen & twice):
            boxes.append(objects[rows] + torch.randn(int(rows.sum()), 4, generator=g))
            views.append(torch.full((int(rows.sum()),), v))
    boxes, views = torch.cat(boxes), torch.cat(views)
    scores = torch.rand(len(boxes), generator=g) * 0.95 + 0.05
    labels = torch.randint(1, 4, (len(boxes),), generator=g)
    got = fuse_views(boxes, scores, labels, views, num_views, 0.5, decay, max_detections=30)
    want = slow_fuse_views(boxes, scores, labels, views, num_views, 0.5, decay, 30)
    assert len(got[0]) == len(want[0]) <= 30
    assert torch.allclose(got[0], torch.tensor(want[0]).reshape(-1, 4), atol=1e-4)
    assert torch.allclose(got[1], torch.tensor(want[1]), atol=1e-6)
    assert got[2].tolist() == want[2]
    assert float(got[1].max()) <= float(scores.max())


def test_fuse_views_single_view_and_empty():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])
    scores, labels = torch.tensor([0.9, 0.6, 0.7]), torch.tensor([1, 2, 1])
    b, s, lab = fuse_views(boxes, scores, labels, torch.zeros(3, dtype=torch.int64), 1, 0.5, 0.0)
    assert s.tolist() == pytest.approx([0.9, 0.7]) and lab.tolist() == [1, 1]
    assert torch.allclose(b[0], (boxes[0] * 0.9 + boxes[1] * 0.6) / 1.5)  # the look-alike's box joins the group
    b, s, lab = fuse_views(boxes, scores, labels, torch.tensor([0, 1, 1]), 2, 0.5, 0.01)
    assert s.tolist() == pytest.approx([0.45, 0.35, 0.003])  # each view's best, halved; the look-alike decayed
    empty = fuse_views(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                       torch.zeros(0, dtype=torch.int64), 2, 0.5)
    assert [t.shape[0] for t in empty] == [0, 0, 0] and empty[0].shape == (0, 4)


@pytest.mark.parametrize("flips", ["hv", "h,v"])
def test_model_test_flips_fuse_the_flipped_views(flips):
    """With test_flips, eval is fuse_views over the plain model's outputs on the flipped images, boxes mapped
    back by hand; counts and density maps are the views' means (maps flipped back)."""
    images, _ = batch()
    plain = tiny_model(box_score_thresh=0.0, box_agnostic_nms_thresh=0.4, box_agnostic_nms_decay=0.01).eval()
    flipped = tiny_model(box_score_thresh=0.0, box_agnostic_nms_thresh=0.4, box_agnostic_nms_decay=0.01,
                         test_flips=flips, test_flip_iou=0.5).eval()
    flipped.load_state_dict(plain.state_dict())
    names = parse_test_flips(flips)
    dims = {"h": [2], "v": [1], "hv": [1, 2]}
    with torch.no_grad():
        got = flipped(images, return_density=True)
        for img, det in zip(images, got, strict=True):
            height, width = img.shape[1:]
            views = [plain([img], return_density=True)[0]] + [
                plain([torch.flip(img, dims[n])], return_density=True)[0] for n in names]
            boxes, counts, density = [views[0]["boxes"]], [views[0]["counts"]], [views[0]["density"]]
            for name, view in zip(names, views[1:], strict=True):
                x1, y1, x2, y2 = view["boxes"].unbind(1)
                if "h" in name:
                    x1, x2 = width - x2, width - x1
                if "v" in name:
                    y1, y2 = height - y2, height - y1
                boxes.append(torch.stack([x1, y1, x2, y2], 1))
                counts.append(view["counts"])
                density.append(torch.flip(view["density"], dims[name]))  # [C, H, W] like the image
            want = fuse_views(torch.cat(boxes), torch.cat([v["scores"] for v in views]),
                              torch.cat([v["labels"] for v in views]),
                              torch.cat([torch.full((len(v["scores"]),), i) for i, v in enumerate(views)]),
                              len(views), 0.5, 0.01, 100)
            assert len(det["boxes"]) > 0
            assert torch.allclose(det["boxes"], want[0], atol=1e-3) and torch.allclose(det["scores"], want[1])
            assert torch.equal(det["labels"], want[2])
            assert torch.allclose(det["counts"], torch.stack(counts).mean(0), atol=1e-5)
            assert torch.stack(density).max() > 0  # a live map (the old head's were all clamped to 0 here)
            assert torch.allclose(det["density"], torch.stack(density).mean(0), atol=1e-8, rtol=1e-4)
            assert float(det["boxes"][:, 2].max()) <= width + 1e-3 and float(det["boxes"][:, 0].min()) >= -1e-3


def test_test_flips_errors():
    assert parse_test_flips("") == () and parse_test_flips(" hv , h") == ("hv", "h") and parse_test_flips(["v"]) == ("v",)
    with pytest.raises(ValueError, match="test_flips"):
        tiny_model(test_flips="x")
    with pytest.raises(ValueError, match="test_flips"):
        tiny_model(test_flips="h,h")
    with pytest.raises(ValueError, match="test_flip_iou"):
        tiny_model(test_flip_iou=0.0)


def test_rpn_levels_and_anchor_sizes_per_level():
    """The RPN sees only model.rpn_levels, with the anchor sizes split evenly over them; the box head and the
    counting view still get every level."""
    model = tiny_model(rpn_levels=["1", "2", "3", "pool"], anchor_sizes=[16, 32, 64, 96, 128, 192, 256, 384])
    assert model.rpn.anchor_generator.sizes == ((16, 32), (64, 96), (128, 192), (256, 384))
    assert model.rpn.anchor_generator.num_anchors_per_location() == [6, 6, 6, 6]
    seen = {}

    def rpn_head_inputs(_module, inputs, _output):
        seen["shapes"] = [tuple(x.shape[-2:]) for x in inputs[0]]

    def backbone_outputs(_module, _inputs, output):
        seen["levels"] = {k: tuple(v.shape[-2:]) for k, v in output.items()}

    model.rpn.head.register_forward_hook(rpn_head_inputs)
    model.backbone.register_forward_hook(backbone_outputs)
    images, targets = batch()
    losses = model.train()(images, targets)
    assert all(math.isfinite(v.item()) for v in losses.values())
    assert seen["shapes"] == [seen["levels"][k] for k in ("1", "2", "3", "pool")]
    with pytest.raises(ValueError, match="split evenly"):
        tiny_model(rpn_levels=["1", "2", "3", "pool"], anchor_sizes=[16, 32, 64, 128, 256])
    with pytest.raises(ValueError, match="rpn_levels"):
        tiny_model(rpn_levels=["1", "9"], anchor_sizes=[16, 32])


def test_channels_last_gives_the_same_outputs():
    images, targets = batch()
    plain = tiny_model(box_score_thresh=0.0).eval()
    fast = tiny_model(box_score_thresh=0.0, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for a, b in zip(plain(images), fast(images), strict=True):
            assert a["boxes"].shape == b["boxes"].shape
            torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=1e-4)
            torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(a["counts"], b["counts"], atol=1e-4, rtol=1e-4)
    torch.manual_seed(3)
    loss_plain = plain.train()(images, targets)
    torch.manual_seed(3)
    loss_fast = fast.train()(images, targets)
    for key, value in loss_plain.items():
        torch.testing.assert_close(value, loss_fast[key], atol=1e-4, rtol=1e-4)


def _off_bf16_grid(boxes):
    return bool((boxes != boxes.bfloat16().float()).any())


def test_bf16_autocast_decodes_boxes_in_float32():
    """Under bfloat16 autocast the heads' deltas come back in float32, so proposals and detections are decoded
    at full precision (torchvision decodes in the deltas' dtype: bfloat16 would put every box on a grid of
    0.5 px at these sizes, 2 px at 256-512). Losses and outputs stay close to float32's."""
    images, targets = batch()
    model = tiny_model(box_score_thresh=0.0).eval()
    proposals = []
    model.rpn.register_forward_hook(lambda module, args, output: proposals.append(torch.cat(output[0])))
    with torch.no_grad():
        plain = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(images)
    assert all(p.dtype == torch.float32 for p in proposals)
    assert _off_bf16_grid(torch.cat(proposals[len(proposals) // 2:]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the counting view stays float32
        features = model.backbone(torch.rand(2, 3, 64, 64))
        assert model.counting_view(features, (64, 64)).dtype == torch.float32
    for a, b in zip(plain, mixed, strict=True):
        assert b["boxes"].dtype == b["scores"].dtype == b["counts"].dtype == torch.float32
        assert len(b["boxes"]) > 0 and _off_bf16_grid(b["boxes"])
        torch.testing.assert_close(b["counts"], a["counts"], atol=0.05, rtol=0.05)
    torch.manual_seed(3)
    loss_plain = model.train()(images, targets)
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_mixed = model(images, targets)
    assert set(loss_mixed) == set(loss_plain)
    for key, value in loss_plain.items():
        assert loss_mixed[key].dtype == torch.float32, key
        torch.testing.assert_close(loss_mixed[key], value, atol=0.05, rtol=0.1)
    sum(loss_mixed.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_training_needs_targets():
    with pytest.raises(ValueError, match="targets"):
        tiny_model().train()([torch.rand(3, 64, 64)])


def test_count_class_mapping_length_checked():
    with pytest.raises(ValueError, match="count_class_of_label"):
        tiny_model(count_class_of_label=[0, 1])


def test_count_class_mapping_range_checked():
    # checked once at construction: the training step renders its targets without a per-step range check
    with pytest.raises(ValueError, match=r"num_count_classes=2\)"):
        tiny_model(count_class_of_label=[0, 0, 1, 2], num_count_classes=2)
    with pytest.raises(ValueError, match="count_class_of_label should be in"):
        tiny_model(count_class_of_label=[0, -1, 0, 1])


@pytest.mark.parametrize("name", ["resnet18"])
def test_resnet_fpn_builds_and_loads_local_weights(tmp_path, name):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    weights = resnet18(weights=None).state_dict()
    torch.save(weights, tmp_path / "r18.pth")
    backbone = build_backbone(name, weights=tmp_path / "r18.pth")
    assert torch.equal(backbone.body.conv1.weight, weights["conv1.weight"])
    feats = backbone(torch.rand(1, 3, 64, 64))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert [f.shape[-1] for f in feats.values()] == [16, 8, 4, 2, 1]
    assert not backbone.body.conv1.weight.requires_grad and backbone.body.layer4[0].conv1.weight.requires_grad


def test_missing_weights_file_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        build_backbone("small", weights=tmp_path / "nope.pth")


def test_small_backbone_is_small():
    backbone = build_backbone("small")
    assert sum(p.numel() for p in backbone.body.parameters()) < 1.5e6
    assert backbone.out_channels == 64


def test_box_ioa_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(20, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + torch.rand(20, 2, generator=g) * 30], 1)
    regions = boxes[:5].flip(0) + 3
    ioa = box_ioa(boxes, regions)
    for i, b in enumerate(boxes.tolist()):
        for j, r in enumerate(regions.tolist()):
            iw = max(0.0, min(b[2], r[2]) - max(b[0], r[0]))
            ih = max(0.0, min(b[3], r[3]) - max(b[1], r[1]))
            assert ioa[i, j].item() == pytest.approx(iw * ih / ((b[2] - b[0]) * (b[3] - b[1])), rel=1e-5)


def test_mark_ignored_only_touches_background_inside():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [5, 0, 15, 10]])
    labels = torch.tensor([0.0, 1.0, 0.0, 0.0])
    out = mark_ignored(labels, boxes, torch.tensor([[0.0, 0, 10, 10]]), 0.5)
    assert out.tolist() == [-1.0, 1.0, 0.0, -1.0]  # the last one is exactly half inside
    assert mark_ignored(labels, boxes, torch.zeros(0, 4), 0.5) is labels


def test_rpn_anchors_inside_ignore_region_are_neither_fg_nor_bg():
    model = tiny_model().train()
    anchors = [torch.tensor([[0.0, 0, 16, 16], [60, 60, 76, 76], [10, 10, 40, 50], [4, 4, 20, 20]])]
    crowd = {"boxes": torch.tensor([[10.0, 10, 40, 50], [0, 0, 30, 30]]), "labels": torch.tensor([1, 2]),
             "iscrowd": torch.tensor([0, 1])}
    labels, _ = model.rpn.assign_targets_to_anchors(anchors, split_ignore([crowd]))
    assert labels[0].tolist() == [-1.0, 0.0, 1.0, -1.0]
    plain = {"boxes": crowd["boxes"][:1], "labels": crowd["labels"][:1]}
    labels, _ = model.rpn.assign_targets_to_anchors(anchors, split_ignore([plain]))
    assert labels[0].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_box_head_never_samples_proposals_inside_ignore_region():
    model = tiny_model().train()
    torch.manual_seed(0)
    xy = torch.rand(200, 2) * 80
    proposals = [torch.cat([xy, xy + 8 + torch.rand(200, 2) * 20], 1)]
    targets = split_ignore([{"boxes": torch.tensor([[50.0, 50, 90, 90], [0, 0, 40, 40]]),
                             "labels": torch.tensor([1, 2]), "iscrowd": torch.tensor([0, 1])}])
    sampled, _, labels, _ = model.roi_heads.select_training_samples(proposals, targets)
    inside = box_ioa(sampled[0], torch.tensor([[0.0, 0, 40, 40]]))[:, 0] >= 0.5
    assert inside.sum() == 0 or (labels[0][inside] > 0).all()
    assert (labels[0] >= 0).all() and (labels[0] == 0).any()
    # without the ignore region, those proposals are sampled as background
    targets[0]["ignore_boxes"] = torch.zeros(0, 4)
    sampled, _, labels, _ = model.roi_heads.select_training_samples([proposals[0].clone()], targets)
    inside = box_ioa(sampled[0], torch.tensor([[0.0, 0, 40, 40]]))[:, 0] >= 0.5
    assert (labels[0][inside] == 0).any()


def test_counting_view_ignores_ignore_regions():
    """The density and count losses do not depend on the prediction inside an ignore region, except where a
    labelled box overlaps it (its product keeps its supervision)."""
    from dpsnet.counting import ignore_mask

    model = tiny_model().train()
    images, targets = batch()
    batch_t, targets_t = model.transform(images, targets)
    det_targets = split_ignore(targets_t)
    features = model.backbone(batch_t.tensors)
    density = model.counting_view(features, tuple(batch_t.tensors.shape[-2:])).detach().requires_grad_(True)
    losses = model.counting_losses(density, det_targets)
    sum(losses.values()).backward()
    stride = model.counting_view.stride
    x2, y2 = (det_targets[0]["ignore_boxes"][0, 2:] / stride).floor().int().tolist()
    ignored = ignore_mask([t["ignore_boxes"] for t in det_targets], tuple(density.shape[-2:]), stride)[0, 0] == 0
    masked = ignore_mask([t["ignore_boxes"] for t in det_targets], tuple(density.shape[-2:]), stride,
                         [t["boxes"] for t in det_targets])[0, 0] == 0
    assert masked.any() and (ignored & ~masked).any()  # the labelled box [10, 10, 40, 50] overlaps the ignore box
    assert density.grad[0][:, masked].abs().max() == 0
    assert density.grad[0][:, ignored & ~masked].abs().sum() > 0
    assert density.grad[0, :, : y2 - 1, : x2 - 1].abs().sum() > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_roi_pool_modes_agree(seed):
    from dpsnet.detection import KernelRoIPool

    g = torch.Generator().manual_seed(seed)
    feats = {str(i): torch.rand(2, 4, 32 >> i, 32 >> i, generator=g) for i in range(4)}
    boxes = []
    for _ in range(2):
        xy = torch.rand(9, 2, generator=g) * 80
        boxes.append(torch.cat([xy, xy + 4 + torch.rand(9, 2, generator=g) * 100], 1))
    shapes = [(128, 128), (120, 128)]
    outs = {m: KernelRoIPool(mode=m)(feats, boxes, shapes) for m in ("auto", "aco", "torchvision", "gather")}
    torch.testing.assert_close(outs["aco"], outs["torchvision"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs["gather"], outs["torchvision"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs["auto"], outs["gather"], rtol=0, atol=0)  # CPU, fixed sampling: the gather
    adaptive = KernelRoIPool(sampling_ratio=0)  # adaptive sampling on CPU: the compiled op
    torch.testing.assert_close(adaptive(feats, boxes, shapes), KernelRoIPool(sampling_ratio=0, mode="torchvision")(
        feats, boxes, shapes), rtol=0, atol=0)
    with pytest.raises(ValueError, match="mode"):
        KernelRoIPool(mode="fast")


def _pool_case(seed, levels=4, channels_last=False):
    """Pyramid features of two images and boxes with the edge cases: partly or wholly outside the image,
    thinner than a pixel, and an image without boxes."""
    g = torch.Generator().manual_seed(seed)
    feats = {}
    for i in range(levels):
        f = torch.randn(3, 5, 48 >> i, 40 >> i, generator=g)
        feats[str(i)] = (f.contiguous(memory_format=torch.channels_last) if channels_last else f).requires_grad_()
    boxes = []
    for n in (14, 0, 9):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([190.0, 230.0]) - 30
        wh = torch.rand(n, 2, generator=g) ** 2 * 140
        wh[:2] = torch.tensor([[0.3, 20.0], [25.0, 0.2]])[: len(wh)]  # sub-pixel sides
        boxes.append(torch.cat([xy, xy + wh], 1))
    return feats, boxes, [(192, 160), (180, 150), (192, 156)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sampling_ratio", [1, 2])
@pytest.mark.parametrize("levels", [1, 4])
def test_gather_roi_pool_matches_torchvision_forward_and_backward(seed, sampling_ratio, levels):
    """The gather pooler against torchvision's MultiScaleRoIAlign (an independent implementation): outputs and
    the gradients of the pyramid levels, for one and several levels, with boxes outside and below a pixel."""
    from dpsnet.detection import KernelRoIPool

    results = []
    for mode in ("torchvision", "gather"):
        feats, boxes, shapes = _pool_case(seed, levels, channels_last=mode == "gather")
        pool = KernelRoIPool(tuple(feats), sampling_ratio=sampling_ratio, mode=mode)
        out = pool(feats, boxes, shapes)
        weight = torch.linspace(-1, 1, out.numel()).view_as(out)
        grads = torch.autograd.grad((out * weight).sum(), list(feats.values()))
        results.append((out, grads))
    (ref, ref_grads), (out, grads) = results
    assert out.shape == ref.shape == (23, 5, 7, 7)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_gather_roi_pool_is_deterministic_under_bf16_autocast():
    """Same inputs, same outputs and gradients, bit for bit, with bfloat16 levels under autocast (float32 out)."""
    from dpsnet.detection import KernelRoIPool

    runs = []
    for _ in range(2):
        feats, boxes, shapes = _pool_case(3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = {k: v.bfloat16() for k, v in feats.items()}
            out = KernelRoIPool(tuple(feats), sampling_ratio=1, mode="gather")(half, boxes, shapes)
        assert out.dtype == torch.float32
        runs.append((out, torch.autograd.grad(out.square().sum(), list(feats.values()))))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=0)
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_counting_head_norm_makes_maps_independent_of_the_batch():
    """The head normalises before its ReLUs (eval: running statistics, so an image's maps do not depend on its
    batch); checkpoints of the retired plain head are refused by dpsnet.checkpoint (test_checkpoint.py)."""
    model = tiny_model().eval()
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.counting_view.convs) == 2
    images, _ = batch()
    with torch.no_grad():
        together = model(images, return_density=True)
        alone = model([images[1]], return_density=True)[0]
    torch.testing.assert_close(together[1]["density"], alone["density"])
    for retired in ({"count_norm": "none"}, {"count_head": "factorized"}, {"class_loss_weight": 1.0}):
        with pytest.raises(TypeError, match=next(iter(retired))):
            tiny_model(**retired)


def test_box_logits_for_distillation_come_from_the_forward():
    """return_box_logits: the losses as without it (same samplers' draws), plus the batch, the sampled proposals
    and their class logits, which the box head's own classifier gives on those proposals."""
    model = tiny_model().train()
    for m in model.modules():  # batch norm in eval mode: a second forward computes the same features
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    images, targets = batch()
    torch.manual_seed(4)
    plain = model(images, targets)
    torch.manual_seed(4)
    losses, box_head = model(images, targets, return_box_logits=True)
    assert set(losses) == set(plain) and all(torch.equal(losses[k], plain[k]) for k in plain)
    assert len(box_head.proposals) == 2 and box_head.class_logits.shape == (sum(map(len, box_head.proposals)), 4)
    with torch.no_grad():
        features = model.backbone(box_head.images.tensors)
        pooled = model.roi_heads.box_roi_pool(features, box_head.proposals, box_head.images.image_sizes)
        want = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))[0]
    torch.testing.assert_close(box_head.class_logits.detach(), want, rtol=1e-4, atol=1e-5)
    assert box_head.class_logits.requires_grad
    model.train_counting_only()
    with pytest.raises(ValueError, match="return_box_logits"):
        model(images, targets, return_box_logits=True)


def _slow_counting_view(view, features, padded_size):
    """The counting view written out level by level: each level's 1x1 projection, bilinearly resized on its own
    to the map (align_corners=False), summed, then the head."""
    import torch.nn.functional as F

    size = (math.ceil(padded_size[0] / view.stride), math.ceil(padded_size[1] / view.stride))
    fused = 0
    for proj, key in zip(view.projections, view.levels, strict=True):
        fused = fused + F.interpolate(proj(features[key].float()), size=size, mode="bilinear", align_corners=False)
    return view.predictor(view.convs(fused))


def test_counting_view_fuses_p2_to_p6_at_p3_as_the_slow_reference():
    """model.count_levels with P6 ("pool"): the released DPSNet's counting view fuses P2-P6 at P3 (stride 8)."""
    levels = ["0", "1", "2", "3", "pool"]
    model = tiny_model(count_levels=levels, count_stride=8).eval()
    images, _ = batch()
    with torch.no_grad():
        transformed, _ = model.transform(images)
        features = model.backbone(transformed.tensors)
        padded = tuple(transformed.tensors.shape[-2:])
        fast = model.counting_view(features, padded)
        slow = _slow_counting_view(model.counting_view, features, padded)
    assert [features[k].shape[-1] for k in levels] == [24, 12, 6, 3, 2]  # strides 4 .. 64 of a 96 px batch
    assert fast.shape == (2, 3, 12, 12)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    losses = model.train()(*batch())
    assert math.isfinite(losses["loss_density"].item()) and math.isfinite(losses["loss_count"].item())
    for bad in (["1", "9"], ["1", "1"], []):
        with pytest.raises(ValueError, match="count_levels should be distinct pyramid levels"):
            tiny_model(count_levels=bad)


def test_sigma_rule_short_side_reaches_the_density_targets():
    """The released rule gives a thin box a narrower Gaussian than the area rule; each box still sums to 1."""
    from dpsnet.counting import density_targets

    boxes, classes = [torch.tensor([[8.0, 8.0, 168.0, 56.0]])], [torch.tensor([0])]  # sigma 2.28 vs 1.25 px
    area = density_targets(boxes, classes, (12, 24), num_classes=1, stride=8, sigma_scale=5 / 24)
    short = density_targets(boxes, classes, (12, 24), num_classes=1, stride=8, sigma_scale=5 / 24,
                            sigma_rule="short_side")
    torch.testing.assert_close(short.sum(), torch.tensor(1.0))
    assert short.max() > area.max()
    model = tiny_model(sigma_rule="short_side", sigma_scale=5 / 24)
    assert model.sigma_rule == "short_side"
    with pytest.raises(ValueError, match="sigma_rule"):
        tiny_model(sigma_rule="diagonal")
