"""Apply a method (``cyclegan`` translator, ``camera`` fitted to the checkout photos, or ``histogram`` matching) to a
dataset; write images + annotations.

Output, directly usable as a training dataset: ``OUT/render2019/<file_name>`` (same names as the input)
and ``OUT/instances_render2019.json`` (the input JSON unchanged but for a top-level ``render`` record of
the method: boxes, masks, points, levels stay valid because products are not moved).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rpc_metrics.io import image_path, read_instances, write_instances

from ..generate import InputError
from ..image_files import folder_images, read_image, write_jpeg
from ..progress import Progress
from . import native_bf16_cpu, require_torch
from .camera import files_jpeg_quality, fit_camera, render_camera
from .data import listed_images
from .histogram import channel_histograms, match_histograms

METHODS = ("cyclegan", "camera", "histogram")
FIT_SOURCES, FIT_TARGETS = 32, 120  # images the camera is fitted on (evenly spaced through each set)
IMAGES_DIR = "render2019"
INSTANCES = "instances_render2019.json"


def translate_image(generator, image: np.ndarray, seed: int = 0, amp: bool = False) -> np.ndarray:
    """Run ``generator`` fully convolutionally on a whole BGR ``uint8[H, W, 3]`` image (reflection-padded to
    its size multiple, cropped back); returns the translated image, same shape. ``seed`` draws the injected
    noise of a generator that has it (on the CPU: the same noise on any device). ``amp``: the generator's
    layers under bfloat16 autocast on its device (the residual sum, the noise and the clamps stay float32; the
    noise is the same draw as without)."""
    import torch
    import torch.nn.functional as F

    from .train import to_image, to_tensor

    h, w = image.shape[:2]
    m = generator.multiple
    pad_h, pad_w = -h % m, -w % m
    with torch.no_grad():
        device = next(generator.parameters()).device
        x = to_tensor(image[None]).to(device)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            y = generator(x, add_noise=False)
        y = generator.add_noise(y.float().clamp(-1, 1), torch.Generator().manual_seed(seed))[..., :h, :w]
    return to_image(y)[0]


def _spaced(items: list, n: int) -> list:
    """At most ``n`` of ``items``, evenly spaced (all when there are fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def render_dataset(images: str | Path, ann: str | Path, out: str | Path, *, method: str = "cyclegan",
                   model: str | Path | None = None, target: str | Path | None = None, jpeg_quality: int = 95,
                   threads: int | None = None, amp: bool | None = None, device: str = "cpu",
                   progress: bool = True) -> dict:
    """Translate every image listed in ``ann`` (from folder ``images``) into ``OUT/render2019/``.

    ``cyclegan`` needs ``model`` (a ``render train`` checkpoint); ``camera`` and ``histogram`` need ``target`` (a
    folder of checkout images whose pooled per-channel histograms are matched, and to which the camera is fitted). Every input is checked before
    anything is written. ``threads`` sets torch's CPU threads while translating; ``device`` (``cpu``,
    ``cuda[:N]``, ``auto``) runs the translator there; ``amp`` runs it under bfloat16 autocast (None: on a GPU,
    and on a CPU that computes bfloat16 natively). Returns the written dataset.
    """
    if method not in METHODS:
        raise InputError(f"--method should be one of {', '.join(METHODS)}, got {method!r}")
    dataset = read_instances(ann)
    paths = listed_images(dataset, images, str(ann))
    if method == "cyclegan":
        if model is None:
            raise InputError("--method cyclegan needs --model (a checkpoint of `rpc-synth render train`)")
        torch = require_torch()
        from . import resolve_device
        from .train import load_translator

        dev = resolve_device(device)
        previous_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)

        generator, counts = load_translator(model)
        generator = generator.to(dev)
        if amp is None:
            amp = dev.type == "cuda" or native_bf16_cpu()
        amp = bool(amp)

        def translate(image: np.ndarray, image_id: int) -> np.ndarray:
            if counts is not None:
                image = match_histograms(image, counts)
            return translate_image(generator, image, seed=image_id, amp=amp)

        record = {"method": method, "model": str(model), "precision": "bfloat16" if amp else "float32",
                  "device": dev.type}
    else:
        if target is None:
            raise InputError(f"--method {method} needs --target (a folder of checkout images)")
        targets = folder_images(target)
        counts = channel_histograms(read_image(p) for p in targets)
        record = {"method": method, "target": str(target)}
        if method == "camera":
            camera, fit = fit_camera([read_image(p) for p in _spaced(paths, FIT_SOURCES)],
                                     [read_image(p) for p in _spaced(targets, FIT_TARGETS)], counts,
                                     files_jpeg_quality(targets))
            record["camera"] = fit
            translate = lambda image, image_id: render_camera(image, counts, camera, image_id)  # noqa: E731
        else:
            translate = lambda image, _image_id: match_histograms(image, counts)  # noqa: E731
    out = Path(out)
    bar = Progress(len(paths), f"rpc-synth render apply ({method})", enabled=progress)
    try:
        for im, path in zip(dataset["images"], paths, strict=True):
            write_jpeg(image_path(out / IMAGES_DIR, im["file_name"], source=str(ann)),
                       translate(read_image(path), int(im["id"])), jpeg_quality)
            bar.update()
    finally:
        if method == "cyclegan":
            torch.set_num_threads(previous_threads)
    rendered = {**dataset, "render": record}
    write_instances(rendered, out / INSTANCES)
    return rendered
