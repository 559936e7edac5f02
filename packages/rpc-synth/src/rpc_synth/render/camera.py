"""A camera fitted to the checkout photos: the optics a translator does not learn (blur, sensor noise, JPEG).

Synthesized composites are sharp, clean and lightly compressed; a shop camera's photos are not. The ``camera``
method maps each image's colours to the checkout photos' pooled per-channel histograms (as ``histogram``
does), then blurs it (Gaussian, ``blur`` px), adds sensor noise (luminance ``noise`` grey levels plus a chroma
part of a quarter of it) and compresses it as JPEG at ``jpeg_quality``. The strengths come from the checkout
photos' pixels (never their labels):

- JPEG quality: read from the quantization tables in the checkout JPEG files (the IJG scaling of the
  standard luminance table whose result is closest; the median over files), 95 for other formats;
- blur and noise: by simulation, the pair on a grid (then a finer one around the best) whose camera, applied
  to a sample of the synthesized images, brings them closest to the checkout photos by the domain gap of
  :mod:`rpc_synth.render.measure` (the Fréchet distance of colour and gradient-magnitude features).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from .histogram import match_histograms
from .measure import frechet_distance, image_features

CHROMA_SHARE = 0.25  # chroma noise as a share of the luminance noise: sensors' noise is mostly luminance
BLUR_GRID = (0.0, 0.6, 1.2, 1.8, 2.4, 3.0)
NOISE_GRID = (0.0, 3.0, 6.0, 9.0, 12.0, 15.0)
# The IJG (libjpeg) standard luminance quantization table, in natural (row-major) order.
STANDARD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.int64)
# Zigzag position k -> natural index: the order in which a JPEG file stores a table.
ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14,
    21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53,
    60, 61, 54, 47, 55, 62, 63], dtype=np.int64)


@dataclass(frozen=True)
class Camera:
    """Blur (Gaussian sigma, px), luminance noise (grey levels) and JPEG quality of a fitted camera."""

    blur: float = 0.0
    noise: float = 0.0
    jpeg_quality: int = 95

    def as_dict(self) -> dict:
        return asdict(self)


def ijg_table(quality: int) -> np.ndarray:
    """The luminance table libjpeg writes at ``quality`` (1-100), natural order: ``int64[64]``."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((STANDARD_LUMA * scale + 50) // 100, 1, 255)


def luma_table(data: bytes) -> np.ndarray | None:
    """The luminance (id 0) quantization table of a JPEG file's bytes, natural order; None when it has none."""
    i = 2 if data[:2] == b"\xff\xd8" else None
    while i is not None and i + 4 <= len(data) and data[i] == 0xFF:
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDB:  # DQT: one or more tables, each a precision/id byte then 64 entries
            j, end = i + 4, i + 2 + length
            while j < end:
                precision, table_id = data[j] >> 4, data[j] & 0x0F
                size = 128 if precision else 64
                values = np.frombuffer(data[j + 1 : j + 1 + size], dtype=">u2" if precision else np.uint8)
                if table_id == 0 and len(values) == 64:
                    table = np.empty(64, np.int64)
                    table[ZIGZAG] = values
                    return table
                j += 1 + size
        if marker == 0xDA:  # start of scan: no table after it
            return None
        i += 2 + length
    return None


def files_jpeg_quality(paths: Sequence[Path], default: int = 95) -> int:
    """The median IJG quality of the JPEG files among ``paths`` (``default`` when none has a luminance table)."""
    qualities = []
    candidates = np.stack([ijg_table(q) for q in range(1, 101)])
    for path in paths:
        with open(path, "rb") as f:
            table = luma_table(f.read(1 << 16))
        if table is not None:
            qualities.append(int(np.argmin(np.abs(candidates - table).sum(axis=1))) + 1)
    return int(np.median(qualities)) if qualities else default


def shoot(image: np.ndarray, camera: Camera, rng: np.random.Generator) -> np.ndarray:
    """``image`` (BGR uint8, colours already matched) through ``camera``: blur, noise, JPEG round trip."""
    out = image.astype(np.float32)
    if camera.blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), camera.blur)
    if camera.noise > 0:
        h, w = out.shape[:2]
        out += rng.normal(0, camera.noise, (h, w, 1)).astype(np.float32)
        out += rng.normal(0, CHROMA_SHARE * camera.noise, out.shape).astype(np.float32)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(camera.jpeg_quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)


def render_camera(image: np.ndarray, counts: np.ndarray, camera: Camera, seed: int) -> np.ndarray:
    """The ``camera`` method on one image: colours matched to ``counts`` (``[3, 256]``), then :func:`shoot`
    with noise drawn from ``seed`` (the image id: the same output on any machine and worker count)."""
    return shoot(match_histograms(image, counts), camera, np.random.default_rng(seed))


def _gap(sources: list[np.ndarray], target_features: np.ndarray, camera: Camera) -> float:
    shots = [shoot(image, camera, np.random.default_rng(k)) for k, image in enumerate(sources)]
    return frechet_distance(np.stack([image_features(s) for s in shots]), target_features)


def fit_camera(sources: list[np.ndarray], targets: list[np.ndarray], counts: np.ndarray, quality: int) -> tuple[Camera, dict]:
    """Blur and noise of the camera that brings ``sources`` (synthesized BGR images) closest to ``targets``
    (checkout photos): a grid search, then a finer grid around its best, at JPEG ``quality``; colours matched to
    ``counts`` first. Returns the camera and a report (every grid point's domain gap)."""
    if not sources or not targets:
        raise ValueError("fit_camera needs at least one source and one target image")
    matched = [match_histograms(image, counts) for image in sources]
    target_features = np.stack([image_features(t) for t in targets])
    tried: dict[tuple[float, float], float] = {}

    def search(blurs, noises) -> tuple[float, float]:
        for blur, noise in itertools.product(blurs, noises):
            key = (round(float(blur), 3), round(float(noise), 3))
            if key not in tried:
                tried[key] = _gap(matched, target_features, Camera(key[0], key[1], quality))
        return min(tried, key=tried.get)

    blur, noise = search(BLUR_GRID, NOISE_GRID)
    blur, noise = search([max(blur + d, 0.0) for d in (-0.3, 0.0, 0.3)], [max(noise + d, 0.0) for d in (-1.5, 0.0, 1.5)])
    camera = Camera(blur, noise, quality)
    report = {"camera": camera.as_dict(), "domain_gap": tried[(blur, noise)],
              "grid": [{"blur": b, "noise": n, "domain_gap": g} for (b, n), g in sorted(tried.items())],
              "sources": len(sources), "targets": len(targets)}
    return camera, report
