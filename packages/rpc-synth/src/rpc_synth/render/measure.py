"""How far apart two image sets are, and whether a translation kept the products (numpy/opencv only).

Domain gap: every image becomes 13 numbers (``image_features``): the mean and standard deviation of its
L, a, b channels (OpenCV 8-bit Lab) and the shares of its pixels in 7 luminance-gradient-magnitude bins
(Sobel, edges ``GRADIENT_BINS`` in grey levels per pixel: flat tray, noise, blur and sharp print all move
them). Each set is summarised by the mean and covariance of these vectors, after z-scoring every feature
with the reference (checkout) set's mean and std, and the statistic is the Fréchet distance between the
two Gaussians: ``|mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2)`` (0 for identical sets;
the FID formula, on hand-made colour and texture features instead of Inception ones).

Product preservation: a simple foreground segmentation (Lab distance to the tray colour, the median of the
pixels outside every box, split by Otsu's threshold) of the image before and after; an
annotated product is kept when the two segmentations inside its box have IoU >= ``iou_threshold``.
New foreground regions: foreground components after translation, at least ``blob_fraction`` x the median
product area, mostly outside every box, and mostly not foreground before. New blobs: those of them that are
product-like, i.e. crisp-edged: the 75th percentile of the Lab gradient magnitude on the region's boundary,
divided by the region's contrast (Lab distance of its median colour to the tray's), reaches
``min_crispness``. A step edge gives about 0.3 after the 5x5 blur, an edge blurred by a Gaussian of 6 px at
most 0.07. A tray's soft cloud texture made more contrasted (what pooled histogram matching does to it)
becomes a new foreground region, but not a blob.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np

from rpc_metrics.io import read_instances

from ..image_files import folder_images, read_image
from ..parallel import map_ordered
from .data import listed_images

GRADIENT_BINS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, np.inf)
FEATURE_NAMES = ("L_mean", "a_mean", "b_mean", "L_std", "a_std", "b_std",
                 *(f"grad_{lo:g}-{hi:g}" for lo, hi in itertools.pairwise(GRADIENT_BINS)))


def image_features(image: np.ndarray) -> np.ndarray:
    """Colour and texture features of a BGR ``uint8[H, W, 3]`` image: ``float64[13]`` (``FEATURE_NAMES``)."""
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float64)
    luma = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    gx = cv2.Sobel(luma, cv2.CV_32F, 1, 0, ksize=3) / 8
    gy = cv2.Sobel(luma, cv2.CV_32F, 0, 1, ksize=3) / 8
    magnitude = np.sqrt(gx * gx + gy * gy).ravel()
    shares = np.histogram(magnitude, bins=np.array(GRADIENT_BINS))[0] / magnitude.size
    return np.concatenate([lab.mean(0), lab.std(0), shares])


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray, reference: np.ndarray | None = None) -> float:
    """Fréchet distance between Gaussian fits of two ``[N, D]`` feature sets, features z-scored by ``reference``.

    ``reference`` defaults to ``features_b``; features that do not vary in it are z-scored with 1.
    """
    reference = features_b if reference is None else reference
    centre, scale = reference.mean(0), reference.std(0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    a, b = (features_a - centre) / scale, (features_b - centre) / scale
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False)) if len(a) > 1 else np.zeros((a.shape[1],) * 2)
    cov_b = np.atleast_2d(np.cov(b, rowvar=False)) if len(b) > 1 else np.zeros((b.shape[1],) * 2)
    root_a = _sqrt_psd(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def foreground(image: np.ndarray, boxes: list) -> np.ndarray:
    """Product pixels of a checkout-like image (``bool[H, W]``): far, in Lab, from the tray colour.

    The tray colour is the median of the pixels outside every ``[x, y, w, h]`` box (the image border when
    boxes cover nearly all of it); the distance map is split by Otsu's threshold (so a change of contrast
    between the two images does not move it), never below the tray's median distance + 10.
    """
    h, w = image.shape[:2]
    lab = _blurred_lab(image)
    tray = ~_box_mask(boxes, h, w)
    if tray.sum() < 0.05 * h * w:
        tray = np.zeros((h, w), bool)
        tray[:4], tray[-4:], tray[:, :4], tray[:, -4:] = True, True, True, True
    distance = np.linalg.norm(lab - np.median(lab[tray], axis=0), axis=2)
    top = max(float(distance.max()), 1e-6)
    otsu, _ = cv2.threshold(np.round(distance * (255 / top)).astype(np.uint8), 0, 255,
                            cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = max(otsu * top / 255, float(np.median(distance[tray])) + 10)
    mask = (distance > threshold).astype(np.uint8)
    return cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)


def _box_mask(boxes: list, h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    for x, y, bw, bh in boxes:
        mask[max(int(y), 0):int(np.ceil(y + bh)), max(int(x), 0):int(np.ceil(x + bw))] = True
    return mask


def _blurred_lab(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.GaussianBlur(image, (5, 5), 0), cv2.COLOR_BGR2LAB).astype(np.float32)


def gradient_magnitude(lab: np.ndarray) -> np.ndarray:
    """``float32[H, W]``: gradient magnitude per pixel of a Lab image (``_blurred_lab``: the 5x5-blurred image),
    Sobel, the three channels' squared gradients summed, in Lab units (OpenCV 8-bit scale) per pixel."""
    gx = cv2.Sobel(lab, cv2.CV_32F, 1, 0, ksize=3) / 8
    gy = cv2.Sobel(lab, cv2.CV_32F, 0, 1, ksize=3) / 8
    return np.sqrt((gx * gx + gy * gy).sum(axis=2))


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def product_changes(before: np.ndarray, after: np.ndarray, boxes: list, min_blob_area: float,
                    iou_threshold: float = 0.5, min_crispness: float = 0.15) -> dict:
    """Per-box foreground IoU before vs after, products kept, new foreground regions outside the boxes and,
    among them, the product-like (crisp-edged) new blobs (see the module's docstring)."""
    fg_before, fg_after = foreground(before, boxes), foreground(after, boxes)
    ious = []
    for x, y, bw, bh in boxes:
        box = (slice(max(int(y), 0), int(np.ceil(y + bh))), slice(max(int(x), 0), int(np.ceil(x + bw))))
        union = np.count_nonzero(fg_before[box] | fg_after[box])
        ious.append(np.count_nonzero(fg_before[box] & fg_after[box]) / union if union else 1.0)
    in_boxes = _box_mask(boxes, *before.shape[:2])
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg_after.astype(np.uint8), connectivity=8)
    regions = []
    for label in range(1, count):
        if stats[label, cv2.CC_STAT_AREA] < min_blob_area:
            continue
        region = labels == label
        if in_boxes[region].mean() < 0.5 and fg_before[region].mean() < 0.5:
            regions.append(region)
    new_blobs = 0
    if regions:
        lab = _blurred_lab(after)
        gradient, tray_pixels = gradient_magnitude(lab), ~(in_boxes | fg_after)
        tray = np.median(lab[tray_pixels], axis=0) if tray_pixels.any() else lab.mean((0, 1))
        for region in regions:
            contrast = float(np.linalg.norm(np.median(lab[region], axis=0) - tray))
            crispness = float(np.percentile(gradient[_boundary(region)], 75)) / max(contrast, 1.0)
            new_blobs += crispness >= min_crispness
    return {"ious": ious, "kept": int(sum(iou >= iou_threshold for iou in ious)),
            "new_regions": len(regions), "new_blobs": int(new_blobs)}


def _features_of(path: Path) -> np.ndarray:
    return image_features(read_image(path))


def _folder_features(folder: str | Path, workers: int) -> np.ndarray:
    """``image_features`` of every image of a folder, stacked ``[N, 13]``."""
    return np.stack(list(map_ordered(_features_of, folder_images(folder), workers)))


def domain_gap(images: str | Path, target: str | Path, reference: str | Path | None = None, *,
               workers: int = 1) -> float:
    """Fréchet distance between the features of two image folders (z-scored by ``reference``, default ``target``)."""
    feats_a, feats_b = _folder_features(images, workers), _folder_features(target, workers)
    feats_r = feats_b if reference is None else _folder_features(reference, workers)
    return frechet_distance(feats_a, feats_b, feats_r)


def _measure_image(job: tuple) -> tuple:
    """One image's features before (and after) translation, and its ``product_changes`` (``None`` without after)."""
    path, rendered_path, boxes, source, min_blob_area, iou_threshold, min_crispness = job
    before = read_image(path, source)
    if rendered_path is None:
        return image_features(before), None, None
    after = read_image(rendered_path, source)
    changes = product_changes(before, after, boxes, min_blob_area, iou_threshold, min_crispness)
    return image_features(before), image_features(after), changes


def measure_render(images: str | Path, ann: str | Path, target: str | Path, rendered: str | Path | None = None,
                   *, iou_threshold: float = 0.5, blob_fraction: float = 0.25, min_crispness: float = 0.15,
                   workers: int = 1) -> dict:
    """Domain gap of ``images`` (listed in ``ann``) to ``target``; with ``rendered`` (the same file names
    translated), also its gap, the share of products kept and the new blobs. ``workers`` processes share the
    images (the result does not depend on it)."""
    dataset = read_instances(ann)
    source = str(ann)
    paths = listed_images(dataset, images, source)
    rendered_paths = [None] * len(paths) if rendered is None else listed_images(dataset, rendered, source)
    target_feats = _folder_features(target, workers)
    boxes: dict[int, list] = {}
    for a in dataset["annotations"]:
        if not a.get("iscrowd", 0):
            boxes.setdefault(a["image_id"], []).append(a["bbox"])
    areas = [a.get("area", a["bbox"][2] * a["bbox"][3]) for a in dataset["annotations"]]
    min_blob_area = blob_fraction * float(np.median(areas)) if areas else 0.0
    jobs = [(path, rendered_path, boxes.get(im["id"], []), source, min_blob_area, iou_threshold, min_crispness)
            for im, path, rendered_path in zip(dataset["images"], paths, rendered_paths, strict=True)]
    before_feats, after_feats, ious, kept, blobs, regions = [], [], [], 0, 0, 0
    for before, after, changes in map_ordered(_measure_image, jobs, workers):
        before_feats.append(before)
        if changes is not None:
            after_feats.append(after)
            ious += changes["ious"]
            kept += changes["kept"]
            blobs += changes["new_blobs"]
            regions += changes["new_regions"]
    report = {"images": len(paths), "target_images": len(target_feats),
              "domain_gap_before": frechet_distance(np.stack(before_feats), target_feats)}
    if rendered is None:
        return report
    report.update({"domain_gap_after": frechet_distance(np.stack(after_feats), target_feats),
                   "products": len(ious), "products_kept": kept, "products_kept_share": kept / max(len(ious), 1),
                   "mean_foreground_iou": float(np.mean(ious)) if ious else 1.0,
                   "new_foreground_regions": regions, "new_foreground_regions_per_image": regions / max(len(paths), 1),
                   "new_blobs": blobs, "new_blobs_per_image": blobs / max(len(paths), 1)})
    return report
