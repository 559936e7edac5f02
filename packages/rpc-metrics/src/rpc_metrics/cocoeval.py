"""COCO bbox average precision, vectorized, equal to pycocotools' ``COCOeval`` (area "all", maxDets 100).

pycocotools matches detections to ground truth with Python loops over images, categories, IoU thresholds,
detections and ground truths. Here every (image, category) group is matched at once: detections of the same
rank in their group are processed together (a group's greedy matching only depends on the detections ranked
before), and the ten IoU thresholds are a second array axis. The greedy rule is pycocotools' own, including
its tie-breaks (the last ground truth with the highest IoU wins; ignored ground truths are only used when no
regular one matches) and its quirks (a match to a ground truth whose ``id`` is 0 is not a true positive).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_ALL = (0.0, 1e5**2)


@dataclass(frozen=True)
class BoxSet:
    """Boxes of one kind (ground truth or detections) as columns over the evaluated images.

    ``image_index`` and ``category_index`` are positions in the sorted image ids and the category list;
    ``boxes (float64[N, 4])`` are (x, y, w, h); ``scores`` only for detections; ``iscrowd``, ``area`` and
    ``ids`` only for ground truth.
    """

    image_index: np.ndarray
    category_index: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray | None = None
    iscrowd: np.ndarray | None = None
    area: np.ndarray | None = None
    ids: np.ndarray | None = None


@dataclass(frozen=True)
class Matching:
    """The outcome of matching, shared by every row (subset of images) evaluated afterwards.

    Detections are the kept ones (top ``max_dets`` per image and category), in the order used by
    pycocotools' accumulation: category, then descending score, then image, then rank in the group.
    ``tp`` and ``ignored`` are ``bool[T, D]`` over IoU thresholds; ``det_score`` their scores; ``det_index`` their
    positions in the detections given to :func:`match`, and ``det_gt (int64[T, D])`` the position of the ground
    truth each matched in the ground truths given (-1: none).
    """

    det_image: np.ndarray
    det_category: np.ndarray
    tp: np.ndarray
    ignored: np.ndarray
    gt_image: np.ndarray
    gt_category: np.ndarray
    gt_ignored: np.ndarray
    det_score: np.ndarray | None = None
    det_index: np.ndarray | None = None
    det_gt: np.ndarray | None = None


def box_iou_coco(det: np.ndarray, gt: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """IoU of paired boxes ``det[i]`` / ``gt[i]`` (x, y, w, h), as pycocotools' C ``bbIou`` computes it.

    For a crowd ground truth the union is the detection's area. Same operation order, so ties are exact.
    """
    w = np.minimum(det[:, 2] + det[:, 0], gt[:, 2] + gt[:, 0]) - np.maximum(det[:, 0], gt[:, 0])
    h = np.minimum(det[:, 3] + det[:, 1], gt[:, 3] + gt[:, 1]) - np.maximum(det[:, 1], gt[:, 1])
    inter = w * h
    det_area = det[:, 2] * det[:, 3]
    union = np.where(gt_crowd, det_area, det_area + gt[:, 2] * gt[:, 3] - inter)
    positive = (w > 0) & (h > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(positive, inter / np.where(positive, union, 1.0), 0.0)


def _group_starts(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique keys of a sorted array and the index where each run starts."""
    if len(sorted_keys) == 0:
        return sorted_keys, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return sorted_keys[starts], starts


def _greedy(pair_det: np.ndarray, pair_gt: np.ndarray, pair_iou: np.ndarray, rank_bounds: np.ndarray,
            gt_crowd: np.ndarray, gt_ignore: np.ndarray, n_det: int, thresholds: np.ndarray) -> np.ndarray:
    """pycocotools' greedy matching, one detection rank at a time over every group: the (detection, ground truth)
    pairs sorted by rank, ``rank_bounds`` where each rank's pairs start; ``thresholds (float64[T, 1])``. Returns
    the position of the ground truth each detection matched, ``int64[T, n_det]`` (-1: none)."""
    n_t = len(thresholds)
    gt_matched = np.zeros((n_t, len(gt_ignore)), dtype=bool)
    dt_match_gt = np.full((n_t, n_det), -1, dtype=np.int64)
    for rank in range(len(rank_bounds) - 1):
        lo, hi = rank_bounds[rank], rank_bounds[rank + 1]
        if lo == hi:
            continue
        dets, gts, iou = pair_det[lo:hi], pair_gt[lo:hi], pair_iou[lo:hi]
        seg_start = np.flatnonzero(np.r_[True, dets[1:] != dets[:-1]])
        seg_of_pair = np.cumsum(np.r_[False, dets[1:] != dets[:-1]])
        ok = (iou >= thresholds) & (~gt_matched[:, gts] | gt_crowd[gts])
        best = np.full((n_t, len(seg_start)), -1, dtype=np.int64)
        # Regular ground truths first; ignored ones only for detections that matched none of them.
        for candidates in (ok & ~gt_ignore[gts], ok & gt_ignore[gts]):
            key = np.where(candidates, iou, -1.0)
            seg_max = np.maximum.reduceat(key, seg_start, axis=1)
            winner = candidates & (key == seg_max[:, seg_of_pair])
            last = np.maximum.reduceat(np.where(winner, np.arange(hi - lo), -1), seg_start, axis=1)
            best = np.where(best >= 0, best, last)
        t_idx, s_idx = np.nonzero(best >= 0)
        matched_gt = gts[best[t_idx, s_idx]]
        dt_match_gt[t_idx, dets[seg_start[s_idx]]] = matched_gt
        gt_matched[t_idx, matched_gt] = True
    return dt_match_gt


def match(gt: BoxSet, dt: BoxSet, n_categories: int, *, max_dets: int = 100,
          iou_thresholds: np.ndarray = IOU_THRESHOLDS, area_range: tuple[float, float] = AREA_ALL) -> Matching:
    """Greedy COCO matching of every detection group at once (see the module docstring)."""
    # Ground truth: per (image, category) group, regular ones first, then ignored, each in file order.
    gt_area = gt.area if gt.area is not None else gt.boxes[:, 2] * gt.boxes[:, 3]
    gt_crowd = gt.iscrowd.astype(bool)
    gt_ignore_all = gt_crowd | (gt_area < area_range[0]) | (gt_area > area_range[1])
    gt_key = gt.image_index.astype(np.int64) * n_categories + gt.category_index
    gt_order = np.lexsort((np.arange(len(gt_key)), gt_ignore_all, gt_key))
    gt_key_s = gt_key[gt_order]
    gt_boxes = gt.boxes[gt_order]
    gt_crowd_s = gt_crowd[gt_order]
    gt_ignore = gt_ignore_all[gt_order]
    gt_ids = gt.ids[gt_order] if gt.ids is not None else np.ones(len(gt_order), dtype=np.int64)
    gt_groups, gt_group_start = _group_starts(gt_key_s)
    gt_group_count = np.diff(np.r_[gt_group_start, len(gt_key_s)])

    # Detections: per group by descending score (stable on file order), keep the first max_dets.
    dt_key = dt.image_index.astype(np.int64) * n_categories + dt.category_index
    dt_order = np.lexsort((np.arange(len(dt_key)), -dt.scores, dt_key))
    dt_key_s = dt_key[dt_order]
    _, dt_group_start = _group_starts(dt_key_s)
    dt_rank = np.arange(len(dt_key_s)) - np.repeat(dt_group_start, np.diff(np.r_[dt_group_start, len(dt_key_s)]))
    keep = dt_rank < max_dets
    dt_order, dt_key_s, dt_rank = dt_order[keep], dt_key_s[keep], dt_rank[keep]
    dt_boxes = dt.boxes[dt_order]
    dt_scores = dt.scores[dt_order]
    n_det = len(dt_order)

    # Every (detection, ground truth of its group) pair, ordered by detection rank, detection, gt position.
    # A sentinel group past every key keeps the lookups in range when there is no ground truth.
    groups = np.r_[gt_groups, np.iinfo(np.int64).max]
    pos = np.searchsorted(groups, dt_key_s)
    has_gt = groups[pos] == dt_key_s
    n_pairs_per_det = np.where(has_gt, np.r_[gt_group_count, 0][pos], 0)
    first_gt = np.r_[gt_group_start, 0][pos]
    pair_det = np.repeat(np.arange(n_det), n_pairs_per_det)
    pair_offset = np.arange(len(pair_det)) - np.repeat(np.cumsum(n_pairs_per_det) - n_pairs_per_det, n_pairs_per_det)
    pair_gt = np.repeat(first_gt, n_pairs_per_det) + pair_offset
    by_rank = np.argsort(dt_rank[pair_det], kind="stable")
    pair_det, pair_gt = pair_det[by_rank], pair_gt[by_rank]
    pair_iou = box_iou_coco(dt_boxes[pair_det], gt_boxes[pair_gt], gt_crowd_s[pair_gt])
    n_ranks = int(dt_rank.max()) + 1 if n_det else 0

    dt_match_gt = _greedy(pair_det, pair_gt, pair_iou, np.searchsorted(dt_rank[pair_det], np.arange(n_ranks + 1)),
                          gt_crowd_s, gt_ignore, n_det, np.minimum(iou_thresholds, 1 - 1e-10)[:, None])
    matched = dt_match_gt >= 0
    # Unmatched detections look up a padding entry past the last ground truth.
    safe = np.where(matched, dt_match_gt, len(gt_ignore))
    dt_area = dt_boxes[:, 2] * dt_boxes[:, 3]
    outside = (dt_area < area_range[0]) | (dt_area > area_range[1])
    ignored = np.where(matched, np.r_[gt_ignore, False][safe], outside[None, :])
    # pycocotools stores the matched gt's id and tests it for truth: id 0 counts as "not matched".
    tp = matched & (np.r_[gt_ids, 1][safe] != 0)
    det_gt = np.r_[gt_order, -1][safe]

    # Accumulation order: category, descending score, image, rank in the group (pycocotools' mergesort).
    dt_image = dt.image_index[dt_order]
    dt_category = dt.category_index[dt_order]
    acc = np.lexsort((dt_rank, dt_image, -dt_scores, dt_category))
    return Matching(
        det_image=dt_image[acc], det_category=dt_category[acc], tp=tp[:, acc], ignored=ignored[:, acc],
        gt_image=gt.image_index[gt_order], gt_category=gt.category_index[gt_order], gt_ignored=gt_ignore,
        det_score=dt_scores[acc], det_index=dt_order[acc], det_gt=det_gt[:, acc],
    )


def precision_table(m: Matching, image_mask: np.ndarray, n_categories: int) -> np.ndarray:
    """pycocotools' ``eval['precision'][:, :, :, area all, maxDets 100]``: ``float64[T, R, K]``.

    ``image_mask (bool[n_images])`` selects the row's images; categories without regular ground truth in
    the row are -1 (left out of the mean, as in pycocotools).
    """
    n_t, n_r = m.tp.shape[0], len(RECALL_THRESHOLDS)
    precision = -np.ones((n_t, n_r, n_categories))
    det_in = image_mask[m.det_image]
    gt_in = image_mask[m.gt_image] & ~m.gt_ignored
    n_pos = np.bincount(m.gt_category[gt_in], minlength=n_categories)
    cats = m.det_category[det_in]
    tp_all, ig_all = m.tp[:, det_in], m.ignored[:, det_in]
    bounds = np.searchsorted(cats, np.arange(n_categories + 1))
    for k in np.flatnonzero(n_pos):
        tp_k, ig_k = tp_all[:, bounds[k]:bounds[k + 1]], ig_all[:, bounds[k]:bounds[k + 1]]
        precision[:, :, k] = _interpolated_precision(tp_k, ig_k, n_pos[k])
    return precision


def _interpolated_precision(tp: np.ndarray, ignored: np.ndarray, n_pos: int) -> np.ndarray:
    """Precision sampled at the 101 recall thresholds for one category (``float64[T, R]``)."""
    n_t = tp.shape[0]
    out = np.zeros((n_t, len(RECALL_THRESHOLDS)))
    if tp.shape[1] == 0:
        return out
    tps = np.cumsum(tp & ~ignored, axis=1).astype(float)
    fps = np.cumsum(~tp & ~ignored, axis=1).astype(float)
    recall = tps / n_pos
    precision = tps / (fps + tps + np.spacing(1))
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    n_d = tp.shape[1]
    for t in range(n_t):
        idx = np.searchsorted(recall[t], RECALL_THRESHOLDS, side="left")
        valid = idx < n_d
        out[t, valid] = precision[t, idx[valid]]
    return out


@dataclass(frozen=True)
class CategoryLayout:
    """A matching's kept detections laid out per category, for weighted accumulations.

    Slot ``[k, j]`` is the ``j``-th detection of category ``k`` in accumulation order; ``det_image (int64[K, L])``
    is its image (-1: an empty slot, weight 0); ``tp`` and ``fp (bool[T, K, L])`` are its true / false positive
    flags per IoU threshold (both False for ignored detections and empty slots). ``gt_image`` and
    ``gt_category`` list the regular (not ignored) ground truths.
    """

    det_image: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    gt_image: np.ndarray
    gt_category: np.ndarray


def category_layout(m: Matching, n_categories: int, image_mask: np.ndarray | None = None) -> CategoryLayout:
    """Lay out ``m``'s detections per category (its accumulation order is category first).

    With ``image_mask (bool[n_images])``, only the detections and ground truths of those images are kept, and
    images are numbered by their position among them (the layout of one row).
    """
    if image_mask is None:
        image_mask = np.ones(max(m.det_image.max(initial=-1), m.gt_image.max(initial=-1)) + 1, dtype=bool)
    position = np.cumsum(image_mask) - 1
    det_in = image_mask[m.det_image]
    gt_in = ~m.gt_ignored & image_mask[m.gt_image]
    det_image, det_category = position[m.det_image[det_in]], m.det_category[det_in]
    tp, ignored = m.tp[:, det_in], m.ignored[:, det_in]
    per_category = np.bincount(det_category, minlength=n_categories)
    slot = np.arange(len(det_category)) - (np.cumsum(per_category) - per_category)[det_category]
    width = max(int(per_category.max(initial=0)), 1)
    slot_image = np.full((n_categories, width), -1, dtype=np.int64)
    slot_image[det_category, slot] = det_image
    slot_tp = np.zeros((tp.shape[0], n_categories, width), dtype=bool)
    slot_fp = np.zeros_like(slot_tp)
    slot_tp[:, det_category, slot] = tp & ~ignored
    slot_fp[:, det_category, slot] = ~tp & ~ignored
    return CategoryLayout(slot_image, slot_tp, slot_fp, position[m.gt_image[gt_in]], m.gt_category[gt_in])


def weighted_precision_table(layout: CategoryLayout, image_weight: np.ndarray) -> np.ndarray:
    """:func:`precision_table` with image ``i`` counted ``image_weight[i]`` times: ``float64[T, R, K]``.

    Weight ``w`` on an image is ``w`` copies of it (its detections and ground truths), the copies of each
    detection next to each other in the accumulation order; weights of 0 and 1 give :func:`precision_table` of
    that subset exactly. Per IoU threshold and category, over the slots in order: ``tp_w = cumsum(w * tp)``,
    ``fp_w = cumsum(w * fp)``, recall ``tp_w / n_pos`` (``n_pos``: the weights of the regular ground truths),
    precision ``tp_w / (tp_w + fp_w + eps)`` made non-increasing from the right, sampled at the first slot whose
    recall reaches each recall threshold (0 past the last slot), as pycocotools does. The ``w`` copies of a
    detection are one slot: along copies of a true positive recall and precision both rise, so a sample taken
    inside the run equals its last copy's after the envelope; copies of a false positive or an ignored
    detection leave recall where it was, so no first slot falls inside them. A slot of weight 0 changes no sum
    (no first slot falls on it either, but at recall 0, where its envelope value is the whole row's): empty
    slots and images of weight 0 need no removal.
    """
    weight = np.append(np.asarray(image_weight, dtype=np.float64), 0.0)
    n_t, n_k, width = layout.tp.shape
    rows, n_r = n_t * n_k, len(RECALL_THRESHOLDS)
    det_weight = weight[layout.det_image]
    tps = np.cumsum(layout.tp * det_weight, axis=2)
    fps = np.cumsum(layout.fp * det_weight, axis=2)
    n_pos = np.bincount(layout.gt_category, weights=weight[layout.gt_image], minlength=n_k)
    recall = tps / np.where(n_pos > 0, n_pos, 1.0)[:, None]
    precision = tps / (fps + tps + np.spacing(1))
    precision = np.maximum.accumulate(precision[..., ::-1], axis=2)[..., ::-1]
    # The slots below threshold r have at most r thresholds <= their recall; recall does not decrease along a
    # row, so their number is the index pycocotools' searchsorted finds.
    below = np.searchsorted(RECALL_THRESHOLDS, recall, side="right").reshape(rows, width)
    row_key = np.arange(rows)[:, None]
    first = np.cumsum(np.bincount((below + row_key * (n_r + 1)).ravel(), minlength=rows * (n_r + 1))
                      .reshape(rows, n_r + 1), axis=1)[:, :n_r]
    sampled = precision.ravel()[np.minimum(first, width - 1) + row_key * width]
    table = np.where(first < width, sampled, 0.0).reshape(n_t, n_k, n_r).transpose(0, 2, 1)
    return np.where(n_pos > 0, table, -1.0)


def summarize(precision: np.ndarray) -> tuple[float | None, float | None]:
    """(mmAP = AP@[.50:.95], mAP50 = AP@.50) from a precision table; None where undefined."""
    def mean_defined(values: np.ndarray) -> float | None:
        defined = values[values > -1]
        return float(np.mean(defined)) if defined.size else None

    t50 = np.flatnonzero(IOU_THRESHOLDS == 0.5)
    return mean_defined(precision), mean_defined(precision[t50])


def per_category_ap(precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-category (AP@[.50:.95], AP@.50), NaN where the category has no ground truth in the row."""
    defined = precision[0, 0] > -1
    t50 = np.flatnonzero(IOU_THRESHOLDS == 0.5)[0]
    ap = np.where(defined, precision.mean(axis=(0, 1)), np.nan)
    ap50 = np.where(defined, precision[t50].mean(axis=0), np.nan)
    return ap, ap50
