"""A fine-tuned model as an encoder: the ONNX backbone(s), then the trained head in NumPy.

The store records the model's identity (``name@weights-hash``), so vectors of two versions
of a model never mix, exactly as with the pretrained encoders.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from .base import Encoder

# An unfrozen head (--unfreeze-head) ranks an altered photo's own product lower than a frozen one:
# the rule reads its first 200 (chosen on a development split of Myntra: at 50, crop and JPEG views
# stayed 4.6 points short of off the shelf; README, "Fine-tuned embeddings and compact codes").
UNFROZEN_EXACT_FIRST_DEPTH = 200


class FineTunedEncoder(Encoder):
    """Backbone features (each backbone letterboxes to its own size) through a trained head."""

    def __init__(self, model, backbone_factory: Callable[[str], Encoder]):
        self.model = model
        self.backbones = [backbone_factory(name) for name in model.backbones]
        identities = [b.identity for b in self.backbones]
        if identities != model.info["backbones"]:
            raise ValueError(f"model {model.name!r} was trained on {model.info['backbones']}, but this installation has {identities}")
        self.name = model.name
        self.version = model.version
        self.dim = model.head.dim
        # One input per backbone; with a single backbone the pixels are passed through unchanged.
        self.input_size = max(b.input_size for b in self.backbones)
        if model.head.pretrained_conv is not None:  # an unfrozen head moves altered photos further down
            self.exact_first_depth = UNFROZEN_EXACT_FIRST_DEPTH

    @property
    def quantizer(self):
        return self.model.quantizer

    def preprocess(self, image: Image.Image) -> np.ndarray:
        if len(self.backbones) == 1:
            return self.backbones[0].preprocess(image)
        return _stack_inputs([b.preprocess(image) for b in self.backbones], self.input_size)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self.embed_keeping(batch)[0]

    def embed_keeping(self, batch: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The head's vectors and each backbone's own (unit, pooled) vectors.  An unfrozen head
        reads a feature map: it keeps the vector the pretrained network makes of that map
        (under the plain backbone's identity, so they compare with its stored vectors), or
        nothing when the model predates keeping its pretrained convolution."""
        if len(self.backbones) == 1:
            parts = [self.backbones[0].embed(batch)]
        else:
            parts = [b.embed(_unstack(batch, i, b.input_size)) for i, b in enumerate(self.backbones)]
        head = self.model.head
        vectors = head(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1))
        if head.conv is not None:
            pooled_as = getattr(self.backbones[0], "pooled_identity", None)
            if head.pretrained_conv is None or pooled_as is None:
                return vectors, {}
            return vectors, {pooled_as: head.off_the_shelf(parts[0])}
        return vectors, {b.identity: part for b, part in zip(self.backbones, parts)}


def _stack_inputs(parts: list[np.ndarray], size: int) -> np.ndarray:
    """Several backbones' inputs (of different sizes) in one array: padded, stacked on the channel axis."""
    out = np.zeros((size, size, 3 * len(parts)), dtype=np.uint8)
    for i, part in enumerate(parts):
        out[: part.shape[0], : part.shape[1], 3 * i : 3 * i + 3] = part
    return out


def _unstack(batch: np.ndarray, index: int, size: int) -> np.ndarray:
    return np.ascontiguousarray(batch[:, :size, :size, 3 * index : 3 * index + 3])
