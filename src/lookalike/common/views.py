"""Synthetic views of a catalogue photo: what a shopper's picture of the same product looks like.

Each alteration is deterministic for a seed, so two configurations are judged on the
same altered images.  They are also the augmentations later training work reuses.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps


def crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random crop keeping 60-80 % of each side, as when a photo frames only part of the garment."""
    w, h = image.size
    cw, ch = int(w * rng.uniform(0.6, 0.8)), int(h * rng.uniform(0.6, 0.8))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((x, y, x + cw, y + ch))


def shift(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Move the product by 15 % of the frame, filling with white."""
    w, h = image.size
    dx, dy = int(w * 0.15 * rng.choice([-1, 1])), int(h * 0.15 * rng.choice([-1, 1]))
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    canvas.paste(image, (dx, dy))
    return canvas


def blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Out of focus or shaken: Gaussian blur of about 1 % of the longer side."""
    return image.filter(ImageFilter.GaussianBlur(radius=max(1.0, max(image.size) * rng.uniform(0.008, 0.012))))


def jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Heavy JPEG compression, as from a messaging app."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(8, 15)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def brightness(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Under- or over-exposed (x0.6 or x1.5)."""
    return ImageEnhance.Brightness(image).enhance(float(rng.choice([0.6, 1.5])))


def flip(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Mirror image, as from a front camera."""
    return ImageOps.mirror(image)


def busy_background(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A cluttered backdrop of random coloured shapes over noise."""
    w, h = size
    noise = rng.integers(60, 200, size=(h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    canvas = Image.fromarray(noise).resize((w, h), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(w // 8, w // 2)), y0 + int(rng.integers(h // 8, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x0, y0, x1, y1), fill=colour)
    return canvas


def background(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The product cut out of its white studio background and put on a busy one."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    foreground = (np.abs(rgb - 255).max(axis=2) > 18).astype(np.uint8) * 255
    mask = Image.fromarray(foreground).filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.GaussianBlur(1))
    canvas = busy_background(image.size, rng)
    canvas.paste(image.convert("RGB"), (0, 0), mask)
    return canvas


ALTERATIONS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "crop": crop, "shift": shift, "blur": blur, "jpeg": jpeg, "brightness": brightness, "flip": flip, "background": background,
}


def alter(image: Image.Image, name: str, seed: int) -> Image.Image:
    """Apply one named alteration with its own seeded generator."""
    return ALTERATIONS[name](image.convert("RGB"), np.random.default_rng(seed))
