"""The encoder interface shared by every image model."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import ContextManager, Sequence

import numpy as np
from PIL import Image


class EncoderError(RuntimeError):
    """A model is missing, cannot be loaded or cannot be exported."""


class Encoder(ABC):
    """Maps images to unit-length float32 vectors; cosine similarity is the inner product.

    Work is split like sentence-transformers' ``encode``: ``preprocess`` is cheap, pure and
    thread-safe (the ingest pipeline runs it in loader threads next to decoding), while
    ``embed`` runs the model on a ready batch.
    """

    name: str
    version: str
    dim: int
    input_size: int

    @abstractmethod
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One RGB image to the model's input array (uint8, HxWx3)."""

    @abstractmethod
    def embed(self, batch: np.ndarray) -> np.ndarray:
        """A stacked batch from ``preprocess`` to an (n, dim) float32 array of unit vectors."""

    def searching(self) -> ContextManager[None]:
        """Held by a search for its whole length (decode, model, vector search): an encoder that
        can run a photo on one thread or on all of them runs it wide only for the sole search in
        progress.  Nothing to do for most encoders."""
        return contextlib.nullcontext()

    def encode(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Embed a list of RGB images, batch by batch."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            parts.append(self.embed(np.stack([self.preprocess(im) for im in chunk])))
        return np.concatenate(parts)

    @property
    def identity(self) -> str:
        return f"{self.name}@{self.version}"
