"""The encoder interface shared by every image model."""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from typing import ContextManager, Iterator, Sequence

import numpy as np
from PIL import Image

from ...common.runtime import InProgress


class EncoderError(RuntimeError):
    """A model is missing, cannot be loaded or cannot be exported."""


class SearchesInProgress(InProgress):
    """Photo searches under way in this process.  They share its cores whichever model each one
    is running at the moment (the garment finder's glance, the serving encoder) or none (decoding,
    vector search), so one count serves every encoder.  Marks nest: a search that calls another
    search on the same thread counts once."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = threading.local()

    @contextlib.contextmanager
    def mark(self) -> Iterator[None]:
        depth = getattr(self._depth, "value", 0)
        self._depth.value = depth + 1
        try:
            if depth:
                yield
            else:
                with super().mark():
                    yield
        finally:
            self._depth.value = depth


SEARCHES = SearchesInProgress()


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
    # How many of this model's first results the exact-first rule reads when the model keeps
    # backbone vectors (setting exact_first_depth = "auto"; :mod:`lookalike.search.exact`).
    exact_first_depth: int = 50

    @abstractmethod
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One RGB image to the model's input array (uint8, HxWx3)."""

    @abstractmethod
    def embed(self, batch: np.ndarray) -> np.ndarray:
        """A stacked batch from ``preprocess`` to an (n, dim) float32 array of unit vectors."""

    def embed_keeping(self, batch: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``embed``, plus the vectors of other models this one computes on the way, by model
        identity (a fine-tuned model's off-the-shelf backbone features).  The store keeps them
        beside the serving vectors: re-indexing back needs no image, and a photo search can put
        the exact product first (:mod:`lookalike.search.exact`).  Plain models keep nothing."""
        return self.embed(batch), {}

    def searching(self) -> ContextManager[None]:
        """Held by a photo search for its whole length (decode, models, vector search): an encoder
        that can run a photo on one thread or on all of them runs it wide only for the sole
        search in progress (see :data:`SEARCHES`)."""
        return SEARCHES.mark()

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
