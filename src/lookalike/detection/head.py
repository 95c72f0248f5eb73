"""The garment finder's head: a small top-down feature pyramid over frozen backbone maps.

The backbone (EfficientNet-Lite0, ImageNet) gives maps at strides 4, 8, 16 and 32.  Each is
projected to ``width`` channels by a 1×1 convolution (with the training set's per-channel
normalisation folded in); coarse maps are upsampled and added to finer ones, a global context
vector (the mean of the stride-32 map) is added at the top so the head can tell a dress from a
top over a skirt, and two 3×3 convolutions turn the stride-8 and stride-4 sums into per-pixel
group scores.  About 80K parameters: it trains in minutes on two cores from cached maps.  It may
also carry fine-tuned copies of the backbone's last blocks (:mod:`.tail`), applied to their
cached input instead of the frozen stride-32 map.

Inference is NumPy only (no PyTorch to serve).  Upsampling is a product with fixed bilinear
interpolation matrices, the same matrices the trainer uses, so trained and served scores agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .tail import dense, is_tail_array, run_tail, tail_blocks

TAPS = ("s4", "s8", "s16", "s32")
ARRAY_NAMES = tuple([f"lateral_{t}_{p}" for t in TAPS for p in ("weight", "bias")]
                    + ["context_weight", "context_bias", "mix8_weight", "mix8_bias", "mix4_weight", "mix4_bias",
                       "classes_weight", "classes_bias"])


@lru_cache(maxsize=64)
def interpolation_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) bilinear resampling weights, half-pixel centres (as
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``)."""
    matrix = np.zeros((size_out, size_in), dtype=np.float32)
    scale = size_in / size_out
    for out in range(size_out):
        source = max((out + 0.5) * scale - 0.5, 0.0)
        low = min(int(np.floor(source)), size_in - 1)
        high = min(low + 1, size_in - 1)
        frac = source - low
        matrix[out, low] += 1.0 - frac
        matrix[out, high] += frac
    return matrix


def resize_maps(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of NHWC maps."""
    rows = interpolation_matrix(maps.shape[1], height)
    cols = interpolation_matrix(maps.shape[2], width)
    return np.einsum("hi,nijc,wj->nhwc", rows, maps, cols, optimize=True).astype(np.float32, copy=False)


def conv3x3(maps: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Same-padded 3×3 convolution of NHWC maps; ``weight`` is (3, 3, in, out)."""
    n, h, w, _ = maps.shape
    padded = np.pad(maps, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.broadcast_to(bias, (n, h, w, weight.shape[3])).astype(np.float32).copy()
    for dy in range(3):
        for dx in range(3):
            out += padded[:, dy:dy + h, dx:dx + w, :] @ weight[dy, dx]
    return out


@dataclass(eq=False)
class SegmentationHead:
    """Per-pixel garment-group scores from backbone maps (see the module docstring)."""

    arrays: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        missing = [name for name in ARRAY_NAMES if name not in self.arrays]
        if missing:
            raise ValueError(f"head weights lack {', '.join(missing)}")
        unknown = [name for name in self.arrays if name not in ARRAY_NAMES and not is_tail_array(name)]
        if unknown:
            raise ValueError(f"head weights hold unknown arrays {', '.join(sorted(unknown)[:5])}")
        self.tail = tail_blocks(self.arrays)
        if self.tail and self.tail[-1]["project_weight"].shape[1] != self.arrays["lateral_s32_weight"].shape[0]:
            raise ValueError("head weights: the fine-tuned blocks' output does not fit the stride-32 layer")
        width = self.width
        for tap in TAPS:
            weight, bias = self.arrays[f"lateral_{tap}_weight"], self.arrays[f"lateral_{tap}_bias"]
            if weight.ndim != 2 or weight.shape[1] != width or bias.shape != (width,):
                raise ValueError(f"head weights: lateral_{tap} has shape {weight.shape}, expected (channels, {width})")
        for name in ("mix8", "mix4"):
            if self.arrays[f"{name}_weight"].shape != (3, 3, width, width):
                raise ValueError(f"head weights: {name} has shape {self.arrays[f'{name}_weight'].shape}")
        if self.arrays["classes_weight"].shape[0] != width or self.arrays["classes_weight"].ndim != 2:
            raise ValueError("head weights: the class layer does not fit the head's width")

    @property
    def width(self) -> int:
        return int(self.arrays["mix8_bias"].shape[0])

    @property
    def classes(self) -> int:
        return int(self.arrays["classes_bias"].shape[0])

    @property
    def input_channels(self) -> tuple[int, ...]:
        return tuple(int(self.arrays[f"lateral_{t}_weight"].shape[0]) for t in TAPS)

    def parameters(self, tail: bool = True) -> int:
        """Trained numbers: the head's, plus (``tail``) the fine-tuned backbone blocks'."""
        return int(sum(a.size for name, a in self.arrays.items() if a.ndim and (tail or not is_tail_array(name))))

    def _lateral(self, tap: str, maps: np.ndarray) -> np.ndarray:
        return dense(maps, self.arrays[f"lateral_{tap}_weight"], self.arrays[f"lateral_{tap}_bias"])

    def logits(self, pyramid: list[np.ndarray]) -> np.ndarray:
        """(n, h/4, w/4, classes) scores from the NHWC maps of strides 4, 8, 16, 32 and the input of
        the backbone's last blocks (used instead of the stride-32 map when the head fine-tuned them)."""
        s4, s8, s16, s32 = (np.asarray(m, dtype=np.float32) for m in pyramid[:4])
        if self.tail:
            if len(pyramid) < 5:
                raise ValueError("this head fine-tuned the backbone's last blocks: it needs their input map")
            s32 = run_tail(self.tail, pyramid[4])
        a = self.arrays
        context = s32.mean(axis=(1, 2)) @ a["context_weight"] + a["context_bias"]
        p32 = self._lateral("s32", s32) + context[:, None, None, :]
        p16 = self._lateral("s16", s16) + resize_maps(p32, s16.shape[1], s16.shape[2])
        p8 = self._lateral("s8", s8) + resize_maps(p16, s8.shape[1], s8.shape[2])
        f8 = np.maximum(conv3x3(np.maximum(p8, 0), a["mix8_weight"], a["mix8_bias"]), 0)
        p4 = self._lateral("s4", s4) + resize_maps(f8, s4.shape[1], s4.shape[2])
        f4 = np.maximum(conv3x3(np.maximum(p4, 0), a["mix4_weight"], a["mix4_bias"]), 0)
        return dense(f4, a["classes_weight"], a["classes_bias"])


def scaled_probabilities(logits: np.ndarray, canvas_shape: tuple[int, int], scaled: tuple[int, int]) -> np.ndarray:
    """Class probabilities over the photo inside a canvas: one photo's stride-4 ``logits``
    upsampled to the canvas (``canvas_shape`` = height, width) and cut to the scaled photo
    (``scaled`` = width, height, at the canvas's top left)."""
    rows = interpolation_matrix(logits.shape[0], canvas_shape[0])[:scaled[1]]
    cols = interpolation_matrix(logits.shape[1], canvas_shape[1])[:scaled[0]]
    return softmax(np.einsum("hi,ijc,wj->hwc", rows, logits, cols, optimize=True))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    return shifted / shifted.sum(axis=axis, keepdims=True)
