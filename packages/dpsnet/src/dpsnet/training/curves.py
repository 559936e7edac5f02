"""A training run's curves as a PNG drawn with OpenCV: the losses by step, and the validation metrics below."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..data import write_image

WIDTH, HEIGHT, MARGIN = 900, 300, 60
COLOURS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140),
           (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23)]  # BGR, matplotlib's tab10


def _panel(title: str, series: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """One plot: every series (x, y) on shared axes from 0 (or below) to the largest value, a legend at the right."""
    canvas = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    xs = np.concatenate([x for x, _ in series.values()])
    ys = np.concatenate([y for _, y in series.values()])
    x0, x1 = float(xs.min()), float(max(xs.max(), xs.min() + 1))
    y0, y1 = min(0.0, float(ys.min())), float(ys.max())
    y1 = y1 if y1 > y0 else y0 + 1.0
    left, right, top, bottom = MARGIN, WIDTH - 190, 30, HEIGHT - 40
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(canvas, title, (left, 20), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (right, bottom), (0, 0, 0), 1)
    for k in range(5):
        value = y0 + (y1 - y0) * k / 4
        y = round(bottom - (bottom - top) * k / 4)
        cv2.line(canvas, (left, y), (right, y), (225, 225, 225), 1)
        cv2.putText(canvas, f"{value:.3g}", (4, y + 4), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    for value, x in ((x0, left), (x1, right)):
        cv2.putText(canvas, f"step {value:.0f}", (x - 20, bottom + 18), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (name, (x, y)) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        px = left + (x - x0) / (x1 - x0) * (right - left)
        py = bottom - (y - y0) / (y1 - y0) * (bottom - top)
        points = np.stack([px, py], axis=1).round().astype(np.int32)
        cv2.polylines(canvas, [points], False, colour, 2 if i == 0 else 1, cv2.LINE_AA)
        if len(points) == 1:
            cv2.circle(canvas, tuple(int(v) for v in points[0]), 3, colour, -1, cv2.LINE_AA)
        cv2.putText(canvas, name, (right + 10, top + 14 + 16 * i), font, 0.4, colour, 1, cv2.LINE_AA)
    return canvas


def _numeric(rows: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(float(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def draw_curves(rows: Sequence[dict], evals: Sequence[dict], path: str | Path) -> Path:
    """Write ``path`` (PNG): the total loss and each loss term of ``rows`` (``results.csv``'s rows) by step, and
    when there are evaluations (records with ``step`` and metric values) their metrics in a second panel."""
    losses = {key: _numeric(rows, key) for key in (rows[0] if rows else {}) if key == "loss" or key.startswith("loss_")}
    panels = [_panel("loss", {k: v for k, v in losses.items() if len(v[0])})] if any(len(v[0]) for v in losses.values()) \
        else [np.full((HEIGHT, WIDTH, 3), 255, np.uint8)]
    metrics = sorted({k for r in evals for k, v in r.items() if k not in ("type", "step") and isinstance(v, float)})
    if metrics:
        panels.append(_panel("validation", {k: _numeric(evals, k) for k in metrics}))
    return write_image(path, np.concatenate(panels, axis=0))
