"""Answering queries: a vector plus filters in, ranked products with metadata out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .filters import Clause, MetadataColumns
from .index import VectorIndex
from .store import ProductStore


@dataclass
class Hit:
    """One search result: the product, its cosine similarity to the query, and its metadata."""

    id: str
    score: float
    metadata: dict[str, Any]
    image: str | None = None
    tags: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(self.score, 6), "metadata": self.metadata, "tags": self.tags, "image": self.image}


def allowed_mask(columns: MetadataColumns, clauses: list[Clause], exclude: list[int] | None) -> np.ndarray | None:
    """The rowids a query may return: the filter's matches, minus excluded products (e.g. the query product)."""
    mask = columns.mask(clauses)
    if exclude:
        if mask is None:
            mask = np.ones(max(columns.capacity, max(exclude) + 1), dtype=bool)
        keep = [r for r in exclude if r < len(mask)]
        mask[keep] = False
    return mask


def find(index: VectorIndex, columns: MetadataColumns, store: ProductStore, vector: np.ndarray, k: int,
         clauses: list[Clause], exclude: list[int] | None = None) -> list[Hit]:
    """The k best products for ``vector`` that pass every clause."""
    ids, scores = index.search(vector, k, allowed_mask(columns, clauses, exclude))
    products = store.get_by_rowids(ids.tolist())
    hits = []
    for rowid, score in zip(ids.tolist(), scores.tolist()):
        product = products.get(rowid)
        if product is not None:  # deleted between search and lookup
            hits.append(Hit(product.id, float(score), product.metadata, product.image, product.tags))
    return hits
