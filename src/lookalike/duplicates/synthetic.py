"""Re-processed copies of a photo, as shops make them by accident: for fitting and measuring the rule."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance

COPY_KINDS = ("jpeg", "half", "crop", "exposure")


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
