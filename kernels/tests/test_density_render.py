import pytest
import torch

import aco_kernels
from aco_kernels.reference import density_params, density_render_reference


def _instances(num, num_images, num_classes, image_hw, seed):
    g = torch.Generator().manual_seed(seed)
    h, w = image_hw
    # Centres spread a little beyond the image so that borders and clamping are exercised.
    centers = torch.rand(num, 2, generator=g) * torch.tensor([w * 1.2, h * 1.2]) - torch.tensor([w * 0.1, h * 0.1])
    sizes = torch.rand(num, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8]) + 1.0
    labels = torch.randint(0, num_classes, (num,), generator=g)
    batch_index = torch.randint(0, num_images, (num,), generator=g)
    return centers, sizes, labels, batch_index


def _render(args, **kwargs):
    return aco_kernels.density_render(*args, **kwargs)


@pytest.mark.parametrize("map_size,stride", [((9, 13), 8), ((1, 1), 4), ((17, 5), 2.5)])
def test_density_render_matches_reference(kernel_path, map_size, stride):
    image_hw = (map_size[0] * stride, map_size[1] * stride)
    for seed in range(3):
        args = _instances(11, 2, 3, image_hw, seed)
        kwargs = {"num_images": 2, "num_classes": 3, "map_size": map_size, "stride": stride}
        out = _render(args, **kwargs)
        ref = density_render_reference(*args, **kwargs)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        # Every instance sums to exactly 1, wherever it sits.
        torch.testing.assert_close(out.sum(), torch.tensor(11.0), rtol=1e-5, atol=1e-5)


def test_density_render_many_instances_several_tiles(kernel_path):
    # More instances than the kernel's chunk (16) and a map of several tiles.
    args = _instances(40, 3, 4, (45 * 8, 70 * 8), seed=5)
    kwargs = {"num_images": 3, "num_classes": 4, "map_size": (45, 70), "stride": 8}
    torch.testing.assert_close(_render(args, **kwargs), density_render_reference(*args, **kwargs), rtol=1e-5,
                               atol=1e-6)


def test_density_render_more_instances_than_one_scan(kernel_path, monkeypatch):
    # More instances than one wide load holds (1024 on GPU, 16 here): the kernel walks them in several, and
    # the planes hold many instances each (taken one by one, in index order, from the match mask).
    from aco_kernels.ops import density_render as module

    monkeypatch.setattr(module, "MAX_SCAN", 16)
    args = _instances(45, 2, 2, (6 * 4, 5 * 4), seed=7)
    kwargs = {"num_images": 2, "num_classes": 2, "map_size": (6, 5), "stride": 4}
    out = _render(args, **kwargs)
    torch.testing.assert_close(out, density_render_reference(*args, **kwargs), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.sum(), torch.tensor(45.0), rtol=1e-5, atol=1e-4)


def test_density_render_each_instance_sums_to_one_at_borders(kernel_path):
    centers = torch.tensor([[0.0, 0.0], [104.0, 72.0], [-30.0, 40.0], [52.0, 36.0], [104.0, 0.0]])
    sizes = torch.tensor([[40.0, 40.0], [300.0, 10.0], [8.0, 8.0], [1.0, 1.0], [0.0, 0.0]])
    kwargs = {"num_images": 1, "num_classes": 5, "map_size": (9, 13), "stride": 8}
    labels = torch.arange(5)
    out = _render((centers, sizes, labels, torch.zeros(5, dtype=torch.int64)), **kwargs)
    torch.testing.assert_close(out.sum(dim=(2, 3)), torch.ones(1, 5), rtol=1e-6, atol=1e-6)
    assert (out >= 0).all()


def test_density_render_empty(kernel_path):
    empty = torch.zeros(0, 2)
    idx = torch.zeros(0, dtype=torch.int64)
    out = _render((empty, empty, idx, idx), num_images=2, num_classes=3, map_size=(5, 7), stride=8)
    assert out.shape == (2, 3, 5, 7)
    assert out.abs().sum() == 0


def test_density_sigma_rule():
    cx, cy, sigma = density_params(torch.tensor([[16.0, 8.0], [-5.0, 1e4]]), torch.tensor([[640.0, 160.0], [2.0, 2.0]]),
                                   map_size=(10, 10), stride=8, sigma_scale=0.15, min_sigma=1.0, truncate=3.0)
    torch.testing.assert_close(sigma, torch.tensor([0.15 * 320.0 / 8.0, 1.0]))
    torch.testing.assert_close(cx, torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(cy, torch.tensor([1.0, 10.0]))


def test_density_short_side_rule_is_the_released_dpsnet_rule():
    # The released DPSNet (jianzhnie/DPSNet @ d327140, maskrcnn_benchmark/utils/density.py:58-61): in map pixels,
    # sigma = max(min_sigma, min(w, h) / 2 * 5 / (4 * 3)), min_sigma 1 at stride 8 (engine/trainer.py:207-212).
    g = torch.Generator().manual_seed(0)
    sizes = torch.rand(50, 2, generator=g) * 300 + torch.tensor([[0.5, 2.0]])
    stride = 8.0
    released = [max(1.0, min(w / stride, h / stride) / 2 * 5 / (4 * 3)) for w, h in sizes.tolist()]
    _, _, sigma = density_params(torch.zeros(50, 2), sizes, map_size=(100, 100), stride=stride, sigma_scale=5 / 24,
                                 min_sigma=1.0, truncate=3.0, sigma_rule="short_side")
    torch.testing.assert_close(sigma, torch.tensor(released), rtol=1e-6, atol=1e-6)
    assert min(released) == 1.0 and max(released) > 3.0  # both branches of the max


@pytest.mark.parametrize("map_size,stride", [((9, 13), 8), ((17, 5), 2.5)])
def test_density_render_short_side_matches_reference(kernel_path, map_size, stride):
    image_hw = (map_size[0] * stride, map_size[1] * stride)
    for seed in range(2):
        args = _instances(11, 2, 3, image_hw, seed)
        kwargs = {"num_images": 2, "num_classes": 3, "map_size": map_size, "stride": stride,
                  "sigma_scale": 5 / 24, "sigma_rule": "short_side"}
        out = _render(args, **kwargs)
        torch.testing.assert_close(out, density_render_reference(*args, **kwargs), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.sum(), torch.tensor(11.0), rtol=1e-5, atol=1e-5)
        # the rule matters: long thin boxes get narrower Gaussians than under the area rule
        assert not torch.allclose(out, _render(args, **{**kwargs, "sigma_rule": "area"}))


def test_density_render_rejects_an_unknown_sigma_rule():
    with pytest.raises(ValueError, match="sigma_rule should be one of"):
        aco_kernels.density_render(torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([0]), torch.tensor([0]),
                                   num_images=1, num_classes=1, map_size=(4, 4), stride=4, sigma_rule="diagonal")


def test_density_render_unchecked_drops_out_of_range_instances_on_the_kernel_path(kernel_path):
    # check=False (no host sync): an instance whose label or image is out of range matches no plane
    centers = torch.tensor([[10.0, 10.0], [20.0, 12.0], [5.0, 5.0], [12.0, 3.0]])
    sizes = torch.full((4, 2), 8.0)
    labels, batch_index = torch.tensor([1, 3, 0, -1]), torch.tensor([0, 0, 2, 1])
    kwargs = {"num_images": 2, "num_classes": 3, "map_size": (4, 6), "stride": 4}
    out = aco_kernels.density_render(centers, sizes, labels, batch_index, check=False, **kwargs)
    expected = density_render_reference(centers[:1], sizes[:1], labels[:1], batch_index[:1], **kwargs)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="labels"):
        aco_kernels.density_render(centers, sizes, labels, batch_index, **kwargs)


def test_density_render_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        aco_kernels.density_render(torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([3]), torch.tensor([0]),
                                   num_images=1, num_classes=3, map_size=(4, 4), stride=4)
