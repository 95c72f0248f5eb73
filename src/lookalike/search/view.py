"""A read-mostly view of one serving store, for the capabilities that learn from it.

Training and tagging need the catalogue's products, thumbnails, labels and stored vectors, a
folder for their artefacts, and (tagging) a way to write tags back.  They get this view, never
the engine: what they can touch is written down here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..config import Settings
from ..images import ImageLimits
from ..models.encoders import Encoder
from ..storage import ProductStore
from .searcher import Searcher


@dataclass(frozen=True)
class CatalogueView:
    directory: Path
    settings: Settings
    limits: ImageLimits
    store: ProductStore
    searcher: Searcher

    @property
    def encoder(self) -> Encoder:
        return self.searcher.serving.encoder

    def matching_rowids(self, where: Iterable[str] | str | None = None) -> np.ndarray:
        """Rowids of products with a vector that match ``where``, ascending."""
        return self.searcher.matching_rowids(where)

    def vector(self, rowid: int) -> np.ndarray:
        """A product's stored vector from the serving model."""
        return self.searcher.serving.backend.vector(rowid)

    def live_mask(self) -> np.ndarray:
        return self.searcher.serving.backend.live_mask()

    def column_names(self) -> list[str]:
        return self.searcher.serving.columns.names()

    def write_tags(self, entries: list[tuple[int, dict[str, dict[str, Any]]]], tagger: str) -> int:
        return self.searcher.serving.write_tags(entries, tagger)
