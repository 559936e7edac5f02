"""Counting view maths: density targets integrate to box counts, masks, losses, counts cropped to the image."""

import pytest
import torch

from dpsnet.counting import CountingView, crop_counts, density_loss, density_targets, ignore_mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_density_integrals_equal_box_counts(seed):
    g = torch.Generator().manual_seed(seed)
    boxes, classes = [], []
    for n in (5, 0, 9):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([120.0, 90.0]) - 10  # some centres near/over borders
        boxes.append(torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=g) * 40], 1))
        classes.append(torch.randint(0, 4, (n,), generator=g))
    maps = density_targets(boxes, classes, (12, 16), num_classes=4, stride=8)
    assert maps.shape == (3, 4, 12, 16) and (maps >= 0).all()
    for i in range(3):
        expected = torch.bincount(classes[i], minlength=4).float()
        torch.testing.assert_close(maps[i].sum(dim=(1, 2)), expected, atol=1e-4, rtol=0)


def test_density_peaks_at_box_centre():
    maps = density_targets([torch.tensor([[40.0, 24, 56, 40]])], [torch.tensor([1])], (8, 12), num_classes=2, stride=8)
    assert maps[0, 0].sum() == 0
    flat = int(maps[0, 1].argmax())
    assert divmod(flat, 12) in {(3, 5), (3, 6), (4, 5), (4, 6)}  # the centre (48, 32) px is map (6, 4)


def test_ignore_mask_marks_pixel_centres_inside_boxes():
    mask = ignore_mask([torch.tensor([[0.0, 0, 16, 8]]), torch.zeros(0, 4)], (3, 4), stride=8)
    assert mask.shape == (2, 1, 3, 4)
    assert mask[0, 0].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert mask[1].min() == 1


def test_labelled_boxes_keep_their_supervision_inside_ignore_regions():
    """An ignore box over a labelled product (a lower-scoring duplicate) must not erase the product's density."""
    ignore = [torch.tensor([[0.0, 0, 32, 24]])]
    labelled = [torch.tensor([[8.0, 8, 24, 24]])]
    mask = ignore_mask(ignore, (4, 5), stride=8, labelled_boxes=labelled)
    expected = torch.ones(4, 5)
    expected[:3, :4] = 0  # pixel centres 4, 12, 20 (rows) and 4..28 (columns) inside the ignore box
    expected[1:3, 1:3] = 1  # but those inside the labelled box count
    assert torch.equal(mask[0, 0], expected)
    target = density_targets(labelled, [torch.tensor([0])], (4, 5), num_classes=1, stride=8)
    kept = (target * mask).sum() / target.sum()
    assert kept > 0.5 and kept > (target * ignore_mask(ignore, (4, 5), stride=8)).sum() / target.sum()
    assert torch.equal(ignore_mask(ignore, (4, 5), stride=8, labelled_boxes=[torch.zeros(0, 4)]),
                       ignore_mask(ignore, (4, 5), stride=8))


def test_density_loss_values():
    target = torch.zeros(1, 2, 2, 2)
    target[0, 0, 0, 0] = 1.0
    pred = torch.zeros(1, 2, 2, 2)
    mask = torch.ones(1, 1, 2, 2)
    losses = density_loss(pred, target, mask, density_scale=10.0, pixel_weight=1.0, count_weight=1.0)
    assert losses["loss_density"].item() == pytest.approx(100.0 / 4)  # summed over classes, mean over 4 pixels
    assert losses["loss_count"].item() == pytest.approx(0.5 / 2)  # smooth L1 of 1 (beta 1) on one of 2 classes
    perfect = density_loss(target * 10, target, mask, density_scale=10.0)
    assert perfect["loss_density"].item() == 0 and perfect["loss_count"].item() == 0
    mask[0, 0, 0, 0] = 0  # the object sits in an ignore region: nothing to learn there
    ignored = density_loss(pred, target, mask, density_scale=10.0)
    assert ignored["loss_density"].item() == 0 and ignored["loss_count"].item() == 0


def test_crop_counts_excludes_padding():
    density = torch.zeros(2, 1, 4, 4)
    density[:, :, 3, 3] = 50.0  # padding pixel of the first image
    density[:, :, 0, 0] = 100.0
    counts = crop_counts(density, [(24, 24), (32, 32)], stride=8, density_scale=100.0)
    assert counts[:, 0].tolist() == [1.0, 1.5]


def test_counting_view_output_size():
    view = CountingView(16, 3, levels=("1", "2"), stride=8, channels=8)
    feats = {"1": torch.rand(2, 16, 12, 10), "2": torch.rand(2, 16, 6, 5)}
    assert view(feats, (96, 80)).shape == (2, 3, 12, 10)


@pytest.mark.parametrize("scale", [0.0, 0.1, 0.5])
def test_feature_grad_scales_only_the_gradient_into_the_pyramid(scale):
    """``feature_grad``: the same maps, the pyramid features' gradient times the scale, the view's own
    parameters' gradients untouched (against a view with the full gradient, same weights)."""
    torch.manual_seed(0)
    full = CountingView(16, 3, levels=("0", "1"), stride=4, channels=8)
    scaled = CountingView(16, 3, levels=("0", "1"), stride=4, channels=8, feature_grad=scale)
    scaled.load_state_dict(full.state_dict())
    g = torch.Generator().manual_seed(1)
    base = {"0": torch.randn(2, 16, 8, 10, generator=g), "1": torch.randn(2, 16, 4, 5, generator=g)}
    weight = torch.randn(2, 3, 8, 10, generator=g)
    results = []
    for view in (full, scaled):
        feats = {k: v.clone().requires_grad_(True) for k, v in base.items()}
        maps = view(feats, (32, 40))
        (maps * weight).sum().backward()
        # detached features (scale 0) get no gradient at all: zeros
        feature_grads = {k: v.grad if v.grad is not None else torch.zeros_like(v) for k, v in feats.items()}
        results.append((maps.detach(), feature_grads, {n: p.grad.clone() for n, p in view.named_parameters()}))
    (maps_f, feat_f, par_f), (maps_s, feat_s, par_s) = results
    torch.testing.assert_close(maps_s, maps_f)
    for key in base:
        torch.testing.assert_close(feat_s[key], feat_f[key] * scale)
    for name in par_f:
        torch.testing.assert_close(par_s[name], par_f[name])


def test_feature_grad_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="feature_grad"):
        CountingView(16, 1, feature_grad=1.5)
