"""Is photo B a re-processed copy of photo A?  Align them, then measure what is left.

Embeddings cannot decide it: a half-size copy can sit further from its original (cosine 0.85)
than two colour variants shot on one template (0.99).  What separates them is that a copy shows
the *same pixels* up to a change of scale, a shift, compression noise and an exposure change,
while a variant differs somewhere on the garment — its colour, its print, its stitching.  So:

0. **screen** — garments whose mean colour differs beyond what an exposure change explains are
   not one photo (:func:`colours_differ`; about a fifth of the candidate pairs end here);
1. **align** — both photos shrunk to ``ALIGN_WIDTH`` pixels wide, lightness only; scale 1 first
   (most pairs share their framing), else B is tried at a grid of scales at half width (a crop of
   A is A's content larger; A a crop of B, smaller) by phase correlation against A's
   background-referenced lightness, the best scales tried at full width, the best refined, the
   shift read to a tenth of a pixel from the correlation peak;
2. **compare the overlap** in CIELAB after fitting A's lightness to B's (a straight line: an
   exposure change), on the garment's pixels (those that differ from their photo's border colour): the median and
   90th percentile of the lightness residual and of the chroma difference (a*, b*).  JPEG noise
   and resampling leave residuals of about one unit; another colour or print leaves many.

:class:`PairEvidence` holds the numbers; :mod:`.rule` turns them into a decision.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

from ..common.colour import signed_lab

ALIGN_WIDTH = 64
# B's width relative to A's: a crop down to 80 % of either photo is found.
SCALES = (1.0, 0.95, 1 / 0.95, 0.9, 1 / 0.9, 0.85, 1 / 0.85, 0.8, 1 / 0.8)
REFINE = (0.98, 0.99, 1.01, 1.02)
WIDEST = math.ceil(ALIGN_WIDTH * max(SCALES) * max(REFINE))  # the widest a photo is ever drawn: no need to decode it larger
BLUR = 0.8            # pixels at ALIGN_WIDTH: resampling noise is not a difference
SEPARATION = 6.0      # CIELAB distance from the photo's border colour beyond which a pixel is the garment, not the backdrop
CHROMA_GAIN = (0.7, 1.4)
EXPOSURE_GAIN = (0.5, 2.0)  # an sRGB gain outside this is not an exposure change
CLEAR_PEAK = 0.3      # a phase-correlation peak this high at scale 1: aligned, no scale search
POLISH_PEAK = 0.3      # below this peak a rescaled pair is neither refined nor polished: crops peak higher (5th percentile 0.33)
COARSE_FLOOR = 0.25   # below this best half-width peak over the scale grid nothing is a crop (fitting-part crops: lowest 0.335): no full-width search
CHROMA_APART = 10.0   # garments' mean (a*, b*) this far apart, after the best chroma gain, are not one photo (fitting-part copies: at most 6.5)
COARSE_STRONG = 0.4   # a half-width peak this high is worth a third and fourth full-width try when the first two do not align
FULL_TRIES = 4
POLISH_STEPS = ((0.004, 0.3), (0.004, 0.3), (0.002, 0.15), (0.002, 0.15))  # (relative scale, pixels) per round
TAPER = 0.1           # share of each side faded out before correlating
CANVAS_MARGIN = 12    # pixels of padding beyond the larger photo: room for the shifts a crop needs
MIN_OVERLAP = 16      # pixels of overlap each way, else the photos do not align


@dataclass(frozen=True)
class PairEvidence:
    """What is left after aligning B onto A.  ``peak``: phase-correlation peak (1 = the same
    lightness pattern); ``scale``: B's width, drawn at A's scale, over A's (< 1: B is a crop of
    A; > 1: A is a crop of B); residuals in CIELAB units."""

    peak: float
    scale: float
    lightness_median: float
    lightness_p90: float
    chroma_median: float
    chroma_p90: float
    aligned: bool = True
    screened: str = ""    # why the pair was set aside before aligning, if it was

    def features(self) -> np.ndarray:
        """The decision rule's inputs (residuals on a log scale: their spread spans decades)."""
        return np.array([self.peak, *np.log1p([self.lightness_median, self.lightness_p90, self.chroma_median, self.chroma_p90])], np.float64)

    def to_dict(self) -> dict[str, float | bool]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


NOT_ALIGNED = PairEvidence(0.0, 1.0, 99.0, 99.0, 99.0, 99.0, aligned=False)
COLOURS_DIFFER = PairEvidence(0.0, 1.0, 99.0, 99.0, 99.0, 99.0, aligned=False, screened="the garments' colours differ")


def _shrunk(image: Image.Image, width: float, blur: bool = True) -> Image.Image:
    """The photo drawn ``width`` pixels wide — a fractional width too: the output is whole
    pixels, cut from a source box of the exact size, so every scale tried is the scale meant
    (rounding widths to whole pixels would misalign a 90 % crop by up to a pixel)."""
    factor = width / image.width
    size = (max(8, int(image.width * factor)), max(8, int(image.height * factor)))
    box = (0.0, 0.0, min(image.width, size[0] / factor), min(image.height, size[1] / factor))
    drawn = image.resize(size, Image.Resampling.BILINEAR, box=box)
    return drawn.filter(ImageFilter.GaussianBlur(BLUR)) if blur else drawn


def _colour(image: Image.Image, width: float) -> np.ndarray:
    """(h, w, 6): CIELAB and the sRGB it came from, drawn ``width`` wide."""
    drawn = _shrunk(image.convert("RGB"), width)
    return np.concatenate([signed_lab(drawn), np.asarray(drawn, np.float32)], axis=-1)


def _referenced(lightness: np.ndarray, level: float | None = None) -> np.ndarray:
    """The lightness minus its border's (the background's, or ``level`` when known), faded to zero
    towards the frame: the padding then continues the photo smoothly, so neither a studio frame
    nor the hard edge of a crop through a textured floor dominates the correlation."""
    if level is None:
        level = _border_level(lightness)
    return (lightness - level) * _taper(lightness.shape[0])[:, None] * _taper(lightness.shape[1])[None, :]


def _border_level(lightness: np.ndarray) -> float:
    return float(np.median(np.concatenate([lightness[0], lightness[-1], lightness[:, 0], lightness[:, -1]])))


@lru_cache(maxsize=256)
def _taper(length: int) -> np.ndarray:
    """1 in the middle, a raised-cosine fade over ``TAPER`` of the length at each end."""
    ramp = max(1, round(length * TAPER))
    window = np.ones(length, np.float32)
    fade = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
    window[:ramp], window[length - ramp:] = fade, fade[::-1]
    return window


def _spectrum(referenced: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The spectrum of background-referenced lightness zero-padded to ``shape``."""
    padded = np.zeros(shape, np.float32)
    padded[:referenced.shape[0], :referenced.shape[1]] = referenced
    from scipy import fft  # imported on first comparison: commands that compare nothing start faster

    return fft.rfft2(padded)


def _peak_offset(values: tuple[float, float, float]) -> float:
    left, middle, right = values
    curvature = left - 2 * middle + right
    return 0.0 if curvature >= 0 else float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))


def _correlate(spectrum_a: np.ndarray, spectrum_b: np.ndarray, shape: tuple[int, int]) -> tuple[float, float, float]:
    """Phase correlation: (peak, dy, dx) with A[y, x] ≈ B[y - dy, x - dx], sub-pixel."""
    cross = spectrum_a * np.conj(spectrum_b)
    cross /= np.abs(cross) + 1e-3
    from scipy import fft

    surface = fft.irfft2(cross, s=shape)
    y, x = np.unravel_index(int(np.argmax(surface)), surface.shape)
    height, width = shape
    dy = y + _peak_offset((surface[(y - 1) % height, x], surface[y, x], surface[(y + 1) % height, x]))
    dx = x + _peak_offset((surface[y, (x - 1) % width], surface[y, x], surface[y, (x + 1) % width]))
    return float(surface[y, x]), dy - height if y > height // 2 else dy, dx - width if x > width // 2 else dx


def _canvas(height_a: int, height_b: int, width: int) -> tuple[int, int]:
    """Room for A and B at the largest scale tried plus a margin, rounded up to 16 pixels so
    photos of one shape share a canvas (and their cached spectra).  Not doubled: with the
    background subtracted the padding is nearly zero, so the correlation's wrap-around costs
    nothing, and a four times smaller transform is four times faster."""
    reach = max(SCALES) * max(REFINE)
    tall = max(height_a, round(height_b * reach) + 1) + CANVAS_MARGIN
    wide = round(width * reach) + 1 + CANVAS_MARGIN
    return -(-tall // 16) * 16, -(-wide // 16) * 16


class PhotoPrint:
    """One photo's alignment material, computed once however many pairs it takes part in:
    CIELAB and sRGB at ``ALIGN_WIDTH``, lightness at other widths, and lightness spectra per canvas."""

    def __init__(self, image: Image.Image):
        self.rgb = image.convert("RGB")
        # lightness at other scales is drawn from a copy twice the working width: cheaper than from the full photo, as sharp
        self.grey = _shrunk(self.rgb.convert("L"), 2 * ALIGN_WIDTH) if self.rgb.width > 2 * ALIGN_WIDTH else self.rgb.convert("L")
        self.colour = _colour(self.rgb, ALIGN_WIDTH)
        self.lab = self.colour[..., :3]
        ring = np.concatenate([self.lab[:2].reshape(-1, 3), self.lab[-2:].reshape(-1, 3), self.lab[:, :2].reshape(-1, 3), self.lab[:, -2:].reshape(-1, 3)])
        self.background = np.median(ring, axis=0)  # the studio backdrop's colour, from the photo's border
        self.chroma = _garment_chroma(self)
        self._grey_level: float | None = None
        self._spectra: dict[tuple[int, int], np.ndarray] = {}
        self._coarse: dict[float, np.ndarray] = {}

    def spectrum(self, shape: tuple[int, int], half: bool = False) -> np.ndarray:
        key = (shape[0], -shape[1]) if half else shape
        if key not in self._spectra:  # two threads may both compute it once: same value, no lock needed
            self._spectra[key] = _spectrum(self.coarse(1.0) if half else _referenced(self.lab[..., 0]), shape)
        return self._spectra[key]

    def lightness(self, width: float, blur: bool = True) -> np.ndarray:
        return np.asarray(_shrunk(self.grey, width, blur), np.float32) * (100.0 / 255.0)

    def coarse(self, scale: float) -> np.ndarray:
        """Background-referenced lightness at half width and ``scale``, kept: a photo is B in several pairs."""
        if scale not in self._coarse:
            if self._grey_level is None:  # one background level for every scale: the backdrop does not change with it
                self._grey_level = _border_level(self.lightness(ALIGN_WIDTH // 2, blur=False))
            self._coarse[scale] = _referenced(self.lightness(ALIGN_WIDTH // 2 * scale, blur=False), self._grey_level)
        return self._coarse[scale]


def garment_pixels(photo: PhotoPrint) -> np.ndarray | None:
    """(3, n) CIELAB of the pixels that stand out from the photo's backdrop; None for a nearly blank photo."""
    pixels = photo.lab.reshape(-1, 3).T
    garment = _squared_distance(pixels, photo.background) > SEPARATION ** 2
    return pixels[:, garment] if garment.sum() >= 30 else None


def _garment_chroma(photo: PhotoPrint) -> np.ndarray | None:
    """The mean (a*, b*) of the garment's pixels; None for a nearly blank photo."""
    garment = garment_pixels(photo)
    return None if garment is None else garment[1:].mean(axis=1)


def colours_differ(a: PhotoPrint, b: PhotoPrint) -> bool:
    """The cheapest test first: a copy keeps its garment's colour up to an exposure change (a chroma
    gain), cropping and compression noise; variants shot on one template usually differ in it.
    Conservative: copies in the fitting part differ by at most two thirds of ``CHROMA_APART``."""
    if a.chroma is None or b.chroma is None:
        return False
    gain = float(np.clip(a.chroma @ b.chroma / (a.chroma @ a.chroma + 1e-6), *CHROMA_GAIN))
    return float(np.linalg.norm(b.chroma - gain * a.chroma)) > CHROMA_APART


def _coarse_peaks(a: PhotoPrint, b: PhotoPrint, scales: tuple[float, ...]) -> np.ndarray:
    """Phase-correlation peaks of B at each scale against A, at half width, in one batched transform
    (resampling at half width smooths enough: no blur)."""
    width = ALIGN_WIDTH // 2
    shape = _canvas(a.coarse(1.0).shape[0], b.coarse(1.0).shape[0], width)
    stack = np.zeros((len(scales), *shape), np.float32)
    for i, scale in enumerate(scales):
        drawn = b.coarse(scale)
        stack[i, :drawn.shape[0], :drawn.shape[1]] = drawn
    from scipy import fft

    cross = a.spectrum(shape, half=True)[None] * np.conj(fft.rfft2(stack))
    cross /= np.abs(cross) + 1e-3
    return fft.irfft2(cross, s=shape).reshape(len(scales), -1).max(axis=1)


def align(a: PhotoPrint, b: PhotoPrint, search_scales: bool = True) -> tuple[float, float, float, float]:
    """The best (peak, scale, dy, dx) of B onto A.

    Most pairs share their framing (re-encoded or resized copies, template variants): scale 1
    is tried first from both photos' cached spectra, and a clear peak there ends the search.
    Otherwise the scale grid runs at half width (four times cheaper), its two best scales are
    tried at full width and the better refined if it peaks like a crop."""
    shape = _canvas(a.lab.shape[0], b.lab.shape[0], ALIGN_WIDTH)
    best = (*_correlate(a.spectrum(shape), b.spectrum(shape), shape), 1.0)
    best = (best[0], best[3], best[1], best[2])
    if best[0] >= CLEAR_PEAK or not search_scales:
        return best

    def at(scale: float, width: int | float, canvas: tuple[int, int], spectrum_a: np.ndarray) -> tuple[float, float, float, float]:
        peak, dy, dx = _correlate(spectrum_a, _spectrum(_referenced(b.lightness(width * scale)), canvas), canvas)
        return peak, scale, dy, dx

    peaks = _coarse_peaks(a, b, SCALES[1:])
    if peaks.max() < COARSE_FLOOR:  # no scale aligns even roughly: a look-alike framed differently, not a crop
        return best
    for tried, i in enumerate(np.argsort(-peaks)[:FULL_TRIES]):
        # the best two always; more only while nothing aligns yet and the half-width peak is strong: on a textured
        # photo neighbouring scales can peak alike at half width, and the right one is then not always among the first two
        if tried >= 2 and (best[0] >= POLISH_PEAK or peaks[i] < COARSE_STRONG):
            break
        best = max(best, at(SCALES[1 + int(i)], ALIGN_WIDTH, shape, a.spectrum(shape)), key=lambda t: t[0])
    if best[0] < POLISH_PEAK:  # nothing here aligns like a crop does: not worth refining (most look-alikes end here)
        return best
    return max([best, *(at(best[1] * r, ALIGN_WIDTH, shape, a.spectrum(shape)) for r in REFINE)], key=lambda t: t[0])


def _shifted(image: np.ndarray, fy: float, fx: float) -> np.ndarray:
    """``image`` (h, w, c) moved down by ``fy`` and right by ``fx`` (each in [0, 1)), bilinear, edges
    repeated: out[y, x] = image[y - fy, x - fx].  All channels in four array operations (a spline
    routine per channel costs twenty times as much here)."""
    if fy > 1e-4:
        image = (1 - fy) * image + fy * np.concatenate([image[:1], image[:-1]], axis=0)
    if fx > 1e-4:
        image = (1 - fx) * image + fx * np.concatenate([image[:, :1], image[:, :-1]], axis=1)
    return image


def _overlap(lab_a: np.ndarray, lab_b: np.ndarray, dy: float, dx: float) -> tuple[np.ndarray, np.ndarray] | None:
    """A's and B's pixels where B, shifted by (dy, dx) sub-pixel, covers A; None if too little does."""
    whole_y, whole_x = int(np.floor(dy)), int(np.floor(dx))
    top, left = max(0, whole_y) + 1, max(0, whole_x) + 1  # one pixel in: the shifted edge is interpolated
    bottom = min(lab_a.shape[0], lab_b.shape[0] + whole_y) - 1
    right = min(lab_a.shape[1], lab_b.shape[1] + whole_x) - 1
    if bottom - top < MIN_OVERLAP or right - left < MIN_OVERLAP:
        return None
    shifted = _shifted(lab_b, dy - whole_y, dx - whole_x)
    return (lab_a[top:bottom, left:right].reshape(-1, lab_a.shape[-1]),
            shifted[top - whole_y:bottom - whole_y, left - whole_x:right - whole_x].reshape(-1, lab_b.shape[-1]))


def _polish(first: PhotoPrint, second: PhotoPrint, scale: float, dy: float, dx: float) -> tuple[float, float, float]:
    """A rescaled pair's alignment to a fraction of a pixel: phase correlation places a crop to
    about half a pixel and the scale grid to half a percent, which leaves residuals on every edge.
    Small steps of scale and shift, kept when the lightness difference falls."""

    drawn: dict[float, np.ndarray] = {}

    def error(candidate: tuple[float, float, float]) -> float:
        if candidate[0] not in drawn:
            drawn[candidate[0]] = second.lightness(ALIGN_WIDTH * candidate[0])[..., None]
        pixels = _overlap(first.lab[..., :1], drawn[candidate[0]], candidate[1], candidate[2])
        if pixels is None:
            return float("inf")
        difference = pixels[0][:, 0] - pixels[1][:, 0]
        return float(np.mean(np.abs(difference - difference.mean())))

    best, best_error = (scale, dy, dx), error((scale, dy, dx))
    for step_scale, step_shift in POLISH_STEPS:  # coordinate descent: one parameter at a time, both ways
        moves = [(step_scale, 0.0, 0.0), (-step_scale, 0.0, 0.0), (0.0, step_shift, 0.0), (0.0, -step_shift, 0.0),
                 (0.0, 0.0, step_shift), (0.0, 0.0, -step_shift)]
        for ds, ddy, ddx in moves:
            candidate = (best[0] * (1 + ds), best[1] + ddy, best[2] + ddx)
            candidate_error = error(candidate)
            if candidate_error < best_error:
                best, best_error = candidate, candidate_error
    return best


def compare_photos(a: Image.Image | PhotoPrint, b: Image.Image | PhotoPrint, search_scales: bool = True) -> PairEvidence:
    """Align B onto A and measure the residual differences on the garment (see the module docstring).
    Pass :class:`PhotoPrint` objects when a photo is compared more than once; ``search_scales``
    False compares at scale 1 only (a caller that knows the pair cannot be a crop)."""
    first = a if isinstance(a, PhotoPrint) else PhotoPrint(a)
    second = b if isinstance(b, PhotoPrint) else PhotoPrint(b)
    if colours_differ(first, second):
        return COLOURS_DIFFER
    peak, scale, dy, dx = align(first, second, search_scales)
    if scale != 1.0 and peak >= POLISH_PEAK:  # a likely crop: worth the sub-pixel work (most look-alikes peak lower)
        scale, dy, dx = _polish(first, second, scale, dy, dx)
    drawn_b = second.colour if scale == 1.0 else _colour(second.rgb, ALIGN_WIDTH * scale)
    pixels = _overlap(first.colour, drawn_b, dy, dx)
    if pixels is None:
        return NOT_ALIGNED
    a_pixels, b_pixels = (np.ascontiguousarray(side.T) for side in pixels)  # channels first: each channel's arithmetic runs on contiguous memory
    return _residuals(peak, scale, _exposed_like(a_pixels, b_pixels), b_pixels[:3], first.background, second.background)


def _exposed_like(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A's CIELAB as it would look after B's exposure change.  Brightening multiplies sRGB values
    and clips them at white, which moves hue and chroma in CIELAB in ways no fit there undoes; so
    the gain is read in sRGB from pixels neither photo clipped, applied to A, and A converted again.
    ``a`` and ``b``: (6, n) CIELAB and sRGB, channels first; returns (3, n)."""
    usable = np.ones(a.shape[1], bool)
    for channel in (*a[3:], *b[3:]):
        usable &= (channel > 8) & (channel < 247)
    if usable.sum() < 30:
        return a[:3]
    sum_a, sum_b = a[3:].sum(axis=0)[usable], b[3:].sum(axis=0)[usable]
    gain = float(np.clip(np.median(sum_b / sum_a), *EXPOSURE_GAIN))
    if abs(gain - 1.0) < 0.02:
        return a[:3]
    exposed = np.clip(np.rint(a[3:].T * gain), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(signed_lab(Image.fromarray(exposed[None], "RGB"))[0].T)


def _residuals(peak: float, scale: float, a: np.ndarray, b: np.ndarray, background_a: np.ndarray, background_b: np.ndarray) -> PairEvidence:
    """The evidence from (3, n) CIELAB pixels of A (as exposed like B) and of B, channels first."""
    # the garment: pixels that stand out from their own photo's background (a darkened copy's white is grey)
    garment = (_squared_distance(a, background_a) > SEPARATION ** 2) | (_squared_distance(b, background_b) > SEPARATION ** 2)
    if garment.sum() >= 30:  # else a nearly blank photo: compare everything
        a, b = a[:, garment], b[:, garment]
    slope, intercept = _line(a[0], b[0])  # an exposure change moves lightness along a line
    lightness = np.abs(slope * a[0] + intercept - b[0])
    # exposure also scales chroma, within reason
    gain = float(np.clip((a[1] @ b[1] + a[2] @ b[2]) / (a[1] @ a[1] + a[2] @ a[2] + 1e-6), *CHROMA_GAIN))
    chroma = np.hypot(b[1] - gain * a[1], b[2] - gain * a[2])
    (lightness_median, lightness_p90), (chroma_median, chroma_p90) = np.quantile(lightness, (0.5, 0.9)), np.quantile(chroma, (0.5, 0.9))
    return PairEvidence(float(peak), float(scale), float(lightness_median), float(lightness_p90), float(chroma_median), float(chroma_p90))


def _squared_distance(lab: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per pixel of (3, n) CIELAB, the squared distance to one colour."""
    return (lab[0] - reference[0]) ** 2 + (lab[1] - reference[1]) ** 2 + (lab[2] - reference[2]) ** 2


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares y ≈ slope·x + intercept (what ``np.polyfit(x, y, 1)`` gives, without its generality's cost)."""
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    centred = x64 - x64.mean()
    spread = float(centred @ centred)
    slope = float(centred @ (y64 - y64.mean())) / spread if spread > 1e-9 else 1.0
    return slope, float(y64.mean() - slope * x64.mean())
