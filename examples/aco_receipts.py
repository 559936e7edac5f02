"""The receipt's "call a cashier" flag measured on the test split: an image is flagged when, at the operating
threshold, the detector's count of some counting class differs from the counting view's count rounded half up
(what `dpsnet.Counter` calls ``consistent=False``). The share flagged and the accuracy of flagged and unflagged
images say what the flag buys a store. Test labels are read for reporting only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rpc_metrics.counts import count_class_index, half_up
from rpc_metrics.io import read_counts, read_instances, read_results


def _per_image(pairs: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Counts of (image row, column) pairs as ``int64[rows, cols]``."""
    return np.bincount(pairs[:, 0] * cols + pairs[:, 1], minlength=rows * cols).reshape(rows, cols)


def receipt_flags(results: Path, counts: Path, gt: Path, threshold: float) -> dict[str, np.ndarray]:
    """Per test image: ``consistent`` (not flagged) and ``right`` (every SKU's count right at ``threshold``)."""
    truth = read_instances(gt)
    ids = np.array([im["id"] for im in truth["images"]], dtype=np.int64)
    row = {int(i): k for k, i in enumerate(ids.tolist())}
    cats = sorted(c["id"] for c in truth["categories"])
    col = {c: k for k, c in enumerate(cats)}
    dets = [d for d in read_results(results) if d["score"] >= threshold and d["image_id"] in row]
    det_pairs = np.array([(row[d["image_id"]], col[d["category_id"]]) for d in dets], np.int64).reshape(-1, 2)
    true_pairs = np.array([(row[a["image_id"]], col[a["category_id"]]) for a in truth["annotations"]
                           if not a.get("iscrowd", 0)], np.int64).reshape(-1, 2)
    detected = _per_image(det_pairs, len(ids), len(cats))
    right = (detected == _per_image(true_pairs, len(ids), len(cats))).all(axis=1)
    view = read_counts(counts)
    class_of, keys = count_class_index(truth["categories"], view["count_classes"])
    # Detections summed into the counting classes, against the view's counts rounded half up.
    to_class = np.zeros((len(cats), len(keys)), np.int64)
    to_class[np.arange(len(cats)), [class_of[c] for c in cats]] = 1
    viewed = np.zeros((len(ids), len(keys)), np.int64)
    key_col = {k: j for j, k in enumerate(keys)}
    for item in view["images"]:
        if item["image_id"] in row:
            for key, value in item["counts"].items():
                viewed[row[item["image_id"]], key_col[key]] = half_up(value)
    consistent = (detected @ to_class == viewed).all(axis=1)
    return {"consistent": consistent, "right": right}


def flag_table(flags: dict[str, np.ndarray]) -> tuple[str, dict]:
    """Markdown rows (all, not flagged, flagged: images, share, cAcc) and the same numbers as a dict."""
    consistent, right = flags["consistent"], flags["right"]
    n = len(right)
    groups = {"all test images": np.ones(n, bool), "consistent (no cashier)": consistent,
              "flagged: call a cashier": ~consistent}
    numbers, lines = {}, ["| images | number | share | cAcc |", "| --- | ---: | ---: | ---: |"]
    for name, mask in groups.items():
        k = int(mask.sum())
        cacc = float(right[mask].mean()) if k else None
        numbers[name] = {"images": k, "share": k / max(n, 1), "cacc": cacc}
        lines.append(f"| {name} | {k} | {100 * k / max(n, 1):.1f}% | "
                     f"{'-' if cacc is None else f'{100 * cacc:.2f}%'} |")
    return "\n".join(lines), numbers
