"""Coarse-to-fine product masks for exemplar photos.

Coarse: a background model fitted (a colour plane in Lab) to the pixels around the box, the colour
distance thresholded above the background's own spread, at a low working resolution, closed, holes filled, the
largest component kept. Fine: GrabCut at full resolution (capped at ``refine_px``) seeded by the coarse
mask: sure foreground inside its erosion, probable foreground/background in the box, background outside.
The quality score is the IoU of the two estimates (they fail in different ways, so low agreement flags a
doubtful mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rpc_metrics.io import FormatError, encode_mask, load_json, write_instances, write_json

from .exemplars import Exemplar, load_exemplars
from .image_files import read_image, write_mask
from .parallel import map_ordered
from .progress import Progress
from .records import file_identity, keep_record


@dataclass
class MaskResult:
    """Masks of one exemplar in its ROI ``(x0, y0, x1, y1)``: ``coarse`` and ``fine`` bool[y1-y0, x1-x0]."""

    roi: tuple[int, int, int, int]
    coarse: np.ndarray
    fine: np.ndarray

    @property
    def score(self) -> float:
        return _iou(self.coarse, self.fine)

    def full(self, which: str, shape: tuple[int, int]) -> np.ndarray:
        mask = np.zeros(shape, bool)
        x0, y0, x1, y1 = self.roi
        mask[y0:y1, x0:x1] = getattr(self, which)
        return mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def _roi(bbox, shape, margin: float) -> tuple[int, int, int, int]:
    x, y, w, h = bbox
    pad = int(margin * max(w, h)) + 4
    return (max(int(x) - pad, 0), max(int(y) - pad, 0),
            min(int(np.ceil(x + w)) + pad, shape[1]), min(int(np.ceil(y + h)) + pad, shape[0]))


def _box_mask(bbox, roi, shape_hw: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    x, y, w, h = bbox
    inside = np.zeros(shape_hw, bool)
    bx0, by0 = round((x - roi[0]) * scale), round((y - roi[1]) * scale)
    bx1, by1 = round((x + w - roi[0]) * scale), round((y + h - roi[1]) * scale)
    inside[max(by0, 0) : max(by1, by0 + 1), max(bx0, 0) : max(bx1, bx0 + 1)] = True
    return inside


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region not connected to the border filled."""
    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8), (0, 0), 2)
    return (flood != 2)[1:-1, 1:-1]


def largest_component(mask: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask.astype(bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _background_distance(lab: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """Colour distance of every pixel to a Lab plane (a + b x + c y per channel) fitted on ``outside`` pixels."""
    h, w = outside.shape
    yy, xx = np.mgrid[0:h, 0:w]
    design = np.stack([np.ones(h * w), xx.ravel() / w, yy.ravel() / h], axis=1)
    sel = outside.ravel()
    if sel.sum() < 8:  # the box fills the image: model the background from the frame
        frame = np.ones((h, w), bool)
        frame[2:-2, 2:-2] = False
        sel = frame.ravel()
    values = lab.reshape(-1, 3).astype(np.float64)
    coeffs, *_ = np.linalg.lstsq(design[sel], values[sel], rcond=None)
    residual = values - design @ coeffs
    return np.sqrt((residual**2).sum(axis=1)).reshape(h, w).astype(np.float32)


def coarse_mask(crop: np.ndarray, bbox, roi, *, work_px: int = 48) -> np.ndarray:
    """Coarse mask ``bool[h, w]`` of the product in ``crop`` (the ROI of the photo) from the background model."""
    h, w = crop.shape[:2]
    thinnest = max(min(bbox[2], bbox[3]), 1.0)
    scale = min(1.0, max(work_px / max(h, w), 8.0 / thinnest))  # thin objects keep >= 8 px across
    small = cv2.resize(crop, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(small.astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)
    inside = _box_mask(bbox, roi, small.shape[:2], scale)
    # Background samples keep a 2 px band away from the box: resampling and JPEG bleed the product there.
    band = cv2.dilate(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    outside = ~band if (~band).sum() >= 16 else ~inside
    distance = _background_distance(lab, outside)
    ring = distance[outside]
    if len(ring) >= 8:
        median = float(np.median(ring))
        noise = median + 3.0 * 1.4826 * float(np.median(np.abs(ring - median)))
    else:
        noise = 2.0
    # The box is mostly product, so a split of its own distances would cut the product in two; the
    # threshold comes from the background's spread instead.
    threshold = noise + 5.0
    fg = (distance > threshold) & inside
    k = max(3, (round(0.08 * max(small.shape[:2])) // 2) * 2 + 1)
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    fg = largest_component(fill_holes(fg.astype(bool) & inside))
    full = cv2.resize(fg.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
    return full & _box_mask(bbox, roi, (h, w))


def refine_mask(crop: np.ndarray, coarse: np.ndarray, bbox, roi, *, refine_px: int = 400, iterations: int = 3) -> np.ndarray:
    """GrabCut refinement of ``coarse`` within the box; returns ``bool[h, w]`` (``coarse`` when it cannot run)."""
    h, w = crop.shape[:2]
    if coarse.sum() < 16:
        return coarse
    scale = min(1.0, refine_px / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    work = cv2.resize(crop, size, interpolation=cv2.INTER_AREA) if scale < 1 else crop
    seed = cv2.resize(coarse.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    inside = _box_mask(bbox, roi, seed.shape, scale)
    k = max(3, (round(0.12 * min(seed.shape)) // 2) * 2 + 1)
    sure = cv2.erode(seed.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))).astype(bool)
    gc = np.full(seed.shape, cv2.GC_BGD, np.uint8)
    gc[inside] = cv2.GC_PR_BGD
    gc[seed] = cv2.GC_PR_FGD
    gc[sure] = cv2.GC_FGD
    if not (gc == cv2.GC_BGD).any() and not (gc == cv2.GC_PR_BGD).any():
        return coarse
    cv2.setRNGSeed(0)  # GrabCut's k-means draws from opencv's global RNG: fix it so masks never depend on order
    try:
        cv2.grabCut(np.ascontiguousarray(work), gc, None, np.zeros((1, 65)), np.zeros((1, 65)), iterations,
                    cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return coarse
    fg = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
    fg = largest_component(fill_holes(fg & inside))
    if scale < 1:
        fg = cv2.resize(fg.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
    return fg & _box_mask(bbox, roi, (h, w))


def exemplar_masks(image: np.ndarray, bbox, *, margin: float = 0.15, refine_px: int = 400) -> MaskResult:
    """Coarse and fine masks of the product in ``image (uint8[H, W, 3])`` inside ``bbox`` [x, y, w, h]."""
    roi = _roi(bbox, image.shape[:2], margin)
    crop = image[roi[1] : roi[3], roi[0] : roi[2]]
    coarse = coarse_mask(crop, bbox, roi)
    fine = refine_mask(crop, coarse, bbox, roi, refine_px=refine_px)
    return MaskResult(roi, coarse, fine)


# ------------------------------------------------------------------------------------------- the stage


def mask_file_name(file_name: str) -> str:
    return str(Path(file_name).with_suffix(".png"))


def _mask_task(task: tuple[Exemplar, str, bool, int]) -> dict:
    exemplar, out, keep_coarse, refine_px = task
    out_dir = Path(out)
    part = out_dir / "parts" / (mask_file_name(exemplar.file_name) + ".json")
    if part.is_file():
        return load_json(part)
    try:
        image = read_image(exemplar.path, what="exemplar image")
    except FormatError as err:
        return {"error": str(err), "image_id": exemplar.image_id}
    if image.shape[:2] != (exemplar.height, exemplar.width):
        return {"error": f"image is {image.shape[1]}x{image.shape[0]}, the JSON says {exemplar.width}x{exemplar.height}",
                "image_id": exemplar.image_id}
    result = exemplar_masks(image, exemplar.bbox, refine_px=refine_px)
    fine = result.full("fine", image.shape[:2])
    name = mask_file_name(exemplar.file_name)
    write_mask(out_dir / name, fine)
    if keep_coarse:
        write_mask(out_dir / "coarse" / name, result.full("coarse", image.shape[:2]))
    record = {"image_id": exemplar.image_id, "mask_file": name, "mask_score": round(result.score, 4),
              "segmentation": encode_mask(fine), "mask_area": int(fine.sum())}
    write_json(record, part)
    return record


def build_masks(
    instances: Any, images: str | Path, out: str | Path, *, workers: int = 1, keep_coarse: bool = False,
    refine_px: int = 400, progress: bool = True,
) -> dict:
    """Mask every exemplar of ``instances`` (photos in ``images``); write PNGs and ``OUT/instances_masks.json``.

    The JSON is the input with, per annotation, ``segmentation`` (COCO RLE of the fine mask), ``mask_area``,
    ``mask_score`` and ``mask_file`` (relative to ``out``). ``keep_coarse`` also writes ``OUT/coarse/*.png``.
    Finished images are kept in ``OUT/parts/``, so a re-run resumes where it stopped; ``OUT/masks.json`` records
    the inputs (the instances JSON's path and digest, the photos folder) and settings, and a re-run with other
    ones is refused (:class:`~rpc_synth.records.InputError`) before anything is written.
    """
    source = str(instances) if isinstance(instances, (str, Path)) else "<exemplars>"
    dataset, exemplars = load_exemplars(instances, images, source=source)
    out = Path(out)
    settings = {"instances": file_identity(instances), "images": str(Path(images).resolve()),
                "keep_coarse": keep_coarse, "refine_px": refine_px}
    keep_record(out / "masks.json", settings, what="masks")
    bar = Progress(len(exemplars), "rpc-synth masks", enabled=progress)
    done = sum((out / "parts" / (mask_file_name(e.file_name) + ".json")).is_file() for e in exemplars)
    if done:
        bar.note(f"rpc-synth masks: resuming, {done} of {len(exemplars)} exemplars already masked in {out}")
    records = {}
    tasks = [(e, str(out), keep_coarse, refine_px) for e in exemplars]
    for record in map_ordered(_mask_task, tasks, workers):
        if "error" in record:
            raise FormatError(source, f"images id={record['image_id']}", record["error"])
        records[record["image_id"]] = record
        bar.update()
    annotations = []
    for ann in dataset["annotations"]:
        record = records.get(ann["image_id"])
        if record is not None and ann.get("iscrowd", 0) == 0:
            ann = {**ann, **{k: record[k] for k in ("segmentation", "mask_area", "mask_score", "mask_file")}}
        annotations.append(ann)
    result = {**dataset, "annotations": annotations}
    write_instances(result, out / "instances_masks.json")
    return result
