"""Colour evidence from the garment's own pixels.

ImageNet features are trained to ignore colour, so a tagger that only sees the embedding
guesses ``base_colour`` about half the time.  This module looks at the pixels instead:

1. shrink the photo to a small working size (colour needs no detail);
2. separate garment from background: the background colour is estimated from the image
   border, pixels far from it in CIELAB (perceptual distance) are foreground, weighted
   towards the centre, and likely skin is down-weighted (catalogue shots often show a model);
3. describe the foreground in CIELAB: soft votes for a palette of named reference colours,
   a coarse L*a*b* histogram, and weighted mean / spread of lightness and chroma.

The result is a fixed-length float vector (``COLOUR_FEATURES`` long) that a classifier
learns from, plus ``dominant_colour_name`` for the zero-shot case without labels.
The sRGB→CIELAB conversion is Pillow's ImageCms (LittleCMS).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageCms

WORK_SIZE = 64
BORDER = 3  # pixels of the working image that sample the background

# Named reference colours (sRGB) that soft-vote for the foreground's colour.  They are the
# colour words shoppers and catalogues use; the classifier learns how the shop's own colour
# names relate to them, so this list need not match any catalogue's vocabulary.
REFERENCE_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20), "charcoal": (60, 60, 64), "grey": (128, 128, 128), "silver": (192, 192, 196),
    "white": (250, 250, 250), "off white": (240, 234, 214), "cream": (245, 230, 190), "beige": (214, 196, 160),
    "khaki": (190, 170, 120), "tan": (200, 150, 100), "brown": (110, 70, 40), "coffee": (80, 50, 35),
    "maroon": (110, 20, 35), "burgundy": (128, 0, 50), "red": (200, 30, 40), "rust": (170, 70, 30),
    "orange": (245, 130, 30), "peach": (250, 190, 160), "pink": (240, 150, 180), "magenta": (200, 30, 140),
    "purple": (110, 50, 140), "lavender": (190, 170, 220), "navy": (25, 35, 80), "blue": (40, 90, 190),
    "sky blue": (130, 190, 235), "turquoise": (40, 190, 200), "teal": (0, 120, 120), "green": (40, 140, 60),
    "olive": (110, 110, 40), "sea green": (60, 170, 120), "yellow": (245, 220, 40), "mustard": (210, 165, 30),
    "gold": (205, 170, 80), "copper": (180, 100, 60),
}
_L_BINS, _AB_BINS = 4, 6
_STATS = 9
COLOUR_FEATURES = len(REFERENCE_COLOURS) + _L_BINS * _AB_BINS * _AB_BINS + _STATS


@lru_cache(maxsize=1)
def _to_lab() -> ImageCms.ImageCmsTransform:
    return ImageCms.buildTransformFromOpenProfiles(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")


def lab_pixels(image: Image.Image) -> np.ndarray:
    """(h, w, 3) float32 CIELAB as the colour descriptor (``colour:lab-v1``) reads it.

    Pillow stores a* and b* as signed bytes; this reads them unsigned minus 128, which folds
    neutral greys onto -128 and flips the sign of a*/b* (red reads -64, not +64).  Trained
    taggers and text bridges learned on this reading, so it stays until the descriptor's version
    is raised (and they are retrained); new code wants :func:`signed_lab`."""
    lab = np.asarray(ImageCms.applyTransform(image.convert("RGB"), _to_lab()), dtype=np.float32)
    return np.stack([lab[..., 0] * (100.0 / 255.0), lab[..., 1] - 128.0, lab[..., 2] - 128.0], axis=-1)


def signed_lab(image: Image.Image) -> np.ndarray:
    """(h, w, 3) float32 CIELAB: L in 0..100, a* and b* signed (neutral grey 0, red a* > 0)."""
    lab = np.asarray(ImageCms.applyTransform(image.convert("RGB"), _to_lab()))
    chroma = lab[..., 1:].view(np.int8).astype(np.float32)  # Pillow's LAB mode keeps a*/b* as two's-complement bytes
    return np.concatenate([lab[..., :1].astype(np.float32) * (100.0 / 255.0), chroma], axis=-1)


@lru_cache(maxsize=1)
def _reference_lab() -> np.ndarray:
    swatch = Image.new("RGB", (len(REFERENCE_COLOURS), 1))
    swatch.putdata(list(REFERENCE_COLOURS.values()))
    return lab_pixels(swatch)[0]


def _skin_likelihood(rgb: np.ndarray) -> np.ndarray:
    """A soft skin score from the classic YCbCr skin box (Chai & Ngan); only down-weights."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    inside = (cr >= 138) & (cr <= 173) & (cb >= 77) & (cb <= 127) & (r > g) & (r > 60)
    return inside.astype(np.float32)


def foreground_weights(lab: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Per-pixel weight of "this is the garment": far from the border colour, near the centre, not skin."""
    h, w, _ = lab.shape
    ring = np.concatenate([lab[:BORDER].reshape(-1, 3), lab[-BORDER:].reshape(-1, 3), lab[:, :BORDER].reshape(-1, 3), lab[:, -BORDER:].reshape(-1, 3)])
    background = np.median(ring, axis=0)
    distance = np.linalg.norm(lab - background, axis=-1)
    spread = float(np.median(np.linalg.norm(ring - background, axis=-1)))
    # Soft threshold a little above the border's own variation (textured floors vary more than white studios).
    threshold = 10.0 + 1.5 * spread
    away = np.clip((distance - threshold) / threshold, 0.0, 1.0)
    yy, xx = np.mgrid[0:h, 0:w]
    centre = np.exp(-(((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2))
    weights = away * (0.35 + 0.65 * centre) * (1.0 - 0.8 * _skin_likelihood(rgb))
    if weights.sum() < 0.02 * h * w:
        # Nothing stands out from the border (a garment filling the frame, or white on white):
        # fall back to the centre of the image.
        weights = centre * (1.0 - 0.8 * _skin_likelihood(rgb))
    return weights.astype(np.float32)


def colour_features(image: Image.Image) -> np.ndarray:
    """The colour descriptor of one image (``COLOUR_FEATURES`` float32 values)."""
    small = image.convert("RGB")
    small.thumbnail((WORK_SIZE, WORK_SIZE), Image.Resampling.BILINEAR)
    rgb = np.asarray(small)
    lab = lab_pixels(small)
    weights = foreground_weights(lab, rgb)
    flat, wflat = lab.reshape(-1, 3), weights.reshape(-1)
    wsum = float(wflat.sum()) or 1.0
    # Soft votes for reference colours: a Gaussian of the CIELAB distance (ΔE ~ 15 is "clearly different").
    d2 = ((flat[:, None, :] - _reference_lab()[None, :, :]) ** 2).sum(-1)
    votes = np.exp(-d2 / (2 * 15.0**2))
    votes /= votes.sum(1, keepdims=True) + 1e-6
    palette = (votes * wflat[:, None]).sum(0) / wsum
    hist, _ = np.histogramdd(
        flat, bins=(_L_BINS, _AB_BINS, _AB_BINS), range=((0, 100), (-80, 80), (-80, 80)), weights=wflat
    )
    hist = hist.reshape(-1) / wsum
    mean = (flat * wflat[:, None]).sum(0) / wsum
    std = np.sqrt(((flat - mean) ** 2 * wflat[:, None]).sum(0) / wsum)
    chroma = np.hypot(flat[:, 1], flat[:, 2])
    mean_chroma = float((chroma * wflat).sum() / wsum)
    stats = np.array([mean[0] / 100, mean[1] / 100, mean[2] / 100, std[0] / 50, std[1] / 50, std[2] / 50,
                      mean_chroma / 100, wsum / weights.size, float(np.hypot(mean[1], mean[2])) / 100], dtype=np.float32)
    return np.concatenate([palette, hist, stats]).astype(np.float32)


def dominant_colour_name(features: np.ndarray) -> tuple[str, float]:
    """The reference colour with the most foreground votes, and its share of the votes."""
    palette = features[: len(REFERENCE_COLOURS)]
    best = int(np.argmax(palette))
    return list(REFERENCE_COLOURS)[best], float(palette[best] / (palette.sum() or 1.0))
