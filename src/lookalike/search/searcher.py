"""Answering queries: one recipe for the CLI, the API and the web pages.

A :class:`Searcher` serves one model: it embeds the query with that model's encoder, builds a
:class:`~lookalike.vectors.VectorFilter` from the ``where`` clauses, the exclusions and the
query's modifiers, asks the vector backend, and joins the hits with the products' metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

import numpy as np
from PIL import Image

from ..vectors import VectorFilter
from .exact import ExactFirst
from .filters import Clause, clauses_expression, parse_where
from .live import ServingIndex
from .queries import ImageQuery, ProductQuery, Query, VectorQuery

ImageReader = Callable[[Any, int], Image.Image]  # (path, URL, bytes or PIL image; draft size) -> RGB picture


class NotFoundError(KeyError):
    """No product has the given id."""

    def __init__(self, product_id: str):
        super().__init__(product_id)
        self.product_id = product_id

    def __str__(self) -> str:
        return f"no product with id {self.product_id!r}"


@dataclass
class Hit:
    """One search result: the product, its cosine similarity to the query, and its metadata."""

    id: str
    score: float
    metadata: dict[str, Any]
    image: str | None = None
    tags: dict[str, dict[str, Any]] = field(default_factory=dict)
    evidence: dict[str, Any] | None = None  # text and "like this, but…" queries: what ranked it

    def to_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "score": round(self.score, 6), "metadata": self.metadata, "tags": self.tags, "image": self.image}
        return out if self.evidence is None else {**out, "evidence": self.evidence}


class ProductLookup(Protocol):
    """Products by id or rowid (:class:`lookalike.storage.ProductStore`)."""

    def get(self, item_id: str) -> Any: ...

    def get_by_rowids(self, rowids: Iterable[int]) -> dict[int, Any]: ...


class Searcher:
    """Queries against one serving model."""

    def __init__(self, serving: ServingIndex, products: ProductLookup, read_image: ImageReader, pinned_facets: list[str] | None = None,
                 exact_first: ExactFirst | None = None):
        self.serving, self.products, self.read_image = serving, products, read_image
        self.pinned_facets = pinned_facets or []
        self.exact_first = exact_first if exact_first is not None and exact_first.depth > 0 else None

    @property
    def dim(self) -> int:
        return self.serving.encoder.dim

    def embed(self, image: Any) -> np.ndarray:
        """The unit vector of one image with the serving model."""
        return self.embed_keeping(image)[0]

    def embed_keeping(self, image: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The unit vector of one image, and the vectors the serving model keeps beside it (a
        fine-tuned model's backbone vectors; computed on the way, so they cost nothing more)."""
        encoder = self.serving.encoder
        vectors, kept = encoder.embed_keeping(encoder.preprocess(self.read_image(image, encoder.input_size))[None])
        return vectors[0], {model: rows[0] for model, rows in kept.items()}

    def product(self, product_id: str) -> Any:
        product = self.products.get(str(product_id))
        if product is None:
            raise NotFoundError(str(product_id))
        return product

    def count(self) -> int:
        """Products with a vector (after catching up with other processes' writes)."""
        self.serving.sync()
        return self.serving.backend.count

    def search(self, query: Query) -> list[Hit]:
        """The query's k best products, best first, among those its filters allow (after catching
        up with writes other processes committed, so a CLI ingest shows in a running server)."""
        self.serving.sync()
        clauses = parse_where(query.where)
        columns = self.serving.columns
        columns.mask(clauses)  # reject a bad filter before spending time on an image
        exclude = self._rowids(query.exclude)
        if isinstance(query, ImageQuery):
            with self.serving.encoder.searching():  # the whole search: the model runs wide only for a lone one
                vector, kept = self.embed_keeping(query.image)
                return self._find(vector, query.k, clauses, exclude, kept)
        if isinstance(query, ProductQuery):
            if query.change:
                raise TypeError("a ProductQuery with changes is answered by the text service (Engine.query)")
            product = self.product(query.product_id)
            clauses += query.modifier_clauses(product.metadata)
            vector = self.serving.backend.vector(product.rowid)
            exclude.append(product.rowid)
        elif isinstance(query, VectorQuery):
            vector = np.asarray(query.vector, dtype=np.float32)
            if vector.shape != (self.dim,):
                raise ValueError(f"expected a vector of {self.dim} numbers (the encoder {self.serving.encoder.identity}), "
                                 f"got shape {vector.shape}")
        else:
            raise TypeError(f"not a query: {type(query).__name__}")
        return self._find(vector, query.k, clauses, exclude)

    def _rowids(self, product_ids: tuple[str, ...]) -> list[int]:
        return [p.rowid for p in (self.products.get(i) for i in product_ids) if p is not None]

    def _find(self, vector: np.ndarray, k: int, clauses: list[Clause], exclude: list[int],
              kept: dict[str, np.ndarray] | None = None) -> list[Hit]:
        """The ``k`` best products; with the query's backbone vectors (``kept``) and the exact-first
        rule on, the one nearest by those among the first ``depth`` goes first (:mod:`.exact`)."""
        rule = self.exact_first if kept else None
        where = VectorFilter(self.serving.columns.mask(clauses), clauses_expression(clauses), tuple(exclude))
        ids, scores = self.serving.backend.search(vector, max(k, rule.depth) if rule else k, where)
        products = self.products.get_by_rowids(ids.tolist())
        found = [(products[r], s) for r, s in zip(ids.tolist(), scores.tolist()) if r in products]  # not deleted meanwhile
        hits = [Hit(p.id, float(s), p.metadata, p.image, p.tags) for p, s in found]
        picked = rule.pick(kept, [p.rowid for p, _ in found], {p.rowid: p.image_hash for p, _ in found}) if rule is not None and kept else None
        if rule is not None and picked is not None:
            position, similarity = picked
            hits[position].evidence = {"placed_first": f"nearest photo off the shelf among the model's first {rule.depth}",
                                       "backbone_similarity": round(similarity, 6), "model_rank": position + 1}
            hits.insert(0, hits.pop(position))
        return hits[:k]

    def search_with_regions(self, vector: np.ndarray, k: int, where: Iterable[str], regions: tuple[np.ndarray, np.ndarray]) -> list[Hit]:
        """The ``k`` best products for a garment vector, each scored by the better of its whole
        photo and its garment region of the same group (``regions``: rowids and their vectors).
        Candidates are merged by rowid; only the products returned are read from the store."""
        self.serving.sync()
        clauses = parse_where(list(where))
        depth = max(3 * k, 50)
        mask = self.serving.columns.mask(clauses)
        ids, scores = self.serving.backend.search(vector, depth, VectorFilter(mask, clauses_expression(clauses)))
        best = dict(zip(ids.tolist(), scores.tolist()))
        rowids, matrix = regions
        if len(rowids) and matrix.shape[1] == len(vector):
            allowed = self.serving.backend.live_mask()
            if mask is not None:
                allowed = VectorFilter(mask).bitmap(allowed)
            inside = rowids < len(allowed)
            keep = np.flatnonzero(inside)[allowed[rowids[inside]]]
            region_scores = (matrix @ np.asarray(vector, dtype=np.float32))[keep]  # no copy of the kept rows
            order = np.argsort(-region_scores)[:depth]
            for rowid, score in zip(rowids[keep[order]].tolist(), region_scores[order].tolist()):
                if score > best.get(rowid, -np.inf):
                    best[rowid] = score
        return self._hits(sorted(best.items(), key=lambda item: -item[1]), k)

    def _hits(self, ranked: list[tuple[int, float]], k: int) -> list[Hit]:
        """The first ``k`` of ``ranked`` (rowid, score) that are still in the store, with their products."""
        hits: list[Hit] = []
        start = 0
        while len(hits) < k and start < len(ranked):
            chunk = ranked[start : start + k - len(hits)]  # rows deleted meanwhile are replaced from further down
            products = self.products.get_by_rowids([rowid for rowid, _ in chunk])
            hits += [Hit(p.id, float(score), p.metadata, p.image, p.tags) for p, score in
                     ((products.get(rowid), score) for rowid, score in chunk) if p is not None]
            start += len(chunk)
        return hits

    def matching_rowids(self, where: Iterable[str] | str | None = None) -> np.ndarray:
        """Rowids of products with a vector that match ``where``, ascending (catalogue order)."""
        mask = self.serving.columns.mask(parse_where(where))
        return np.flatnonzero(VectorFilter(mask).bitmap(self.serving.backend.live_mask()) if mask is not None
                              else self.serving.backend.live_mask())

    def browse(self, where: Iterable[str] | str | None = None, offset: int = 0, limit: int = 48) -> tuple[int, list[Any]]:
        """A page of the catalogue (in ingest order) among products matching ``where``; returns (total, page)."""
        self.serving.sync()
        live = self.matching_rowids(where)
        page = live[offset : offset + limit].tolist()
        products = self.products.get_by_rowids(page)
        return len(live), [products[r] for r in page if r in products]

    def facets(self, max_values: int = 100) -> list[dict[str, Any]]:
        """Filterable columns with their values and counts (or numeric ranges), pinned ones first."""
        self.serving.sync()
        found = self.serving.columns.facets(max_values)
        if not self.pinned_facets:
            return found
        by_name = {f["name"]: f for f in found}
        return [by_name[c] for c in self.pinned_facets if c in by_name]
