"""Where a photo sits in the detector's input: longer side 320 px, padded to multiples of 32.

The backbone is fully convolutional, so a tall street photo keeps its shape (212×320 becomes a
224×320 canvas) instead of shrinking into a square; the padding is right and bottom only, so a
canvas position maps back to the photo by one scale factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

LONG_SIDE = 320
STRIDE = 32
PAD_VALUE = 127  # mid grey: 0 after the backbone's (x - 127) / 128


@dataclass(frozen=True)
class Canvas:
    """A photo scaled into the detector's input: ``pixels`` (H, W, 3) uint8, the photo's scaled
    size inside it (top-left), and the scale from photo to canvas pixels."""

    pixels: np.ndarray
    width: int  # of the scaled photo inside the canvas
    height: int
    scale: float

    def to_photo(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """A canvas box in the photo's own pixels."""
        return tuple(round(v / self.scale, 1) for v in box)  # type: ignore[return-value]


def scaled_size(width: int, height: int, long_side: int = LONG_SIDE) -> tuple[int, int, float]:
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale)), scale


def canvas_shape(width: int, height: int) -> tuple[int, int]:
    """(canvas height, canvas width) for a scaled photo of ``width`` × ``height``."""
    return -(-height // STRIDE) * STRIDE, -(-width // STRIDE) * STRIDE


def to_canvas(image: Image.Image, long_side: int = LONG_SIDE) -> Canvas:
    width, height, scale = scaled_size(*image.size, long_side=long_side)
    resized = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    rows, cols = canvas_shape(width, height)
    pixels = np.full((rows, cols, 3), PAD_VALUE, dtype=np.uint8)
    pixels[:height, :width] = np.asarray(resized, dtype=np.uint8)
    return Canvas(pixels, width, height, scale)


def mask_to_canvas(mask: np.ndarray, canvas: Canvas, ignore: int) -> np.ndarray:
    """A label map (photo size) resampled (nearest) onto the canvas; padding is ``ignore``."""
    resized = np.asarray(Image.fromarray(mask).resize((canvas.width, canvas.height), Image.Resampling.NEAREST))
    out = np.full(canvas.pixels.shape[:2], ignore, dtype=mask.dtype)
    out[:canvas.height, :canvas.width] = resized
    return out
