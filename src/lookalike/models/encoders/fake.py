"""A model-free encoder for tests of the seams: the vector is a hash of the pixels.

Identical pictures get identical vectors, different ones (almost surely) near-orthogonal
vectors, in microseconds and without ONNX, so ingest, storage, search and the interfaces can be
tested in milliseconds; the real model stays in the end-to-end tests.  Tests register it with
``register_encoder("fake", FakeEncoder.factory)``; it is not offered to users.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from PIL import Image

from .base import Encoder


class FakeEncoder(Encoder):
    def __init__(self, dim: int = 32, input_size: int = 32, name: str = "fake"):
        self.name, self.version, self.dim, self.input_size = name, "1", dim, input_size

    @staticmethod
    def factory(settings: Any = None) -> FakeEncoder:
        return FakeEncoder()

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image.convert("RGB").resize((self.input_size, self.input_size)), dtype=np.uint8)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        vectors = np.stack([self._vector(pixels.tobytes()) for pixels in batch]) if len(batch) else np.zeros((0, self.dim))
        return vectors.astype(np.float32)

    def _vector(self, data: bytes) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
        vector = np.random.default_rng(seed).normal(size=self.dim)
        return vector / np.linalg.norm(vector)
