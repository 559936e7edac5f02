"""The report's pictures, drawn with opencv and numpy only (matplotlib is not a dependency)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from rpc_metrics.io import decode_mask, image_path, load_json
from rpc_synth.image_files import read_image, write_image

WHITE, BLACK = (255, 255, 255), (0, 0, 0)
# BGR colours of the metric lines.
LINE_COLOURS = ((200, 90, 30), (40, 160, 40), (30, 30, 200), (150, 60, 150))


def fit_height(image: np.ndarray, height: int) -> np.ndarray:
    scale = height / image.shape[0]
    return cv2.resize(image, (max(1, round(image.shape[1] * scale)), height), interpolation=cv2.INTER_AREA)


def captioned(image: np.ndarray, caption: str, height: int = 256) -> np.ndarray:
    """The image at ``height`` px with a white caption band above it."""
    image = fit_height(image, height)
    band = np.full((24, image.shape[1], 3), 255, np.uint8)
    cv2.putText(band, caption, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, BLACK, 1, cv2.LINE_AA)
    return np.vstack([band, image])


def hstack(panels: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    height = max(p.shape[0] for p in panels)
    padded = []
    for i, panel in enumerate(panels):
        panel = np.pad(panel, ((0, height - panel.shape[0]), (0, 0), (0, 0)), constant_values=255)
        padded.append(panel if i == 0 else np.hstack([np.full((height, gap, 3), 255, np.uint8), panel]))
    return np.hstack(padded)


def vstack(rows: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    width = max(r.shape[1] for r in rows)
    out = []
    for i, row in enumerate(rows):
        row = np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255)
        out += [row] if i == 0 else [np.full((gap, width, 3), 255, np.uint8), row]
    return np.vstack(out)


def save_png(image: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_image(path, image)


def exemplar_with_mask(poses_json: Path, images: Path, out: Path) -> Path:
    """The first kept exemplar view: photo, its refined mask, and the cut-out product."""
    data = load_json(poses_json)
    ann = next((a for a in data["annotations"] if a.get("pose_kept", True)), data["annotations"][0])
    info = next(im for im in data["images"] if im["id"] == ann["image_id"])
    photo = read_image(image_path(images, info["file_name"]))
    mask = decode_mask(ann["segmentation"]).astype(bool)
    cut = np.where(mask[..., None], photo, np.uint8(255))
    mask_rgb = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
    return save_png(hstack([captioned(photo, "exemplar"), captioned(mask_rgb, "refined mask"),
                            captioned(cut, "cut out")]), out)


def synthesized_and_rendered(pairs: Sequence[tuple[str, Path]], out: Path) -> Path:
    """One synthesized image beside its histogram-matched and rendered versions and a checkout image."""
    return save_png(hstack([captioned(read_image(path), caption) for caption, path in pairs]), out)


def before_after(rows: Sequence[tuple[Path, Path]], captions: tuple[str, str], out: Path) -> Path:
    """``dpsnet visualize`` pictures of the same test images, before (left) and after (right) distillation."""
    return save_png(vstack([hstack([captioned(read_image(a), captions[0], 320), captioned(read_image(b), captions[1], 320)])
                            for a, b in rows]), out)


def metrics_plot(labels: Sequence[str], series: dict[str, Sequence[float | None]], out: Path, *,
                 title: str) -> Path:
    """A line plot of percentages (0-100) over the rows ``labels``; None values leave a gap."""
    width, height, left, right, top, bottom = 760, 440, 60, 180, 40, 90
    canvas = np.full((height, width, 3), 255, np.uint8)
    plot_w, plot_h = width - left - right, height - top - bottom
    cv2.putText(canvas, title, (left, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.55, BLACK, 1, cv2.LINE_AA)
    for tick in range(0, 101, 20):
        y = top + plot_h - round(plot_h * tick / 100)
        cv2.line(canvas, (left, y), (left + plot_w, y), (225, 225, 225), 1)
        cv2.putText(canvas, f"{tick}%", (8, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, BLACK, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (left + plot_w, top + plot_h), BLACK, 1)
    step = plot_w / max(len(labels) - 1, 1)
    xs = [round(left + i * step) if len(labels) > 1 else left + plot_w // 2 for i in range(len(labels))]
    for x, label in zip(xs, labels, strict=True):
        cv2.line(canvas, (x, top + plot_h), (x, top + plot_h + 5), BLACK, 1)
        # Labels written at an angle would need rotation; two lines of at most ~12 characters instead.
        for k, part in enumerate(_wrap(label)):
            cv2.putText(canvas, part, (x - 30, top + plot_h + 20 + 15 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.38, BLACK, 1,
                        cv2.LINE_AA)
    for n, (name, values) in enumerate(series.items()):
        colour = LINE_COLOURS[n % len(LINE_COLOURS)]
        points = [(x, top + plot_h - round(plot_h * min(max(v, 0.0), 100.0) / 100))
                  for x, v in zip(xs, values, strict=True) if v is not None]
        for a, b in itertools.pairwise(points):
            cv2.line(canvas, a, b, colour, 2, cv2.LINE_AA)
        for point in points:
            cv2.circle(canvas, point, 4, colour, -1, cv2.LINE_AA)
        y = top + 20 + 22 * n
        cv2.line(canvas, (width - right + 15, y - 4), (width - right + 40, y - 4), colour, 2)
        cv2.putText(canvas, name, (width - right + 46, y), cv2.FONT_HERSHEY_SIMPLEX, 0.42, BLACK, 1, cv2.LINE_AA)
    return save_png(canvas, out)


def _wrap(label: str, width: int = 12) -> list[str]:
    words, lines = label.replace("+", "+ ").split(), [""]
    for word in words:
        if lines[-1] and len(lines[-1]) + len(word) > width:
            lines.append("")
        lines[-1] = (lines[-1] + word) if lines[-1].endswith("+") or not lines[-1] else lines[-1] + " " + word
    return lines[:3]
