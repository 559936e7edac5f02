"""Writing the mini world to a folder in the RPC layout: ``world.json`` (the settings: a folder holding a world of
other settings is refused, :mod:`rpc_synth.records`), every image (in worker processes, each written
atomically), then the instances JSON files, the true exemplar masks and views and the pool's truth. The same
config writes the same bytes."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np

from rpc_metrics.io import write_instances, write_json

from ..baskets import LEVEL_RANGES
from ..checkout_camera import jpeg_quality
from ..image_files import write_jpeg, write_mask
from ..parallel import map_ordered
from ..progress import Progress
from ..records import keep_record
from .config import WorldConfig, catalog, exemplar_views
from .draw import render_checkout, render_exemplar

TRUE_MASKS = "exemplar_masks_true"
POOL_TRUTH = "pool_truth"


def exemplar_file_name(index: int) -> str:
    """File name of exemplar ``index`` (0-based) in ``train2019/``."""
    return f"exemplar_{index + 1:06d}.jpg"


def checkout_file_name(split: str, index: int) -> str:
    """File name of checkout image ``index`` (0-based) of ``split`` in ``{split}2019/``."""
    return f"{split}_{index + 1:06d}.jpg"


def checkout_jpeg_quality(config: WorldConfig) -> int:
    """JPEG quality of the checkout images: the shop camera's (``gap`` style) or the domain shift's."""
    return jpeg_quality(config.gap) if config.style == "gap" else config.domain.jpeg_quality


def _world_task(task: tuple[WorldConfig, str, str, int]) -> dict:
    config, out, split, index = task
    out_dir = Path(out)
    if split == "train":
        image, mask = render_exemplar(config, index)
        name = exemplar_file_name(index)
        write_jpeg(out_dir / "train2019" / name, image, 95, optimize=False)
        write_mask(out_dir / TRUE_MASKS / name.replace(".jpg", ".png"), mask)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        bbox = [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]
        return {"file_name": name, "shape": image.shape[:2], "bbox": bbox, "true_area": int(mask.sum())}
    image, level, annotations = render_checkout(config, split, index)
    name = checkout_file_name(split, index)
    write_jpeg(out_dir / f"{split}2019" / name, image, checkout_jpeg_quality(config), optimize=False)
    return {"file_name": name, "shape": image.shape[:2], "level": level, "annotations": annotations}


def _header(config: WorldConfig) -> dict:
    skus = catalog(config)
    categories = [{"supercategory": s.supercategory, "id": s.id, "name": s.name} for s in skus]
    raw = [
        {"sku_name": f"sku_{s.id}", "category_id": s.id, "sku_class": s.supercategory, "code": f"69{s.id:011d}",
         "shelf": 1 + s.id % 4, "num": 1, "name": s.name, "clas": s.supercategory, "known": True, "ind": s.id - 1}
        for s in skus
    ]
    info = {"description": "rpc-synth mini world (procedural, RPC layout)", "year": 2019, "version": "1.0",
            "seed": config.seed}
    return {"info": info, "licenses": [], "categories": categories, "__raw_Chinese_name_df": raw}


def _assemble_exemplars(config: WorldConfig, results: list[dict]) -> tuple[dict, list[dict]]:
    images, annotations, views = [], [], []
    for i, (r, (sku_id, elevation, azimuth)) in enumerate(zip(results, exemplar_views(config), strict=True)):
        h, w = r["shape"]
        images.append({"file_name": r["file_name"], "width": int(w), "height": int(h), "id": i + 1})
        x, y, bw, bh = r["bbox"]
        annotations.append({"area": bw * bh, "bbox": r["bbox"], "category_id": sku_id, "id": i + 1, "image_id": i + 1,
                            "iscrowd": 0, "segmentation": [], "point_xy": [x + bw / 2, y + bh / 2]})
        views.append({"image_id": i + 1, "file_name": r["file_name"], "category_id": sku_id, "elevation": elevation,
                      "azimuth": azimuth, "true_area": r["true_area"]})
    return {**_header(config), "images": images, "annotations": annotations}, views


def _assemble_checkout(config: WorldConfig, results: list[dict]) -> dict:
    images, annotations = [], []
    for i, r in enumerate(results):
        h, w = r["shape"]
        images.append({"file_name": r["file_name"], "width": int(w), "height": int(h), "id": i + 1, "level": r["level"]})
        for ann in r["annotations"]:
            annotations.append({**ann, "id": len(annotations) + 1, "image_id": i + 1})
    return {**_header(config), "images": images, "annotations": annotations}


def mark_degenerate(views: list[dict], threshold: float = 0.45) -> None:
    """Add each view's true area ratio (to its SKU's largest view) and ``degenerate = ratio <= threshold``."""
    largest: dict[int, int] = {}
    for v in views:
        largest[v["category_id"]] = max(largest.get(v["category_id"], 0), v["true_area"])
    for v in views:
        v["true_ratio"] = v["true_area"] / largest[v["category_id"]]
        v["degenerate"] = v["true_ratio"] <= threshold


def build_world(out: str | Path, config: WorldConfig | None = None, *, workers: int = 1, progress: bool = True) -> dict:
    """Write the mini world under ``out``; return a summary (counts per split, settings).

    ``world.json`` (the settings) is written first: a folder that holds a world of other settings is refused
    (:class:`~rpc_synth.records.InputError`) before anything is written, so no stale image stays beside new
    ones. Images come next, each atomically; the instances JSON files last, so an interrupted run leaves no
    ``instances_*.json`` that refers to missing images. Re-running rewrites the same bytes.
    """
    config = config or WorldConfig()
    out = Path(out)
    summary = world_summary(config)
    keep_record(out / "world.json", summary, what="a world")
    n_exemplars = len(exemplar_views(config))
    tasks = [(config, str(out), "train", i) for i in range(n_exemplars)]
    tasks += [(config, str(out), "val", i) for i in range(config.val_images)]
    tasks += [(config, str(out), "test", i) for i in range(config.test_images)]
    tasks += [(config, str(out), "pool", i) for i in range(config.pool_images)]
    bar = Progress(len(tasks), "rpc-synth world", enabled=progress)
    results = []
    for result in map_ordered(_world_task, tasks, workers):
        results.append(result)
        bar.update()
    train, views = _assemble_exemplars(config, results[:n_exemplars])
    mark_degenerate(views)
    ends = np.cumsum([n_exemplars, config.val_images, config.test_images, config.pool_images])
    val, test, pool = (_assemble_checkout(config, results[a:b]) for a, b in itertools.pairwise(ends))
    write_json({"views": views}, out / TRUE_MASKS / "views.json", indent=1)
    splits = [("train", train), ("val", val), ("test", test)]
    if config.pool_images:
        write_instances(pool, out / POOL_TRUTH / "instances_pool2019.json")
        unlabeled = {**pool, "annotations": [], "images": [{k: v for k, v in im.items() if k != "level"}
                                                            for im in pool["images"]]}
        splits.append(("pool", unlabeled))
    for split, dataset in splits:
        write_instances(dataset, out / f"instances_{split}2019.json")
    return summary


def world_summary(config: WorldConfig) -> dict:
    """The settings ``world.json`` records: the config, the domain gap, shapes, look-alike pairs, level ranges."""
    skus = catalog(config)
    legacy = config.style == "legacy"
    hidden = {"domain", *(("gap", "density", "lying", "standing") if legacy else ())}
    if config.turntable == "plain":  # recorded only when set, so folders written before the option still resume
        hidden.add("turntable")
    return {
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k not in hidden},
        "domain_shift": dataclasses.asdict(config.domain) if legacy else {"gap": config.gap,
                                                                          "jpeg_quality": checkout_jpeg_quality(config)},
        "shapes": sorted({s.shape for s in skus}),
        "lookalike_pairs": [[s.twin_of, s.id] for s in skus if s.twin_of is not None],
        "level_ranges": {k: [list(c), list(n)] for k, (c, n) in LEVEL_RANGES.items()},
        "exemplars": len(exemplar_views(config)),
    }
