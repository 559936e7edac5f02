"""``dpsnet count`` on files: the images of the command line (files and folders), the receipts as JSON lines, and
pictures with boxes and SKU names (drawn by :func:`dpsnet.inference.visualize.draw`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from rpc_metrics.files import atomic_output

from ..data import write_image
from ..inference.visualize import draw
from ..progress import Progress
from .counter import Counter, Receipt

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def collect_images(paths: Sequence[str | Path]) -> tuple[list[Path], bool]:
    """The image files named by ``paths`` (a folder: its images with a known suffix, sorted by name) and whether
    a folder was among them. A missing path, or an empty folder, raises ``FileNotFoundError`` naming it."""
    images, folder = [], False
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder: {path}")
            images += found
            folder = True
        elif path.is_file():
            images.append(path)
        else:
            raise FileNotFoundError(f"image not found: {path}")
    if not images:
        raise FileNotFoundError("no images given")
    return images, folder


def count_files(counter: Counter, paths: Sequence[str | Path], *, json_out: str | Path | None = None,
                draw_dir: str | Path | None = None, progress: bool = True,
                echo: Callable[[str], None] = print) -> list[Receipt]:
    """Count every image of ``paths``: a receipt table per image through ``echo`` (or, with ``json_out``, one JSON
    line per image written atomically to that file), pictures in ``draw_dir`` (``<image stem>.png``: boxes of the
    counted detections with SKU names, the density overlay), a progress line on stderr when a folder is given."""
    images, folder = collect_images(paths)
    report = Progress("count") if progress and folder else None
    outputs: list | None = [] if draw_dir is not None else None
    receipts = counter.count_many(images, progress=report, outputs=outputs)
    if json_out is not None:
        with atomic_output(json_out) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for receipt in receipts:
                f.write(json.dumps(receipt.to_dict(), allow_nan=False, ensure_ascii=False) + "\n")
    else:
        for receipt in receipts:
            echo(receipt.table())
    if outputs is not None:
        out = Path(draw_dir)
        out.mkdir(parents=True, exist_ok=True)
        for path, (image, det) in zip(images, outputs, strict=True):
            picture = draw(image.permute(1, 2, 0).cpu().numpy(), det, counter.categories, counter.threshold)
            write_image(out / f"{path.stem}.png", picture)
    return receipts
