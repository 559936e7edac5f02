"""Reading exemplar sets (RPC train-style instances JSON + image folder) with every input check up front."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpc_metrics.io import FormatError, read_instances
from rpc_metrics.io import image_path as safe_image_path


@dataclass(frozen=True)
class Exemplar:
    """One annotated product photo: ``bbox`` [x, y, w, h] in pixels of the image at ``path``."""

    image_id: int
    file_name: str
    path: Path
    width: int
    height: int
    category_id: int
    bbox: tuple[float, float, float, float]
    annotation: dict


def load_exemplars(
    instances: Any, image_dir: str | Path, *, source: str | None = None, check_files: bool = True
) -> tuple[dict, list[Exemplar]]:
    """Validate an exemplar set; return the dataset and one :class:`Exemplar` per annotated image.

    Raises :class:`FormatError` naming the file and entry for: an invalid JSON, a ``file_name`` that leaves
    ``image_dir``, a missing image file, an image with other than one annotation, a box outside its image.
    """
    name = source or (str(instances) if isinstance(instances, (str, Path)) else "<exemplars>")
    dataset = read_instances(instances, source=name)
    images = {im["id"]: im for im in dataset["images"]}
    by_image: dict[int, list[dict]] = {}
    for ann in dataset["annotations"]:
        if ann.get("iscrowd", 0) == 0:
            by_image.setdefault(ann["image_id"], []).append(ann)
    exemplars = []
    for image_id, anns in by_image.items():
        image = images[image_id]
        entry = f"images id={image_id} ({image['file_name']!r})"
        if len(anns) != 1:
            raise FormatError(name, entry, f"an exemplar photo should hold exactly one product, found {len(anns)} annotations")
        path = safe_image_path(image_dir, image["file_name"], source=name)
        if check_files and not path.is_file():
            raise FormatError(name, entry, f"image file not found: {path}; check --images")
        if "width" not in image or "height" not in image:
            raise FormatError(name, entry, "needs width and height to check its box")
        ann = anns[0]
        x, y, w, h = (float(v) for v in ann["bbox"])
        if x < -0.5 or y < -0.5 or x + w > image["width"] + 0.5 or y + h > image["height"] + 0.5 or w < 2 or h < 2:
            raise FormatError(
                name, f"annotations id={ann['id']}",
                f"bbox {ann['bbox']} lies outside its {image['width']}x{image['height']} image (or is under 2 px)",
            )
        exemplars.append(
            Exemplar(image_id, image["file_name"], path, int(image["width"]), int(image["height"]),
                     int(ann["category_id"]), (x, y, w, h), ann)
        )
    return dataset, exemplars
