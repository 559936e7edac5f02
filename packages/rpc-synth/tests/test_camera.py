"""rpc_synth.render.camera: JPEG quality read from the files, the fitted blur and noise, determinism (no torch)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from rpc_synth.render.camera import (
    STANDARD_LUMA,
    Camera,
    files_jpeg_quality,
    fit_camera,
    ijg_table,
    luma_table,
    render_camera,
    shoot,
)
from rpc_synth.render.histogram import channel_histograms


def _scene(seed: int, size: int = 128) -> np.ndarray:
    """A tray with a few sharp, coloured boxes: edges for the blur to soften, flat areas for the noise to show."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), rng.integers(60, 200, 3), np.uint8)
    for _ in range(10):
        x, y = rng.integers(0, size - 20, 2)
        w, h = rng.integers(8, 30, 2)
        cv2.rectangle(image, (int(x), int(y)), (int(x + w), int(y + h)), rng.integers(0, 256, 3).tolist(), -1)
    return image


def test_ijg_tables_by_hand():
    assert np.array_equal(ijg_table(50), STANDARD_LUMA)
    assert np.array_equal(ijg_table(100), np.ones(64, np.int64))
    assert ijg_table(10)[0] == (16 * 500 + 50) // 100  # scale 5000 / 10
    assert all(np.all(ijg_table(q) >= ijg_table(q + 1)) for q in range(1, 100))


@pytest.mark.parametrize("quality", [25, 55, 80, 95])
def test_jpeg_quality_is_read_from_the_files(tmp_path, quality):
    paths = []
    for k in range(3):
        path = tmp_path / f"{k}.jpg"
        cv2.imwrite(str(path), _scene(k), [cv2.IMWRITE_JPEG_QUALITY, quality])
        paths.append(path)
    table = luma_table(paths[0].read_bytes())
    assert np.array_equal(table, ijg_table(quality))
    assert files_jpeg_quality(paths) == quality


def test_files_without_a_table_give_the_default(tmp_path):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), _scene(0))
    assert luma_table(path.read_bytes()) is None and luma_table(b"") is None
    assert files_jpeg_quality([path], default=93) == 93


def test_shoot_is_seeded_and_blurs():
    image = _scene(1)
    camera = Camera(blur=1.5, noise=6.0, jpeg_quality=70)
    a = shoot(image, camera, np.random.default_rng(3))
    assert np.array_equal(a, shoot(image, camera, np.random.default_rng(3)))
    assert not np.array_equal(a, shoot(image, camera, np.random.default_rng(4)))
    soft = shoot(image, Camera(blur=2.0, noise=0.0, jpeg_quality=100), np.random.default_rng(0))
    lap = [cv2.Laplacian(cv2.cvtColor(x, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var() for x in (image, soft)]
    assert lap[1] < 0.5 * lap[0]
    counts = channel_histograms([image])
    assert np.array_equal(render_camera(image, counts, camera, 7), render_camera(image, counts, camera, 7))


@pytest.mark.parametrize("blur, noise, blur_tolerance", [(1.2, 6.0, 0.6), (2.4, 12.0, 1.0), (0.0, 3.0, 0.6)])
def test_fit_recovers_a_known_camera(blur, noise, blur_tolerance):
    """Targets shot by a known camera from other scenes: the fit finds its blur and noise within a coarse grid step
    (strong noise hides some blur from the gradient features: a wider blur tolerance there)."""
    truth = Camera(blur, noise, 75)
    sources = [_scene(s) for s in range(12)]
    targets = [shoot(_scene(100 + s), truth, np.random.default_rng(s)) for s in range(24)]
    counts = channel_histograms(targets)
    camera, report = fit_camera(sources, targets, counts, 75)
    assert abs(camera.blur - blur) <= blur_tolerance + 1e-9 and abs(camera.noise - noise) <= 3.0 + 1e-9, camera
    assert report["camera"] == camera.as_dict() and len(report["grid"]) >= 36
    assert report["domain_gap"] == min(g["domain_gap"] for g in report["grid"])


def test_fit_needs_images():
    with pytest.raises(ValueError, match="at least one"):
        fit_camera([], [_scene(0)], channel_histograms([_scene(0)]), 90)
