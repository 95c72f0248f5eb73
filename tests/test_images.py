"""Image decoding: every odd input a shop's catalogue or a shopper's phone produces."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lookalike.images import ImageError, ImageLimits, decode, load_image, read_bytes, sniff_format, thumbnail_jpeg

from .conftest import ROOT

PHOTO = ROOT / "examples" / "demo" / "images" / "878ff7a3.jpg"


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def test_real_jpeg_decodes_to_rgb():
    image = load_image(PHOTO)
    assert image.mode == "RGB" and min(image.size) > 100


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    decoded = decode(encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (20, 40)


def test_alpha_is_composited_on_white_not_black():
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    decoded = decode(encode(image, "PNG"))
    assert decoded.getpixel((5, 5)) == (255, 255, 255)


def test_palette_with_transparency():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    image.info["transparency"] = 0
    decoded = decode(encode(image, "PNG", transparency=0))
    assert decoded.mode == "RGB" and decoded.getpixel((1, 1)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "CMYK", "1", "I;16", "LA"])
def test_other_modes_become_rgb(mode):
    image = Image.new(mode, (12, 9))
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    decoded = decode(encode(image, fmt))
    assert decoded.mode == "RGB" and decoded.size == (12, 9)


def test_webp_gif_bmp_are_read():
    image = Image.new("RGB", (16, 16), (10, 200, 30))
    for fmt in ("WEBP", "GIF", "BMP"):
        assert decode(encode(image, fmt)).size == (16, 16), fmt


def test_empty_file_is_reported():
    with pytest.raises(ImageError) as info:
        decode(b"", name="x.jpg")
    assert info.value.kind == "empty" and "x.jpg" in str(info.value)


def test_text_file_is_unsupported():
    with pytest.raises(ImageError) as info:
        decode(b"id,image\n1,a.jpg\n")
    assert info.value.kind == "unsupported"


def test_truncated_jpeg_is_corrupt():
    data = PHOTO.read_bytes()
    with pytest.raises(ImageError) as info:
        decode(data[: len(data) // 2], name="half.jpg")
    assert info.value.kind == "corrupt" and "half.jpg" in info.value.message


def test_garbage_after_magic_is_corrupt():
    with pytest.raises(ImageError) as info:
        decode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    assert info.value.kind == "corrupt"


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims enormous dimensions: a decompression bomb's first step."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")


def test_pixel_limit_stops_decompression_bombs():
    with pytest.raises(ImageError) as info:
        decode(_png_header_only(50_000, 50_000), ImageLimits(max_pixels=40_000_000))
    assert info.value.kind == "too_many_pixels"


def test_byte_limit():
    with pytest.raises(ImageError) as info:
        read_bytes(PHOTO.read_bytes(), ImageLimits(max_bytes=100))
    assert info.value.kind == "too_large"
    with pytest.raises(ImageError) as info:
        read_bytes(PHOTO, ImageLimits(max_bytes=100))
    assert info.value.kind == "too_large"


def test_missing_file(tmp_path):
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "nope.jpg")
    assert info.value.kind == "missing" and "nope.jpg" in info.value.message


def test_draft_mode_decodes_smaller_but_same_picture():
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).resize((1024, 1024))
    data = encode(big, "JPEG")
    small = decode(data, draft_size=224)
    assert 224 <= min(small.size) < 1024


def test_sniff_and_thumbnail():
    assert sniff_format(PHOTO.read_bytes()) == "JPEG"
    thumb = thumbnail_jpeg(load_image(PHOTO), 64)
    assert max(Image.open(io.BytesIO(thumb)).size) == 64
