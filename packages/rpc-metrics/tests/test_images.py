"""Image sizes read from headers written by hand (no image library), and the refusal of decompression bombs."""

import struct
import zlib

import pytest

from rpc_metrics.images import MAX_IMAGE_PIXELS, check_image_size, image_size
from rpc_metrics.io import FormatError


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int) -> bytes:
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _chunk(b"IDAT", zlib.compress(b"\0" * 4)) + _chunk(b"IEND", b"")


def jpeg(width: int, height: int, frame: int = 0xC0) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    exif = b"\xff\xe1" + struct.pack(">H", 2 + 300) + b"\0" * 300  # a long segment to seek over
    sof = bytes([0xFF, frame]) + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\0"
    return b"\xff\xd8" + app0 + b"\xff" + exif + sof + b"\xff\xd9"  # one fill byte before a marker


def bmp(width: int, height: int) -> bytes:
    return b"BM" + b"\0" * 12 + struct.pack("<Iii", 40, width, height) + b"\0" * 30


def webp(kind: bytes, width: int, height: int) -> bytes:
    if kind == b"VP8X":
        data = b"\0" * 4 + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    elif kind == b"VP8L":
        data = b"\x2f" + ((width - 1) | (height - 1) << 14).to_bytes(4, "little") + b"\0" * 5
    else:
        data = b"\0\0\0\x9d\x01\x2a" + struct.pack("<HH", width, height)
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(data)) + b"WEBP" + kind + struct.pack("<I", len(data)) + data


@pytest.mark.parametrize("make", [
    png, jpeg, lambda w, h: jpeg(w, h, 0xC2), bmp, lambda w, h: bmp(w, -h),
    lambda w, h: b"GIF89a" + struct.pack("<HH", w, h) + b"\0" * 20,
    lambda w, h: webp(b"VP8X", w, h), lambda w, h: webp(b"VP8L", w, h), lambda w, h: webp(b"VP8 ", w, h),
])
def test_sizes_come_from_the_header(tmp_path, make):
    path = tmp_path / "image"
    path.write_bytes(make(53, 37))
    assert image_size(path) == (53, 37) == check_image_size(path)


def test_a_decompression_bomb_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png(100_000, 100_000))  # 10 gigapixels in about 60 bytes
    with pytest.raises(FormatError, match=r"bomb\.png: the header claims 100000 x 100000 pixels, more than"):
        check_image_size(path)
    side = int(MAX_IMAGE_PIXELS**0.5)
    path.write_bytes(jpeg(side, side))
    assert check_image_size(path) == (side, side)
    with pytest.raises(FormatError, match="decompression bomb"):
        check_image_size(path, max_pixels=side * side - 1)


def test_missing_cut_empty_and_unknown_files(tmp_path):
    with pytest.raises(FormatError, match=r"nowhere\.jpg: image file not found"):
        check_image_size(tmp_path / "nowhere.jpg")
    with pytest.raises(FormatError, match="is a folder"):
        check_image_size(tmp_path)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpeg(8, 8)[:40])
    with pytest.raises(FormatError, match=r"cut\.jpg: unreadable image: its header is cut short"):
        check_image_size(cut)
    empty = tmp_path / "empty.png"
    empty.write_bytes(png(0, 7))
    with pytest.raises(FormatError, match="empty image"):
        check_image_size(empty, source="the exemplar")
    other = tmp_path / "x.tif"
    other.write_bytes(b"II*\0" + b"\0" * 40)
    assert image_size(other) is None and check_image_size(other) is None  # decoded under the decoder's own limit
