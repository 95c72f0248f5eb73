"""Safe image loading: bytes from files, URLs or uploads, decoded to RGB with hard limits.

Every failure is an :class:`ImageError` whose ``kind`` tells the caller what went wrong
(the HTTP layer maps kinds to status codes, ingest writes them to the skip report), so a
bad photo in a batch of ten thousand is one line in a report, never a crash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .security.paths import PathPolicy, PathRefused
from .security.urls import Downloader, DownloadError, UrlRefused, strip_credentials

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
    unsupported, corrupt, fetch, busy (no download slot free), blocked_url, forbidden_path."""

    def __init__(self, kind: str, message: str):
        message = clean_message(message)
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        """Picklable with both fields (a process-pool ingest sends errors back to the driver)."""
        return (type(self), (self.kind, self.message))


_ADDRESS = re.compile(r" (?:object )?at 0x[0-9a-fA-F]+")


def clean_message(text: str) -> str:
    """A message fit for a client: no memory addresses from a library's repr."""
    return _ADDRESS.sub("", text)


@dataclass(frozen=True)
class ImageLimits:
    """How far reading one image may go: bytes, pixels, download time, which URLs and paths."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    url_timeout: float = 10.0
    allow_private_urls: bool = False
    paths: PathPolicy = field(default_factory=PathPolicy)

    def confined(self, paths: PathPolicy) -> ImageLimits:
        """The same limits, with server-side paths confined by ``paths``."""
        return dataclasses.replace(self, paths=paths)


class PixelBudget:
    """Caps the pixels being decoded at once across threads: six 40-megapixel PNGs arriving
    together would otherwise need gigabytes.  An image larger than the whole budget waits until
    it can take all of it."""

    def __init__(self, total: int):
        self.total = max(1, total)
        self.free = self.total
        self._cond = threading.Condition()

    @contextmanager
    def take(self, pixels: int) -> Iterator[None]:
        need = min(max(1, pixels), self.total)
        with self._cond:
            self._cond.wait_for(lambda: self.free >= need)
            self.free -= need
        try:
            yield
        finally:
            with self._cond:
                self.free += need
                self._cond.notify_all()


DECODE_BUDGET = PixelBudget(80_000_000)


def set_decode_budget(pixels: int) -> None:
    """Resize the process-wide decode budget (the ``max_decode_pixels`` setting)."""
    global DECODE_BUDGET
    if pixels != DECODE_BUDGET.total:
        DECODE_BUDGET = PixelBudget(pixels)


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


def fetch_url(url: str, limits: ImageLimits, downloader: Downloader | None = None) -> bytes:
    """Download at most ``limits.max_bytes`` from an http(s) URL under the URL policy."""
    own = downloader is None
    downloader = downloader or Downloader(limits.max_bytes, limits.url_timeout, limits.allow_private_urls)
    try:
        return downloader.fetch(url)
    except UrlRefused as exc:
        raise ImageError("blocked_url", str(exc)) from exc
    except DownloadError as exc:
        raise ImageError(exc.kind, str(exc)) from exc
    finally:
        if own:
            downloader.close()


def read_file(path: Path, limits: ImageLimits) -> bytes:
    try:
        path = limits.paths.check(path, "image path")
    except PathRefused as exc:
        raise ImageError("forbidden_path", str(exc)) from exc
    if not path.exists():
        raise ImageError("missing", f"file not found: {path}")
    if not path.is_file():
        raise ImageError("missing", f"not a file: {path}")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise ImageError("too_large", f"{path} is {size} bytes; the limit is {limits.max_bytes}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageError("missing", f"cannot read {path}: {exc.strerror}") from exc


def read_bytes(source: str | Path | bytes, limits: ImageLimits, downloader: Downloader | None = None) -> bytes:
    """The raw bytes of an image given as bytes, a local path or an http(s) URL."""
    if isinstance(source, bytes):
        if len(source) > limits.max_bytes:
            raise ImageError("too_large", f"image is {len(source)} bytes; the limit is {limits.max_bytes}")
        return source
    text = str(source)
    if is_url(text):
        return fetch_url(text, limits, downloader)
    return read_file(Path(text), limits)


def display_name(source: str | Path) -> str:
    """How an image source appears in messages and stored references (URL credentials removed)."""
    text = str(source)
    return strip_credentials(text) if is_url(text) else text


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB on white: transparent parts of packshots must not turn black, CMYK and 16-bit must not break."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _scaled_to_8_bits(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def _scaled_to_8_bits(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images as 8-bit grey: integer data by its type's range
    when it uses it, otherwise (12-bit sensors, floats in 0..1 or any range) by the range the
    data actually spans, so they do not embed as nearly black."""
    values = np.asarray(image, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return Image.new("L", image.size, 0)
    low, high = float(finite.min()), float(finite.max())
    if image.mode.startswith("I;16") and high > 4095:
        low, high = 0.0, 65535.0
    elif image.mode == "F" and low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    elif low >= 0.0 and high <= 255.0 and image.mode != "F":
        low, high = 0.0, 255.0
    scale = 255.0 / (high - low) if high > low else 0.0
    scaled = np.clip((np.nan_to_num(values, nan=low) - low) * scale, 0, 255)
    return Image.fromarray(scaled.astype(np.uint8), "L")


def _shrink_for_use(image: Image.Image, draft_size: int | None) -> Image.Image:
    """With ``draft_size`` (the caller needs a model input and a thumbnail, nothing bigger), a
    very large image is box-reduced while it is still inside the decode budget: a 40-megapixel
    PNG then leaves the budget as ~3 MB instead of 120 MB, so the budget bounds memory for
    real.  JPEGs get the same effect earlier from draft mode."""
    if not draft_size:
        return image
    limit = max(1024, 4 * draft_size)
    factor = max(image.size) // limit
    if factor < 2:
        return image
    if image.mode not in ("RGB", "RGBA", "L", "LA", "CMYK"):
        image = _to_rgb(image)  # palette, 16/32-bit and float data: to 8-bit first (reduce takes 8-bit modes)
    return image.reduce(factor)


def _looks_truncated_jpeg(image: Image.Image, bytes_per_pixel: float) -> bool:
    """A JPEG whose header promises far more pixels than its data holds decodes without error:
    libjpeg fills the missing blocks with flat mid-grey.  Real photos are never that sparse (under
    0.02 bytes a pixel) *and* exactly flat grey over their whole last quarter."""
    if bytes_per_pixel > 0.02:
        return False
    width, height = image.size
    bottom = np.asarray(image.convert("RGB").crop((0, height * 3 // 4, width, height)))
    return bottom.size > 0 and bool(np.all(bottom == bottom.flat[0])) and abs(int(bottom.flat[0]) - 128) <= 2


def decode(data: bytes, limits: ImageLimits = ImageLimits(), draft_size: int | None = None, name: str = "image") -> Image.Image:
    """Decode bytes to an upright RGB image, refusing empty, corrupt, unsupported and oversized input.

    ``draft_size`` lets the JPEG decoder downscale by a power of two while decoding (and very
    large images of other formats be reduced right after), which is
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
            with DECODE_BUDGET.take(width * height):
                if draft_size and image.format == "JPEG":
                    image.draft("RGB", (draft_size, draft_size))
                image.load()
                if image.format == "JPEG" and _looks_truncated_jpeg(image, len(data) / (width * height)):
                    raise ImageError("corrupt", f"{name} is a truncated JPEG file (its header promises {width}x{height} pixels "
                                                "but it holds far less image data)")
                upright: Image.Image = ImageOps.exif_transpose(image) or image  # before shrinking: reduce() drops EXIF
                return _to_rgb(_shrink_for_use(upright, draft_size))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("too_many_pixels", f"{name} has more pixels than the limit of {limits.max_pixels}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("corrupt", f"{name} is a damaged or truncated {fmt} file ({type(exc).__name__}: {clean_message(str(exc))})") from exc


def load_image(source: ImageSource, limits: ImageLimits = ImageLimits(), draft_size: int | None = None,
               downloader: Downloader | None = None) -> Image.Image:
    """Load any supported source (PIL image, bytes, path or URL) as an upright RGB image."""
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    name = "uploaded image" if isinstance(source, bytes) else display_name(source)
    return decode(read_bytes(source, limits, downloader), limits, draft_size=draft_size, name=name)


def load_source_or_thumbnail(source: str | None, thumbnail: bytes | None, limits: ImageLimits = ImageLimits(),
                             draft_size: int | None = None, name: str = "product") -> tuple[Image.Image, bool]:
    """A stored product's photo from its source, or from its stored thumbnail when the source can
    no longer be read (moved file, dead URL); returns (image, came from the thumbnail).  Training
    and re-indexing read products long after ingest, so a missing original is not fatal."""
    problem = "it has no image"
    if source:
        try:
            return load_image(source, limits, draft_size=draft_size), False
        except ImageError as exc:
            problem = f"its image cannot be read ({exc.message})"
    if thumbnail:
        try:
            return load_image(thumbnail, limits), True
        except ImageError as exc:
            raise ImageError(exc.kind, f"{name}: {problem}, and its stored thumbnail is damaged ({exc.message})") from exc
    raise ImageError("missing", f"{name}: {problem}, and it has no stored thumbnail")


def thumbnail_jpeg(image: Image.Image, size: int = 256, quality: int = 85) -> bytes:
    """A small JPEG kept in the store so results can be shown without the original files."""
    thumb = image.copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()
