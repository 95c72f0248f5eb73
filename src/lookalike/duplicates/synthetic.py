"""Re-processed copies of a photo, as shops make them by accident, and recoloured variants, as
studios make them on purpose (one shot, one colour per variant): for fitting and measuring the rule."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance

COPY_KINDS = ("jpeg", "half", "crop", "exposure")
COLOURFUL = 12.0  # median chroma (CIELAB) of the garment from which turning its hue shows: a grey garment recoloured looks the same


def make_copy(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """JPEG at quality 50; half size; a 90 % crop at a random place; brightness ×0.75 or ×1.3."""
    image = image.convert("RGB")
    if kind == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=50)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if kind == "half":
        return image.resize((max(8, image.width // 2), max(8, image.height // 2)), Image.Resampling.BILINEAR)
    if kind == "crop":
        width, height = int(image.width * 0.9), int(image.height * 0.9)
        left, top = int(rng.integers(0, image.width - width + 1)), int(rng.integers(0, image.height - height + 1))
        return image.crop((left, top, left + width, top + height))
    if kind == "exposure":
        return ImageEnhance.Brightness(image).enhance(float(rng.choice([0.75, 1.3])))
    raise ValueError(f"unknown copy kind {kind!r}: one of {', '.join(COPY_KINDS)}")


def make_variant(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The same photo with every hue turned by 60-180 degrees: another colour variant of the product,
    pixel for pixel on the same template — the hardest "not a duplicate" there is."""
    hue, saturation, value = image.convert("RGB").convert("HSV").split()
    turn = int(rng.integers(43, 129))  # Pillow's hue runs 0..255 for 0..360 degrees
    return Image.merge("HSV", (hue.point(lambda h: (h + turn) % 256), saturation, value)).convert("RGB")


def is_colourful(image: Image.Image) -> bool:
    """Whether the garment (the pixels that stand out from the photo's border) carries enough colour
    for a recoloured variant to look different at all."""
    from .compare import PhotoPrint, garment_pixels  # the same garment mask as the comparison's

    garment = garment_pixels(PhotoPrint(image))
    return garment is not None and float(np.median(np.hypot(garment[1], garment[2]))) >= COLOURFUL
