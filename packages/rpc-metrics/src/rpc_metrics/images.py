"""Image files before decoding: their size read from the header (PNG, JPEG, BMP, GIF, WebP), and the refusal of
decompression bombs (a small file whose header claims more pixels than any checkout photo has).

No image library here (rpc-metrics installs with numpy, pycocotools and click alone): the packages that decode
images (with OpenCV) call :func:`check_image_size` first, then decode.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import BinaryIO

from rpc_metrics.files import FormatError

# 100 megapixels, 300 MB decoded as BGR: about 30 times an RPC checkout photo (1,800 x 1,800). A header claiming
# more is refused before any pixel is decoded.
MAX_IMAGE_PIXELS = 100_000_000

_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, ...): every 0xC0-0xCF but DHT, JPG and DAC.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset([0x01, *range(0xD0, 0xD9)])  # TEM, RST0-7, SOI: markers without a segment
# The marker after a scan's entropy-coded data: 0xFF followed by neither a stuffed 0x00, a restart (0xD0-0xD7) nor fill.
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


class _Truncated(Exception):
    pass


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) < n:
        raise _Truncated
    return data


def _jpeg_size(f: BinaryIO) -> tuple[int, int]:
    """Walk the segments after SOI to the first start-of-frame; its height and width."""
    while True:
        if _read(f, 1) != b"\xff":
            raise _Truncated
        marker = _read(f, 1)[0]
        while marker == 0xFF:  # fill bytes
            marker = _read(f, 1)[0]
        if marker in _JPEG_NO_LENGTH:
            continue
        if marker == 0xD9:  # end of image before any frame
            raise _Truncated
        (length,) = struct.unpack(">H", _read(f, 2))
        if marker in _JPEG_FRAMES:
            _, height, width = struct.unpack(">BHH", _read(f, 5))
            return width, height
        f.seek(length - 2, os.SEEK_CUR)


def _webp_size(f: BinaryIO) -> tuple[int, int]:
    chunk = _read(f, 4)
    head = _read(f, 4 + 10)[4:]  # the chunk's size, then its first bytes
    if chunk == b"VP8X":
        return 1 + int.from_bytes(head[4:7], "little"), 1 + int.from_bytes(head[7:10], "little")
    if chunk == b"VP8L":
        bits = int.from_bytes(head[1:5], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", head[6:10])
        return width & 0x3FFF, height & 0x3FFF
    raise _Truncated


def _size(f: BinaryIO) -> tuple[int, int] | None:
    head = f.read(30)
    if head.startswith(_PNG):
        if head[12:16] != b"IHDR":
            raise _Truncated
        return struct.unpack(">II", head[16:24])
    if head.startswith(b"\xff\xd8"):
        f.seek(2)
        return _jpeg_size(f)
    if head.startswith(b"BM") and len(head) >= 26:
        if struct.unpack("<I", head[14:18])[0] == 12:  # OS/2 header: 16-bit sizes
            return struct.unpack("<HH", head[18:22])
        width, height = struct.unpack("<ii", head[18:26])
        return abs(width), abs(height)
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return struct.unpack("<HH", head[6:10])
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        f.seek(12)
        return _webp_size(f)
    return None


def image_size(path: str | os.PathLike, *, source: str | None = None) -> tuple[int, int] | None:
    """``(width, height)`` of an image file from its header, without decoding it; None for a format this module
    does not read (TIFF, ...). A missing file, a folder, or a PNG/JPEG/BMP/GIF/WebP header cut short raise
    :class:`FormatError` naming the file (``source``, else the path)."""
    path = Path(path)
    name = source or str(path)
    try:
        with open(path, "rb") as f:
            return _size(f)
    except FileNotFoundError:
        raise FormatError(name, "", "image file not found; check the path") from None
    except IsADirectoryError:
        raise FormatError(name, "", "is a folder, expected an image file") from None
    except (_Truncated, struct.error):
        raise FormatError(name, "", "unreadable image: its header is cut short or malformed") from None


def check_image_size(path: str | os.PathLike, *, max_pixels: int = MAX_IMAGE_PIXELS,
                     source: str | None = None) -> tuple[int, int] | None:
    """:func:`image_size`, refusing more than ``max_pixels`` pixels (a decompression bomb) or an empty image with a
    :class:`FormatError` naming the file; call it before decoding."""
    size = image_size(path, source=source)
    if size is not None:
        width, height = size
        if width * height > max_pixels:
            raise FormatError(source or str(path), "", f"the header claims {width} x {height} pixels, more than "
                              f"{max_pixels:,} (a decompression bomb?); refused before decoding")
        if width == 0 or height == 0:
            raise FormatError(source or str(path), "", f"the header claims an empty image ({width} x {height})")
    return size


def jpeg_cut_short(data: bytes) -> bool:
    """Whether JPEG ``data`` ends before its end-of-image marker: a file cut short (a failed copy, a full disk), which
    OpenCV decodes without an error, the missing part grey. Bytes after the marker (a phone's embedded video) are
    fine; ``data`` that is not a JPEG is not judged here (False)."""
    if not data.startswith(b"\xff\xd8"):
        return False
    if data.rstrip(b"\x00").endswith(b"\xff\xd9"):  # nearly every file: no walk needed
        return False
    pos = 2
    while pos + 2 <= len(data):
        if data[pos] != 0xFF:
            return True  # not a marker where one should be: the walk lost its way in damaged data
        marker = data[pos + 1]
        if marker == 0xD9:
            return False
        if marker == 0xFF or marker in _JPEG_NO_LENGTH:
            pos += 1 if marker == 0xFF else 2
            continue
        if pos + 4 > len(data):
            return True
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:  # start of scan: its entropy-coded data runs to the next marker
            found = _JPEG_SCAN_END.search(data, pos)
            if found is None:
                return True
            pos = found.start()
    return True
