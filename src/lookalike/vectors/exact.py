"""Exact search: one float32 matrix whose row number is the id, scored by one matrix product.

The other in-memory backends extend it: they keep this matrix for exact re-ranking (so scores
are true cosine similarities whichever structure proposed the candidates) and as the source
they rebuild their derived structures from.

The matrix is snapshotted beside the store (``vectors.json`` naming a base file, the rows changed
since it and the live mask; see :mod:`lookalike.common.snapshots`) and memory-mapped back at open,
so a large catalogue starts serving without reading every vector out of SQLite, and rows never
touched by a query (most of a 10M-product matrix) stay on disk.  A save after a few changes writes
only those rows; the base is rewritten once the changes outgrow a quarter of it.
"""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import numpy as np

from ..common.snapshots import load_array, load_arrays, read_info, remove_unnamed, write_array, write_arrays, write_info
from .base import Fields, Neighbours, VectorFilter, checked, no_neighbours, top_k

# Below this many allowed ids a filtered query is answered by scanning them exactly.
EXACT_SUBSET_MAX = 4096
EXACT_BLOCK_SCORES = 8_000_000  # scores computed at once by a batched exact search (32 MB)
VECTORS_INFO = "vectors.json"
VECTOR_FILES = ("vectors", "live", "delta", "codes")  # the array files a vectors snapshot may name
REBASE_FRACTION = 0.25  # rewrite the base file once rows changed since it exceed this share


class ExactBackend:
    """Unit vectors keyed by integer id, searched exactly.  Thread-safe."""

    name = "exact"
    persistent = False  # not a database: filled at open from its own snapshot (then sent changes) or from the store
    wants_fields = False  # filters arrive as bitmaps over ids
    scan_small_subsets = True  # a filter leaving few ids: score those exactly (a subclass that must answer from its own structure says False)

    def __init__(self, dim: int):
        self.dim = dim
        self.matrix = np.zeros((0, dim), dtype=np.float32)
        self.live = np.zeros(0, dtype=bool)
        self._count = 0
        self._lock = threading.RLock()
        self.restored_vectors = False  # the matrix came back from a snapshot: the serving index sends only changes
        self._changed = np.zeros(0, dtype=bool)  # rows written since the base file was saved
        self._base: dict[str, str] = {}  # the base snapshot's files: "vectors" and any per-id arrays

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
        changed = np.zeros(new_cap, dtype=bool)
        changed[: self.capacity] = self._changed
        self._grew(new_cap)
        self.matrix, self.live, self._changed = matrix, live, changed

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
        self._changed[ids] = True

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
        return np.array(self.matrix[id_])  # a plain array, also when the matrix is memory-mapped

    def ids(self) -> np.ndarray:
        return np.flatnonzero(self.live)

    def live_mask(self) -> np.ndarray:
        return self.live

    # ---- the vectors snapshot ------------------------------------------------------------------
    def snapshot(self, directory: Path, generation: int, model: str = "") -> None:
        """Save the matrix: the rows changed since the base file, or a new base when they are many."""
        with self._lock:
            directory.mkdir(parents=True, exist_ok=True)
            changed = np.flatnonzero(self._changed & self.live)
            base_there = bool(self._base) and all((directory / name).exists() for name in self._base.values())
            delta = None
            if not base_there or len(changed) > REBASE_FRACTION * max(self._count, 1):
                arrays = {"vectors": self.matrix, **self._per_id_arrays()}
                self._base = {key: write_array(directory, key, generation, array) for key, array in arrays.items()}
                self._changed[:] = False
            elif len(changed):
                delta = write_arrays(directory, "delta", generation, {"ids": changed, "vectors": self.matrix[changed]})
            live = write_array(directory, "live", generation, self.live)
            write_info(directory, VECTORS_INFO, {"generation": int(generation), "model": model, "dim": self.dim,
                                                 "base": self._base, "delta": delta, "live": live})
            keep = {*self._base.values(), live, *([delta] if delta else [])}
        remove_unnamed(directory, VECTOR_FILES, VECTORS_INFO, keep)

    def restore(self, directory: Path, model: str = "") -> int | None:
        """Map ``model``'s saved matrix back (copy-on-write) and apply the rows changed since its
        base; returns the generation it reflects, or None (nothing usable: fill from the store)."""
        info = read_info(directory, VECTORS_INFO, model)
        if info is None or info.get("dim") != self.dim or not isinstance(info.get("base"), dict):
            return None
        try:
            base = {key: load_array(directory, name, mmap=key == "vectors") for key, name in info["base"].items()}
            live = load_array(directory, info["live"])
            delta = load_arrays(directory, info["delta"]) if info.get("delta") else {}
            with self._lock:
                self._restore_arrays(base, live, delta)
                self._base = dict(info["base"])
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
            self.discard_snapshot()
            return None
        return int(info["generation"])

    def _restore_arrays(self, base: dict[str, np.ndarray], live: np.ndarray, delta: dict[str, np.ndarray]) -> None:
        matrix = base.pop("vectors")
        if matrix.dtype != np.float32 or matrix.ndim != 2 or matrix.shape[1] != self.dim or live.dtype != bool or live.ndim != 1:
            raise ValueError("the saved vectors do not have this index's shape")
        self.matrix, self.live, self._changed = matrix, np.zeros(len(matrix), dtype=bool), np.zeros(len(matrix), dtype=bool)
        self._restore_per_id(base)
        if delta:
            ids, vectors = self._checked(delta["ids"], delta["vectors"])
            self._store(ids, vectors)  # marks them changed: the next save's delta still holds them
        self._grow(len(live))
        self.live[:] = False
        self.live[: len(live)] = live
        self._count = int(np.count_nonzero(self.live))
        self.restored_vectors = True

    def _per_id_arrays(self) -> dict[str, np.ndarray]:
        """Hook: per-id arrays a subclass derives from the vectors and saves with the base (codes)."""
        return {}

    def _restore_per_id(self, arrays: dict[str, np.ndarray]) -> None:
        """Hook: take back :meth:`_per_id_arrays` (ValueError when they do not fit the matrix)."""

    def refresh(self, ids: np.ndarray) -> None:
        return None

    def discard_snapshot(self) -> None:
        """Forget restored vectors (the snapshot belongs to another database): start empty."""
        with self._lock:
            self.matrix = np.zeros((0, self.dim), dtype=np.float32)
            self.live, self._changed = np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
            self._count, self._base, self.restored_vectors = 0, {}, False
            self._grew(0)

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
