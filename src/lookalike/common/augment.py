"""Random street-like views of a catalogue photo: the positives that teach an embedding to
put a shopper's picture next to the studio shot of the same product.

A view chains a few alterations (crop, shift, busy background, colour and lighting change,
blur, JPEG, mirror).  The geometric and backdrop ones are the evaluation's named alterations
(:mod:`lookalike.common.views`) with random strength; colour jitter is added here because
phone cameras shift white balance, which the catalogue never shows.  Every view is fully
determined by its seed, so a cached feature file can be rebuilt bit for bit.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance

from .views import background, blur, crop, flip, jpeg, shift

# Bump when views change: cached view features of another version are recomputed.
AUGMENT_VERSION = "1"


def colour_jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """White balance, saturation and contrast of a different camera (each within about ±30 %)."""
    gains = rng.uniform(0.85, 1.15, size=3)
    pixels = np.asarray(image, dtype=np.float32) * gains
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    image = ImageEnhance.Color(image).enhance(float(rng.uniform(0.7, 1.3)))
    return ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.75, 1.25)))


def lighting(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Under- or over-exposed, by a random factor."""
    return ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.6, 1.4)))


# (alteration, probability) in the order applied: the backdrop goes in before the camera effects.
_CHAIN = (
    (background, 0.5),
    (crop, 0.5),
    (shift, 0.25),
    (flip, 0.5),
    (colour_jitter, 0.7),
    (lighting, 0.4),
    (blur, 0.25),
    (jpeg, 0.3),
)


def street_view(image: Image.Image, seed: int) -> Image.Image:
    """One random street-like view of ``image`` (at least one alteration is always applied)."""
    rng = np.random.default_rng(seed)
    image = image.convert("RGB")
    chosen = [fn for fn, p in _CHAIN if rng.random() < p]
    if not chosen:
        chosen = [_CHAIN[int(rng.integers(len(_CHAIN)))][0]]
    for fn in chosen:
        image = fn(image, rng)
    return image
