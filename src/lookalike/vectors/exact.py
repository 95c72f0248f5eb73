"""Exact search: one float32 matrix whose row number is the id, scored by one matrix product.

The other in-memory backends extend it: they keep this matrix for exact re-ranking (so scores
are true cosine similarities whichever structure proposed the candidates) and as the source
they rebuild their derived structures from.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .base import Fields, Neighbours, VectorFilter, checked, no_neighbours, top_k

# Below this many allowed ids a filtered query is answered by scanning them exactly.
EXACT_SUBSET_MAX = 4096
EXACT_BLOCK_SCORES = 8_000_000  # scores computed at once by a batched exact search (32 MB)


class ExactBackend:
    """Unit vectors keyed by integer id, searched exactly.  Thread-safe."""

    name = "exact"
    persistent = False  # rebuilt from the store at every open (a snapshot holds only derived structures)
    wants_fields = False  # filters arrive as bitmaps over ids
    scan_small_subsets = True  # a filter leaving few ids: score those exactly (a subclass that must answer from its own structure says False)

    def __init__(self, dim: int):
        self.dim = dim
        self.matrix = np.zeros((0, dim), dtype=np.float32)
        self.live = np.zeros(0, dtype=bool)
        self._count = 0
        self._lock = threading.RLock()

    # ---- contents -------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return self._count

    @property
    def capacity(self) -> int:
        return len(self.live)

    def _grow(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        new_cap = max(needed, int(self.capacity * 1.5) + 1024)
        matrix = np.zeros((new_cap, self.dim), dtype=np.float32)
        matrix[: self.capacity] = self.matrix
        live = np.zeros(new_cap, dtype=bool)
        live[: self.capacity] = self.live
        self._grew(new_cap)
        self.matrix, self.live = matrix, live

    def _grew(self, capacity: int) -> None:
        """Hook: a subclass resizes its per-id arrays (codes) to ``capacity``."""

    def _checked(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return checked(ids, vectors, self.dim)

    def load(self, ids: np.ndarray, vectors: np.ndarray, fields: Fields | None = None) -> None:
        ids, vectors = self._checked(ids, vectors)
        if len(ids):
            with self._lock:
                self._store(ids, vectors)

    def upsert(self, ids: np.ndarray, vectors: np.ndarray, fields: Fields | None = None) -> None:
        ids, vectors = self._checked(ids, vectors)
        if len(ids):
            with self._lock:
                self._store(ids, vectors)
                self._added(ids, vectors)

    def _store(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._grow(int(ids.max()) + 1)
        self._count += len(ids) - int(np.count_nonzero(self.live[ids]))
        self.matrix[ids] = vectors
        self.live[ids] = True

    def _added(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Hook: a subclass updates its derived structure for replaced or new ids."""

    def remove(self, ids: np.ndarray) -> int:
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[(ids >= 0) & (ids < self.capacity)]
        with self._lock:
            present = ids[self.live[ids]]
            if len(present) == 0:
                return 0
            self.live[present] = False
            self.matrix[present] = 0.0
            self._count -= len(present)
            self._removed(present)
            return len(present)

    def _removed(self, ids: np.ndarray) -> None:
        """Hook: a subclass forgets ids in its derived structure."""

    def annotate(self, ids: np.ndarray, fields: Fields) -> None:
        """Filter fields are the serving index's columns' business here (filters arrive as bitmaps)."""

    def vector(self, id_: int) -> np.ndarray:
        if id_ < 0 or id_ >= self.capacity or not self.live[id_]:
            raise KeyError(id_)
        return self.matrix[id_].copy()

    def ids(self) -> np.ndarray:
        return np.flatnonzero(self.live)

    def live_mask(self) -> np.ndarray:
        return self.live

    # ---- persistence (nothing derived to persist) ---------------------------------------------
    def snapshot(self, directory: Path, generation: int, model: str = "") -> None:
        return None

    def restore(self, directory: Path, model: str = "") -> int | None:
        return None

    def refresh(self, ids: np.ndarray) -> None:
        return None

    def discard_snapshot(self) -> None:
        return None

    def maintain(self) -> bool:
        return False

    def describe(self) -> str:
        return "flat (exact)"

    def memory_bytes(self) -> int:
        return int(self.matrix.nbytes + self.live.nbytes)

    # ---- search ---------------------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int, filter: VectorFilter | np.ndarray | None = None) -> Neighbours:
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dim:
            raise ValueError(f"query has {query.shape[0]} dimensions; the index has {self.dim}")
        where = VectorFilter.coerce(filter)
        if k <= 0 or self._count == 0:
            return no_neighbours()
        with self._lock:
            filtered, mask, n_allowed = self._allowed(where)
            if n_allowed == 0:
                return no_neighbours()
            k = min(k, n_allowed)
            if filtered and n_allowed <= EXACT_SUBSET_MAX and self.scan_small_subsets:
                return self._exact_subset(query, np.flatnonzero(mask), k)
            return self._search(query, k, mask, filtered, n_allowed)

    def search_many(self, queries: np.ndarray, k: int, filter: VectorFilter | np.ndarray | None = None) -> list[Neighbours]:
        """:meth:`search` for each row; when every query would scan the whole matrix exactly, the
        scores come from one matrix product per block of queries (a batch job over a catalogue
        below the ANN threshold is otherwise one matrix-vector product per product)."""
        queries = np.atleast_2d(queries)
        where = VectorFilter.coerce(filter)
        with self._lock:
            filtered, mask, n_allowed = self._allowed(where)
            batched = self._scans_exactly() and len(queries) > 1 and k > 0 and queries.shape[1] == self.dim and \
                n_allowed > 0 and not (filtered and n_allowed <= EXACT_SUBSET_MAX and self.scan_small_subsets)
            if batched:
                return self._exact_masked_many(np.ascontiguousarray(queries, dtype=np.float32), mask, min(k, n_allowed))
        return [self.search(q, k, filter) for q in queries]

    def _allowed(self, where: VectorFilter | None) -> tuple[bool, np.ndarray, int]:
        """(whether ``where`` restricts, the allowed ids' mask, how many are allowed); call under the lock."""
        filtered = where is not None and where.restricts
        mask = where.bitmap(self.live) if filtered and where is not None else self.live
        return filtered, mask, int(np.count_nonzero(mask)) if filtered else self._count

    def _scans_exactly(self) -> bool:
        """Hook: whether :meth:`_search` scores every allowed vector exactly (a subclass answering
        from another structure says no while it has one)."""
        return type(self)._search is ExactBackend._search

    def _exact_masked_many(self, queries: np.ndarray, mask: np.ndarray, k: int) -> list[Neighbours]:
        out: list[Neighbours] = []
        block = max(1, EXACT_BLOCK_SCORES // max(1, self.capacity))
        for start in range(0, len(queries), block):
            scores = queries[start:start + block] @ self.matrix.T
            scores[:, ~mask] = -np.inf
            out.extend(_best(row, k) for row in scores)
        return out

    def _search(self, query: np.ndarray, k: int, mask: np.ndarray, filtered: bool, n_allowed: int) -> Neighbours:
        """Hook: how a subclass searches many allowed ids; exact here."""
        return self._exact_masked(query, mask, k)

    def _exact_subset(self, query: np.ndarray, ids: np.ndarray, k: int) -> Neighbours:
        scores = self.matrix[ids] @ query
        order = top_k(scores, k)
        return ids[order], scores[order]

    def _exact_masked(self, query: np.ndarray, mask: np.ndarray, k: int) -> Neighbours:
        scores = self.matrix @ query
        scores[~mask] = -np.inf
        return _best(scores, k)


def _best(scores: np.ndarray, k: int) -> Neighbours:
    """The k best of one query's scores over every id (disallowed ids scored -inf and never returned)."""
    order = top_k(scores, k)
    order = order[np.isfinite(scores[order])]
    return order.astype(np.int64), scores[order]
