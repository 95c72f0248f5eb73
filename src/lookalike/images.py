"""Safe image loading: bytes from files, URLs or uploads, decoded to RGB with hard limits.

Every failure is an :class:`ImageError` whose ``kind`` tells the caller what went wrong
(the HTTP layer maps kinds to status codes, ingest writes them to the skip report), so a
bad photo in a batch of ten thousand is one line in a report, never a crash.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = Union[str, Path, bytes, Image.Image]

# Magic numbers of the formats we decode.  A file that starts with one of these but does not
# decode is "corrupt"; a file that starts with none of them is "unsupported".
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


class ImageError(ValueError):
    """An image could not be read. ``kind`` is one of: missing, empty, too_large, too_many_pixels,
    unsupported, corrupt, fetch."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    url_timeout: float = 10.0


def sniff_format(data: bytes) -> str | None:
    """The image format named by the file's first bytes, or None if it is not one we read."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def content_hash(data: bytes) -> str:
    """A short, stable fingerprint of the image bytes: ingest re-embeds only when it changes."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def fetch_url(url: str, limits: ImageLimits, client: httpx.Client | None = None) -> bytes:
    """Download at most ``limits.max_bytes`` from an http(s) URL, with a timeout."""
    own = client is None
    client = client or httpx.Client(timeout=limits.url_timeout, follow_redirects=True)
    try:
        with client.stream("GET", url, timeout=limits.url_timeout) as response:
            if response.status_code != 200:
                raise ImageError("fetch", f"GET {url} answered HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limits.max_bytes:
                raise ImageError("too_large", f"{url} is {int(declared)} bytes; the limit is {limits.max_bytes}")
            chunks, total = [], 0
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > limits.max_bytes:
                    raise ImageError("too_large", f"{url} is larger than the limit of {limits.max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.TimeoutException as exc:
        raise ImageError("fetch", f"GET {url} timed out after {limits.url_timeout:g} s") from exc
    except httpx.HTTPError as exc:
        raise ImageError("fetch", f"GET {url} failed: {exc}") from exc
    finally:
        if own:
            client.close()


def read_file(path: Path, limits: ImageLimits) -> bytes:
    if not path.exists():
        raise ImageError("missing", f"file not found: {path}")
    if not path.is_file():
        raise ImageError("missing", f"not a file: {path}")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise ImageError("too_large", f"{path} is {size} bytes; the limit is {limits.max_bytes}")
    return path.read_bytes()


def read_bytes(source: str | Path | bytes, limits: ImageLimits, client: httpx.Client | None = None) -> bytes:
    """The raw bytes of an image given as bytes, a local path or an http(s) URL."""
    if isinstance(source, bytes):
        if len(source) > limits.max_bytes:
            raise ImageError("too_large", f"image is {len(source)} bytes; the limit is {limits.max_bytes}")
        return source
    text = str(source)
    if is_url(text):
        return fetch_url(text, limits, client)
    return read_file(Path(text), limits)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB on white: transparent parts of packshots must not turn black, CMYK and 16-bit must not break."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = image.point(lambda v: v / 256.0).convert("L") if image.mode != "F" else image.convert("L")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def decode(data: bytes, limits: ImageLimits = ImageLimits(), draft_size: int | None = None, name: str = "image") -> Image.Image:
    """Decode bytes to an upright RGB image, refusing empty, corrupt, unsupported and oversized input.

    ``draft_size`` lets the JPEG decoder downscale by a power of two while decoding, which is
    several times faster than decoding full size and resizing afterwards.
    """
    if not data:
        raise ImageError("empty", f"{name} is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError("unsupported", f"{name} is not an image in a supported format ({', '.join(SUPPORTED_FORMATS)})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageError("corrupt", f"{name} has no pixels ({width}x{height})")
            if width * height > limits.max_pixels:
                raise ImageError("too_many_pixels", f"{name} is {width}x{height} pixels; the limit is {limits.max_pixels}")
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return _to_rgb(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("too_many_pixels", f"{name}: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("corrupt", f"{name} is a damaged or truncated {fmt} file ({exc})") from exc


def load_image(source: ImageSource, limits: ImageLimits = ImageLimits(), draft_size: int | None = None) -> Image.Image:
    """Load any supported source (PIL image, bytes, path or URL) as an upright RGB image."""
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    name = "uploaded image" if isinstance(source, bytes) else str(source)
    return decode(read_bytes(source, limits), limits, draft_size=draft_size, name=name)


def load_source_or_thumbnail(source: str | None, thumbnail: bytes | None, limits: ImageLimits = ImageLimits(),
                             draft_size: int | None = None, name: str = "product") -> tuple[Image.Image, bool]:
    """A stored product's photo from its source, or from its stored thumbnail when the source can
    no longer be read (moved file, dead URL); returns (image, came from the thumbnail).  Training
    and re-indexing read products long after ingest, so a missing original is not fatal."""
    if source:
        try:
            return load_image(source, limits, draft_size=draft_size), False
        except ImageError:
            pass
    if thumbnail:
        return load_image(thumbnail, limits), True
    raise ImageError("missing", f"{name}: neither its image ({source}) nor a stored thumbnail can be read")


def thumbnail_jpeg(image: Image.Image, size: int = 256, quality: int = 85) -> bytes:
    """A small JPEG kept in the store so results can be shown without the original files."""
    thumb = image.copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()
