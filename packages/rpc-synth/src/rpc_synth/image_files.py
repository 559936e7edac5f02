"""Image files, read and written: every image rpc-synth reads or writes goes through here.

Reading checks the header first (:func:`rpc_metrics.images.check_image_size`: a decompression bomb is refused
before any pixel is decoded) and that a JPEG is whole, then decodes with OpenCV; a missing, malformed, truncated
or undecodable file is a :class:`rpc_metrics.io.FormatError` naming it. Writing encodes in memory and writes the
bytes atomically (:func:`rpc_metrics.io.write_bytes`), so a killed run never leaves a half-written image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from rpc_metrics.images import check_image_size, jpeg_cut_short
from rpc_metrics.io import FormatError, write_bytes

# The image files a folder of images is read for (a target domain, backgrounds, unlabeled photos).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# PNG compression of the masks (lossless at every level; 3 trades size for speed).
MASK_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 3]


def read_image(path: str | os.PathLike, source: str = "", *, what: str = "image file",
               grayscale: bool = False) -> np.ndarray:
    """BGR ``uint8[H, W, 3]`` (``grayscale``: ``uint8[H, W]``) of an image file.

    A missing, oversized (more pixels than :data:`rpc_metrics.images.MAX_IMAGE_PIXELS`) or undecodable file raises
    :class:`FormatError` naming it: ``SOURCE: PATH: ...`` when ``source`` (the JSON that lists it) is given, else
    ``PATH: ...``; ``what`` says what the file is (``"exemplar image"``, ``"mask"``).
    """
    name, entry = (source, str(path)) if source else (str(path), "")
    try:
        check_image_size(path)
    except FormatError as err:
        raise FormatError(name, entry, f"{what}: {err.message}") from None
    data = Path(path).read_bytes()
    if jpeg_cut_short(data):
        raise FormatError(name, entry, f"this {what} is cut short (a truncated JPEG); copy or make it again")
    # The file is read once; imdecode and imread share their decoders, so the pixels are imread's.
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR)
    if image is None:
        raise FormatError(name, entry, f"cannot read this {what}: not an image OpenCV can decode")
    return image


def folder_images(folder: str | os.PathLike, what: str = "") -> list[Path]:
    """The image files (:data:`IMAGE_SUFFIXES`) directly in ``folder``, sorted by name, hidden files (``.name``:
    macOS ``._`` companions, a killed writer's temporary files) left out; a path that is not a
    folder, or a folder without images, raises :class:`FormatError` naming it (and what the folder should hold,
    ``what``: ``"background images"``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FormatError(str(folder), "", f"not a folder; pass the folder of {what or 'images'}")
    paths = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
    if not paths:
        raise FormatError(str(folder), "", f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder"
                          + (f" of {what}" if what else ""))
    return paths


def write_image(path: str | os.PathLike, image: np.ndarray, params: Sequence[int] = ()) -> Path:
    """Encode ``image`` in the format of ``path``'s suffix (``.jpg``, ``.png``) with OpenCV's ``params`` and
    write it atomically; a suffix OpenCV cannot encode raises :class:`FormatError` naming the file."""
    path = Path(path)
    try:
        ok, encoded = cv2.imencode(path.suffix, image, list(params))
    except cv2.error:
        ok = False
    if not ok:
        raise FormatError(str(path), "", f"could not encode the image as {path.suffix or 'no suffix'}; "
                          "use .jpg or .png")
    return write_bytes(encoded.tobytes(), path)


def write_jpeg(path: str | os.PathLike, image: np.ndarray, quality: int, *, optimize: bool | None = None) -> Path:
    """:func:`write_image` as JPEG of ``quality``; ``optimize`` (when not None) sets libjpeg's Huffman
    optimisation explicitly."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    if optimize is not None:
        params += [cv2.IMWRITE_JPEG_OPTIMIZE, int(optimize)]
    return write_image(path, image, params)


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """A boolean mask as a PNG of 0 and 255."""
    return write_image(path, mask.astype(np.uint8) * 255, MASK_PNG)
