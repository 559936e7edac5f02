"""How well `rpc-synth catalog` finds the boxes: a world's exemplars as a photo catalogue (one folder per SKU,
boxes dropped), imported, and every box found compared with the world's true box.

    rpc-synth world --out W --turntable textured --val 0 --test 0 --pool 0 --workers 2
    python examples/catalog_boxes.py --world W --shadows --workers 2

With ``--rpc-root DIR`` the import is kept as an RPC-layout folder: the catalogue as ``train`` and the world's
val, test and pool splits with their labels mapped to the catalogue's category ids by SKU name, for
``python examples/aco_pipeline.py --rpc-root DIR`` (the pipeline on found boxes, to compare with the world's own).

Prints the share of boxes at IoU >= 0.9 (also apart for thin products, at most 8 px across, where one pixel
is 12% of the width) and lists every failure; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from rpc_metrics.io import write_json
from rpc_synth.catalog import build_catalog

THIN_PX = 8


def world_catalogue(world: Path, dest: Path, skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """The world's exemplar photos copied to ``dest/<sku name>/`` (except the SKUs in ``skip``); returns
    ``"sku/photo"`` -> the photo's world file name."""
    data = json.loads((world / "instances_train2019.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    category = {a["image_id"]: a["category_id"] for a in data["annotations"]}
    sources = {}
    for image in data["images"]:
        name = names[category[image["id"]]]
        if name not in skip:
            (dest / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(world / "train2019" / image["file_name"], dest / name / image["file_name"])
            sources[f"{name}/{image['file_name']}"] = image["file_name"]
    return sources


def box_iou(a, b) -> float:
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return iw * ih / (a[2] * a[3] + b[2] * b[3] - iw * ih)


def add_world_splits(world: Path, root: Path) -> list[str]:
    """Copy the world's val, test and pool splits (those with images; the pool's separate labels too) into the
    imported catalogue ``root``, category ids mapped by SKU name to the catalogue's; returns the splits copied.
    ValueError when a split has a SKU the catalogue lacks."""
    categories = json.loads((root / "instances_train2019.json").read_text())["categories"]
    ids = {c["name"]: c["id"] for c in categories}
    copied = []
    for split in ("val", "test", "pool"):
        labels = world / f"instances_{split}2019.json"
        if not labels.is_file() or not json.loads(labels.read_text())["images"]:
            continue
        for path in (labels, world / "pool_truth" / labels.name):  # the mini world keeps the pool's labels apart
            if not path.is_file():
                continue
            doc = json.loads(path.read_text())
            names = {c["id"]: c["name"] for c in doc["categories"]}
            missing = sorted(set(names.values()) - set(ids))
            if missing:
                raise ValueError(f"--rpc-root: the world's {split} split has SKUs the catalogue lacks: {missing}")
            for annotation in doc["annotations"]:
                annotation["category_id"] = ids[names[annotation["category_id"]]]
            write_json({**doc, "categories": categories}, root / path.relative_to(world))
        shutil.copytree(world / f"{split}2019", root / f"{split}2019")
        copied.append(split)
    return copied


def measure(world: Path, *, shadows: bool, workers: int, rpc_root: Path | None = None) -> dict:
    """Import the world's exemplars as a catalogue; every photo's IoU with its true box (0 when no product).
    ``rpc_root``: keep the import there with the world's other splits (:func:`add_world_splits`)."""
    truth_doc = json.loads((world / "instances_train2019.json").read_text())
    by_file = {im["file_name"]: im["id"] for im in truth_doc["images"]}
    truth = {a["image_id"]: a["bbox"] for a in truth_doc["annotations"]}
    with tempfile.TemporaryDirectory() as tmp:
        sources = world_catalogue(world, Path(tmp) / "catalog")
        out = rpc_root or Path(tmp) / "out"
        build_catalog(Path(tmp) / "catalog", out, workers=workers, shadows=shadows, progress=True)
        found = json.loads((out / "instances_train2019.json").read_text())
        if rpc_root is not None:
            add_world_splits(world, rpc_root)
    boxes = {im["source_file"]: a["bbox"] for im, a in zip(found["images"], found["annotations"], strict=True)}
    rows = []
    for source, file_name in sources.items():
        true_box = truth[by_file[file_name]]
        box = boxes.get(source)
        rows.append({"photo": source, "iou": 0.0 if box is None else round(box_iou(box, true_box), 4),
                     "found": box, "true": true_box, "thin": min(true_box[2:]) <= THIN_PX})
    return {"shadows": shadows, "photos": rows}


def summary(rows: list[dict]) -> list[str]:
    ok = np.array([r["iou"] >= 0.9 for r in rows])
    thin = np.array([r["thin"] for r in rows])
    lines = [f"IoU >= 0.9: {ok.sum()}/{len(rows)} = {100 * ok.mean():.2f}% (mean IoU "
             f"{np.mean([r['iou'] for r in rows]):.3f})"]
    for label, part in ((f"thin (<= {THIN_PX} px across)", thin), ("the others", ~thin)):
        if part.any():
            lines.append(f"  {label}: {ok[part].sum()}/{part.sum()} = {100 * ok[part].mean():.2f}%")
    failures = sorted((r for r in rows if r["iou"] < 0.9), key=lambda r: r["iou"])
    lines += [f"  {r['photo']}: IoU {r['iou']:.3f}, found {r['found']}, true {r['true']}" for r in failures]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, required=True, help="a folder written by `rpc-synth world`")
    parser.add_argument("--shadows", action="store_true", help="import with `rpc-synth catalog --shadows`")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write every photo's IoU here")
    parser.add_argument("--rpc-root", type=Path, help="keep the import here as an RPC-layout folder with the "
                        "world's val, test and pool (a new folder)")
    args = parser.parse_args(argv)
    if not (args.world / "instances_train2019.json").is_file():
        parser.error(f"--world {args.world}: no instances_train2019.json; pass a folder written by `rpc-synth world`")
    if args.rpc_root is not None and args.rpc_root.exists():
        parser.error(f"--rpc-root {args.rpc_root}: already exists; give a new folder")
    try:
        result = measure(args.world, shadows=args.shadows, workers=max(1, args.workers), rpc_root=args.rpc_root)
    except ValueError as err:  # the import's input errors and a split with SKUs the catalogue lacks
        parser.error(str(err))
    print("\n".join(summary(result["photos"])))
    if args.json:
        write_json(result, args.json, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
