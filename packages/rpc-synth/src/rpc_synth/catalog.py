"""A store's own products as an RPC-layout exemplar set: ``rpc-synth catalog``.

``CATALOG/<sku name>/*.{jpg,jpeg,png}`` (one product per photo, on a plain or lightly textured surface; hidden
files ignored) becomes ``OUT/train2019/`` (copies under safe unique names) and ``OUT/instances_train2019.json``
(RPC's schema, one box per photo). Each box comes from the product's mask (:mod:`rpc_synth.product_box`: the
coarse-to-fine masks of ``rpc-synth masks``; with ``shadows``, cast shadows cut off).

Category ids are stable across re-imports: ``OUT/sku_ids.json`` records them, new SKUs get new ids, and a SKU
that disappeared is refused unless ``allow_removed`` (its id is then retired, never reused). Image ids are
stable too (``OUT/image_ids.json``, by ``sku/photo``): new photos get new ids, a removed photo's id is not reused.
Every photo is read and boxed before anything is written; unreadable photos are listed together and nothing is written. Photos where
no product is found are left out and listed in ``OUT/catalog_report.json``.
"""

from __future__ import annotations

import csv
import hashlib
import re
import unicodedata
from pathlib import Path

from rpc_metrics.io import FormatError, image_path, load_json, write_bytes, write_instances, write_json

from .image_files import read_image
from .parallel import map_ordered
from .product_box import find_product
from .progress import Progress
from .records import InputError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
MAPPING, REPORT, SKUS_CSV = "sku_ids.json", "catalog_report.json", "skus.csv"
IMAGE_IDS = "image_ids.json"  # "sku/photo" -> image id, kept across imports
DEFAULT_SUPERCATEGORY = "product"


# ------------------------------------------------------------------------------------------- the catalogue


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def scan_catalog(catalog: Path) -> tuple[dict[str, list[Path]], list[str], list[str]]:
    """SKU name -> its photos (sorted), the problems (``sku: no photos``) and the files left aside."""
    if not catalog.is_dir():
        raise InputError(f"{catalog}: not a folder; pass the catalogue folder (one subfolder of photos per SKU)")
    skus, problems, ignored = {}, [], []
    for entry in sorted(filter(_visible, catalog.iterdir())):
        if not entry.is_dir():
            if entry.name != SKUS_CSV:
                ignored.append(entry.name)
            continue
        photos = []
        for path in sorted(filter(_visible, entry.iterdir())):
            if path.is_file() and path.suffix.lower() in PHOTO_SUFFIXES:
                photos.append(path)
            else:
                ignored.append(f"{entry.name}/{path.name}")
        if not photos:
            problems.append(f"{entry.name}/: no photos ({', '.join(PHOTO_SUFFIXES)}) in this SKU folder")
        skus[entry.name] = photos
    if not skus:
        raise InputError(f"{catalog}: no SKU folders; the catalogue holds one subfolder of photos per SKU")
    return skus, problems, ignored


def read_supercategories(catalog: Path, names: list[str], default: str) -> tuple[dict[str, str], list[str]]:
    """Supercategory of each SKU from ``CATALOG/skus.csv`` (columns ``name,supercategory``; ``default`` for the
    SKUs it does not list), and warnings for rows naming no SKU folder."""
    path = catalog / SKUS_CSV
    result, warnings = dict.fromkeys(names, default), []
    if not path.is_file():
        return result, warnings
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
            header = set(rows[0].keys()) if rows else set()
    except (UnicodeDecodeError, csv.Error) as err:
        raise FormatError(str(path), "", f"not a readable CSV ({err})") from None
    if rows and not {"name", "supercategory"} <= header:
        raise FormatError(str(path), "header", "needs the columns name,supercategory")
    seen = set()
    for n, row in enumerate(rows, start=2):
        name, group = (row.get("name") or "").strip(), (row.get("supercategory") or "").strip()
        if name in seen:
            raise FormatError(str(path), f"line {n}", f"SKU {name!r} is listed twice")
        seen.add(name)
        if name not in result:
            warnings.append(f"{path}: line {n}: SKU {name!r} has no folder in {catalog}; ignored")
        elif group:
            result[name] = group
    return result, warnings


def _read_mapping(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """``ids`` and ``retired`` (SKU name -> category id) of a mapping file; ids positive and unique."""
    doc = load_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("ids"), dict):
        raise FormatError(str(path), "", 'expected {"ids": {"sku name": id, ...}, "retired": {...}}')
    ids, retired = doc["ids"], doc.get("retired", {})
    if not isinstance(retired, dict):
        raise FormatError(str(path), "retired", "should be an object {name: id}")
    values = [*ids.values(), *retired.values()]
    bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool) or v < 1]
    if bad:
        raise FormatError(str(path), f"id {bad[0]!r}", "category ids are positive integers")
    if len(set(values)) != len(values):
        raise FormatError(str(path), "", "an id is given to two SKUs (ids and retired together); fix the file")
    if set(ids) & set(retired):
        raise FormatError(str(path), "", f"{sorted(set(ids) & set(retired))} are both in ids and retired")
    return dict(ids), dict(retired)


def assign_ids(mapping: Path, names: list[str], *, allow_removed: bool = False, catalog: str = "") -> dict:
    """The mapping document for the SKUs ``names``: recorded ids kept, retired names restored, new names (in sorted
    order) numbered after the largest id ever given. A recorded SKU missing from ``names`` raises
    :class:`InputError` unless ``allow_removed`` (then its id is retired)."""
    ids, retired = _read_mapping(mapping) if mapping.is_file() else ({}, {})
    missing = sorted(set(ids) - set(names))
    if missing and not allow_removed:
        listed = ", ".join(f"{n!r} (id {ids[n]})" for n in missing)
        raise InputError(
            f"{catalog}: {len(missing)} SKU(s) recorded in {mapping} have no folder any more: {listed}. Removing "
            f"or renaming a SKU would change the dataset's categories. To rename, change the name in {mapping} to "
            "the new folder name (it keeps its id); to drop them on purpose, rerun with --allow-removed (their "
            "ids are retired, never given again)")
    for name in missing:
        retired[name] = ids.pop(name)
    next_id = max([*ids.values(), *retired.values(), 0]) + 1
    for name in sorted(names):
        if name in ids:
            continue
        if name in retired:
            ids[name] = retired.pop(name)
        else:
            ids[name], next_id = next_id, next_id + 1
    return {"ids": dict(sorted(ids.items(), key=lambda kv: kv[1])),
            "retired": dict(sorted(retired.items(), key=lambda kv: kv[1]))}


def assign_image_ids(path: Path, sources: list[str]) -> dict:
    """``{"ids": {"sku/photo": image id}, "next": n}`` for the photos ``sources``: ids recorded in ``path`` kept,
    new photos numbered (in the given order) after every id ever given, so a removed photo's id is never reused."""
    doc = load_json(path) if path.is_file() else {"ids": {}, "next": 1}
    recorded = doc.get("ids") if isinstance(doc, dict) else None
    if not isinstance(recorded, dict) or not isinstance(doc.get("next", 1), int):
        raise FormatError(str(path), "", 'expected {"ids": {"sku/photo": id, ...}, "next": n}; remove the file to '
                                         "number the photos afresh")
    values = list(recorded.values())
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values) or len(set(values)) != len(values):
        raise FormatError(str(path), "ids", "image ids are unique positive integers; remove the file to number the "
                                            "photos afresh")
    next_id = max([doc.get("next", 1), *(v + 1 for v in values)])
    ids = {}
    for source in sources:
        if source in recorded:
            ids[source] = recorded[source]
        else:
            ids[source], next_id = next_id, next_id + 1
    return {"ids": ids, "next": next_id}


def safe_file_name(sku: str, photo: str) -> str:
    """A file name for ``sku/photo`` inside ``train2019/``: ASCII letters, digits, ``_`` and ``-`` from both
    names, then a digest of the original pair (unique, whatever the originals hold), then the suffix."""

    def slug(text: str) -> str:
        ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
        return re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_text).strip("_-")[:40] or "x"

    stem, suffix = Path(photo).stem, Path(photo).suffix.lower()
    digest = hashlib.sha1(f"{sku}/{photo}".encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{slug(sku)}-{slug(stem)}-{digest}{'.jpg' if suffix == '.jpeg' else suffix}"


def _photo_task(task: tuple[str, str, str, int, bool]) -> dict:
    path, sku, photo, refine_px, shadows = task
    where = f"{sku}/{photo}"
    if Path(path).stat().st_size == 0:
        return {"file": where, "error": "empty file (0 bytes)"}
    try:
        image = read_image(path, what="photo")
    except FormatError as err:
        return {"file": where, "error": err.message}
    box, reason, score = find_product(image, refine_px=refine_px, shadows=shadows)
    record = {"file": where, "path": path, "width": int(image.shape[1]), "height": int(image.shape[0])}
    return {**record, "reason": reason} if box is None else {**record, "bbox": box, "mask_score": round(score, 4)}


def _dataset(records: list[dict], mapping: dict, image_ids: dict[str, int], groups: dict[str, str],
             names: list[str]) -> dict:
    ids = mapping["ids"]
    categories = [{"supercategory": groups[n], "id": ids[n], "name": n} for n in sorted(names, key=ids.get)]
    images, annotations = [], []
    for r in records:
        image_id = image_ids[r["file"]]
        x, y, w, h = r["bbox"]
        images.append({"file_name": r["file_name"], "width": r["width"], "height": r["height"], "id": image_id,
                       "source_file": r["file"]})
        annotations.append({"area": w * h, "bbox": [x, y, w, h], "category_id": ids[r["file"].split("/")[0]],
                            "id": image_id, "image_id": image_id, "iscrowd": 0, "segmentation": [],
                            "point_xy": [x + w / 2, y + h / 2], "mask_score": r["mask_score"]})
    return {"info": {"description": "rpc-synth catalog: a store's own products in the RPC layout"}, "licenses": [],
            "categories": categories, "images": images, "annotations": annotations}


def _previous_files(out: Path) -> set[str]:
    """File names of ``train2019/`` the previous import wrote (its instances JSON), to remove stale copies."""
    instances = out / "instances_train2019.json"
    if not instances.is_file():
        return set()
    if not (out / MAPPING).is_file():
        raise InputError(f"{out}: holds an instances_train2019.json without {MAPPING}, not written by `rpc-synth "
                         "catalog`; use a new --out")
    return {im.get("file_name") for im in load_json(instances).get("images", []) if isinstance(im, dict)}


def _copy_photos(train: Path, records: list[dict], bar: Progress) -> None:
    """Copy each photo's bytes to ``train2019/`` (atomically; an identical copy already there is kept)."""
    for r in records:
        target = image_path(train, r["file_name"], source="rpc-synth catalog")
        data = Path(r["path"]).read_bytes()
        if not (target.is_file() and target.read_bytes() == data):
            write_bytes(data, target)
        bar.update()


def build_catalog(catalog: str | Path, out: str | Path, *, workers: int = 1, refine_px: int = 400,
                  allow_removed: bool = False, supercategory: str = DEFAULT_SUPERCATEGORY,
                  shadows: bool = False, progress: bool = True) -> dict:
    """Import the catalogue folder ``catalog`` into ``out`` (RPC layout); return the report (also written to
    ``OUT/catalog_report.json``). Bad input raises :class:`InputError` or :class:`FormatError` before anything is
    written: a SKU recorded in ``OUT/sku_ids.json`` without a folder (unless ``allow_removed``), a bad
    ``skus.csv``, and every unreadable or empty photo and photo-less SKU folder, listed together."""
    catalog, out = Path(catalog), Path(out)
    skus, problems, ignored = scan_catalog(catalog)
    names = list(skus)
    groups, warnings = read_supercategories(catalog, names, supercategory)
    mapping = assign_ids(out / MAPPING, names, allow_removed=allow_removed, catalog=str(catalog))
    previous = _previous_files(out)
    tasks = [(str(path), sku, path.name, refine_px, shadows) for sku, photos in skus.items() for path in photos]
    bar = Progress(len(tasks), "rpc-synth catalog", unit="photos", enabled=progress)
    records = []
    for record in map_ordered(_photo_task, tasks, workers):
        records.append(record)
        bar.update()
    problems += [f"{r['file']}: {r['error']}" for r in records if "error" in r]
    if problems:
        raise InputError(f"{catalog}: {len(problems)} unreadable or empty photo(s) or empty SKU folder(s); fix or "
                         "remove them and rerun (nothing was written):\n  " + "\n  ".join(problems))
    boxed = [r for r in records if "bbox" in r]
    for r in boxed:
        r["file_name"] = safe_file_name(*r["file"].split("/", 1))
    if len({r["file_name"] for r in boxed}) != len(boxed):  # a digest collision: never expected
        raise InputError(f"{catalog}: two photos map to the same file name; rename one of them")
    image_ids = assign_image_ids(out / IMAGE_IDS, [r["file"] for r in boxed])
    dataset = _dataset(boxed, mapping, image_ids["ids"], groups, names)
    no_product = [{"file": r["file"], "reason": r["reason"]} for r in records if "reason" in r]
    counts = {n: 0 for n in names}
    for r in boxed:
        counts[r["file"].split("/", 1)[0]] += 1
    report = {"catalog": str(catalog.resolve()), "skus": len(names), "photos": len(records), "boxed": len(boxed),
              "no_product": no_product, "skus_without_boxes": [n for n in names if not counts[n]],
              "ignored_files": ignored, "warnings": warnings}
    train = out / "train2019"
    train.mkdir(parents=True, exist_ok=True)
    _copy_photos(train, boxed, Progress(len(boxed), "rpc-synth catalog: copying", unit="photos",
                                        enabled=progress and len(boxed) > 200))
    write_json(mapping, out / MAPPING, indent=1)
    write_json(image_ids, out / IMAGE_IDS, indent=1)
    write_json(report, out / REPORT, indent=1)
    write_instances(dataset, out / "instances_train2019.json")
    for name in sorted(previous - {r["file_name"] for r in boxed}):
        try:
            stale = image_path(train, name, source=str(out / "instances_train2019.json"))
        except FormatError:
            continue
        stale.unlink(missing_ok=True)
    return report
