"""Approximate search with FAISS above a size threshold, exact below it.

Above ``ann_threshold`` an index built from a FAISS index-factory string (IVF by default)
proposes ``k * rerank_factor`` candidates that are re-scored exactly, so scores are true
cosine similarities whichever structure found them.  A filter becomes an
``IDSelectorBitmap`` with ``nprobe`` raised as it gets more selective; if the approximate pass
still finds fewer than ``k`` matches the allowed set is scanned exactly, so a filtered query
returns ``k`` results whenever ``k`` products match.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..common.folders import remove_stale_partials, replace_atomically
from ..common.snapshots import write_info
from ..common.untyped import faiss
from .base import BackendError, Neighbours, VectorFilter, no_neighbours
from .exact import EXACT_SUBSET_MAX, ExactBackend

# Filtered queries probe enough lists to see this fraction of the allowed vectors an unfiltered
# 64-list query sees.  For a 5 % filter (320 lists) recall@10 was 1.000 at 1M (SQ8) and at 10M
# (fast-scan codes); half (640 lists) doubled the time for nothing, an eighth lost recall at 10M.
FILTER_PROBE_FRACTION = 0.25
# nprobe = 0 ("auto") probes this many lists, or this share of them when that is more: 64 was
# chosen at 1M vectors (4,096 lists, recall@10 0.96); at 10M (16,384 lists) 64 is 0.4 % of the
# collection and recall falls to 0.84, while 1 % of the lists keeps it above 0.95.
DEFAULT_NPROBE = 64
AUTO_PROBE_SHARE = 0.01
# From this many vectors of at most FAST_SCAN_MAX_DIM dimensions, ``auto`` stores 4-bit fast-scan
# PQ codes of each vector's residual to its list centre (two dimensions per code, 32 bytes for
# 128-d) instead of SQ8: at 10M (fine-tuned 128-d) they scan the probed lists about twice as fast in
# a quarter of the memory, recall@10 0.97 at 164 lists.  Their ranking is coarser, so
# FAST_SCAN_RERANK times more candidates are re-scored exactly.  Wider vectors (PCA256 of 1,280-d)
# keep SQ8: residual 4-bit codes were not measured on them (the 1M sweep's non-residual ones
# plateaued at recall 0.78), and below 4M SQ8 already meets its targets.
FAST_SCAN_MIN = 4_000_000
FAST_SCAN_MAX_DIM = 128
FAST_SCAN_RERANK = 4


class IndexBuildError(BackendError):
    """The FAISS index cannot be built as asked (a bad factory string)."""


@dataclass(frozen=True)
class IndexSpec:
    """How to index: ``auto``, ``flat`` (exact) or a FAISS index factory string.  ``nprobe`` ≤ 0
    means automatic (:meth:`probes`)."""

    kind: str = "auto"
    ann_threshold: int = 20_000
    nprobe: int = 0
    rerank_factor: int = 10

    def factory_for(self, n: int, dim: int) -> str | None:
        """The FAISS factory string to use for ``n`` vectors, or None for exact search."""
        if self.kind == "flat" or (self.kind == "auto" and n < self.ann_threshold):
            return None
        if self.kind != "auto":
            return self.kind
        nlist = auto_nlist(n)
        reduced = min(dim, 256)
        prefix = f"PCA{reduced}," if reduced < dim else ""
        if n >= FAST_SCAN_MIN and reduced <= FAST_SCAN_MAX_DIM and reduced % 2 == 0:
            return f"{prefix}IVF{nlist},PQ{reduced // 2}x4fsr"  # "r": codes of the residual to the list centre (without: recall 0.26)
        return f"{prefix}IVF{nlist},SQ8"

    def probes(self, nlist: int) -> int:
        """Lists an unfiltered query probes: the set ``nprobe``, or automatically the larger of
        DEFAULT_NPROBE and AUTO_PROBE_SHARE of the lists."""
        wanted = self.nprobe if self.nprobe > 0 else max(DEFAULT_NPROBE, round(nlist * AUTO_PROBE_SHARE))
        return max(1, min(wanted, nlist))

    def filtered_probes(self, nlist: int, selectivity: float) -> int:
        """Lists a filtered query probes: enough that the allowed vectors seen are FILTER_PROBE_FRACTION
        of what an unfiltered query at the base nprobe (the set one, else DEFAULT_NPROBE) sees."""
        base = self.nprobe if self.nprobe > 0 else DEFAULT_NPROBE
        wanted = max(self.probes(nlist), math.ceil(base * FILTER_PROBE_FRACTION / max(selectivity, 1e-9)))
        return max(1, min(wanted, nlist))


def is_fast_scan(factory: str | None) -> bool:
    """Whether a factory string stores 4-bit fast-scan codes (re-ranked FAST_SCAN_RERANK times deeper)."""
    return factory is not None and "x4fs" in factory


def auto_nlist(n: int) -> int:
    """About 4*sqrt(n) inverted lists (a power of two), the usual FAISS guidance."""
    target = 4 * math.sqrt(max(n, 1))
    return int(min(65536, max(64, 2 ** round(math.log2(target)))))


def bitmap_selector(mask: np.ndarray) -> tuple[faiss.IDSelectorBitmap, np.ndarray]:
    """A FAISS selector for the ids where ``mask`` is true (keep the bits alive while searching)."""
    bits = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits)), bits


class FaissBackend(ExactBackend):
    """Exact search for small collections, a FAISS index (IVF by default) with exact re-ranking above."""

    name = "faiss"

    def __init__(self, dim: int, spec: IndexSpec = IndexSpec(), threads: int = 1):
        super().__init__(dim)
        self.spec = spec
        self.ann: faiss.Index | None = None
        self.ann_factory: str | None = None
        self.threads = max(1, threads)
        self._ann_saved = False  # the ANN index file on disk is this one, unchanged since
        self._ann_file: tuple[int, int] | None = None  # (inode, mtime) of that file: another process may replace it
        faiss.omp_set_num_threads(self.threads)

    # ---- keeping the ANN index in step ------------------------------------------------------
    def _added(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        # Remove every id, not only known ones: a restored snapshot may already hold it.
        self._ann_remove(ids)
        if self.ann is not None:
            self.ann.add_with_ids(vectors, ids)
            self._ann_saved = False

    def _removed(self, ids: np.ndarray) -> None:
        self._ann_remove(ids)

    def _ann_remove(self, ids: np.ndarray) -> None:
        """An index type that cannot remove (HNSW) is dropped and searches fall back to exact
        until the next rebuild, so a deleted product is never returned."""
        if self.ann is None:
            return
        self._ann_saved = False
        try:
            self.ann.remove_ids(ids)
        except RuntimeError:
            self.ann, self.ann_factory = None, None

    def refresh(self, ids: np.ndarray) -> None:
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if self.ann is None or len(ids) == 0:
            return
        with self._lock:
            self._ann_remove(ids)
            live = ids[ids < self.capacity]
            live = live[self.live[live]]
            if self.ann is not None and len(live):
                self.ann.add_with_ids(self.matrix[live], live)

    def discard_snapshot(self) -> None:
        with self._lock:
            super().discard_snapshot()
            self.ann, self.ann_factory = None, None

    # ---- building ---------------------------------------------------------------------------
    def wanted_factory(self) -> str | None:
        return self.spec.factory_for(self.count, self.dim)

    def needs_rebuild(self) -> bool:
        """True when the ANN index is missing, of the wrong kind, or sized for a much smaller collection."""
        wanted = self.wanted_factory()
        if wanted is None:
            return self.ann is not None
        if self.ann is None or self.ann_factory is None:
            return True
        if self.spec.kind == "auto":
            built_nlist = faiss.extract_index_ivf(self.ann).nlist
            return built_nlist * 4 <= auto_nlist(self.count) or built_nlist >= auto_nlist(self.count) * 4
        return wanted != self.ann_factory

    def maintain(self) -> bool:
        if not self.needs_rebuild():
            return False
        self.build_ann()
        return True

    def build_ann(self, seed: int = 1234) -> None:
        """(Re)build the ANN index from the stored vectors, or drop it for small collections."""
        factory = self.wanted_factory()
        with self._lock:
            if factory is None:
                self.ann, self.ann_factory = None, None
                return
            ids = self.ids()
            try:
                index = faiss.index_factory(self.dim, factory, faiss.METRIC_L2)
            except RuntimeError as exc:
                raise IndexBuildError(f"FAISS cannot build index {factory!r}: {exc}") from exc
            if not index.is_trained:
                # k-means wants ≥ 39 points per list (FAISS warns below); more only costs time.
                n_train = min(len(ids), max(50_000, 40 * _nlist_of(index)))
                sample = np.sort(np.random.default_rng(seed).choice(len(ids), n_train, replace=False))
                _seed_clustering(index, seed)
                index.train(self.matrix[ids[sample]])
            index = _with_ids(index)
            for start in range(0, len(ids), 65_536):  # gather in chunks: no second copy of a large matrix
                chunk = ids[start : start + 65_536]
                index.add_with_ids(self.matrix[chunk], chunk)
            self.ann, self.ann_factory, self._ann_saved = index, factory, False

    # ---- snapshots --------------------------------------------------------------------------
    def snapshot(self, directory: Path, generation: int, model: str = "") -> None:
        """Save the matrix (:meth:`ExactBackend.snapshot`), then the ANN index, atomically, tagged
        with the store generation it reflects.  An index unchanged since it was saved or restored
        is not written again (hundreds of MB at 1M vectors): only its tag moves on."""
        super().snapshot(directory, generation, model)
        index_path, info_path = directory / "ann.faiss", directory / "ann.json"
        with self._lock:
            if self.ann is None:
                for p in (index_path, info_path):
                    p.unlink(missing_ok=True)
                return
            info = {"factory": self.ann_factory, "generation": generation, "dim": self.dim, "ntotal": int(self.ann.ntotal), "model": model}
            if not (self._ann_saved and _file_identity(index_path) == self._ann_file):
                remove_stale_partials(directory, index_path.name)
                ann = self.ann
                replace_atomically(index_path, lambda partial: faiss.write_index(ann, str(partial)))
            self._ann_saved, self._ann_file = True, _file_identity(index_path)
        write_info(directory, info_path.name, info)

    def restore(self, directory: Path, model: str = "") -> int | None:
        """Map the saved matrix back and load the saved ANN index; returns the older of the two
        generations (catching up from there is harmless for the newer), or None if neither is usable.
        An ANN index without a matrix (a store saved before matrices were) still saves its rebuild."""
        matrix_gen = super().restore(directory, model)
        ann_gen = self._restore_ann(directory, model)
        if matrix_gen is None or ann_gen is None:
            return ann_gen if matrix_gen is None else matrix_gen
        return min(matrix_gen, ann_gen)

    def _restore_ann(self, directory: Path, model: str) -> int | None:
        info = snapshot_info(directory, model)
        if info is None or info.get("dim") != self.dim:
            return None
        identity = _file_identity(directory / "ann.faiss")
        try:
            index = faiss.read_index(str(directory / "ann.faiss"))
        except RuntimeError:
            return None  # a damaged snapshot is rebuilt from the store, never trusted
        if index.d != self.dim:
            return None
        with self._lock:
            self.ann, self.ann_factory = index, info["factory"]
            self._ann_saved, self._ann_file = identity is not None and identity == _file_identity(directory / "ann.faiss"), identity
        return int(info["generation"])

    def describe(self) -> str:
        return self.ann_factory or "flat (exact)"

    def ann_bytes(self) -> int:
        """The serialised size of the ANN index (0 without one)."""
        return 0 if self.ann is None else int(faiss.serialize_index(self.ann).nbytes)

    def memory_bytes(self) -> int:
        return super().memory_bytes() + self.ann_bytes()

    # ---- search -----------------------------------------------------------------------------
    def search_many(self, queries: np.ndarray, k: int, filter: VectorFilter | np.ndarray | None = None) -> list[Neighbours]:
        """One ANN call for all the queries (one filter for all), then each query's candidates
        re-ranked exactly: what a batch job (similar-items export) needs, without a call per query.
        Answers equal :meth:`search`'s; cases search answers exactly are delegated to it."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        where = VectorFilter.coerce(filter)
        with self._lock:
            filtered, mask, n_allowed = self._allowed(where)
            batched = self.ann is not None and len(queries) > 1 and k > 0 and queries.shape[1] == self.dim and \
                n_allowed > (EXACT_SUBSET_MAX if filtered else 0)
            if not batched:
                return super().search_many(queries, k, filter)
            assert self.ann is not None
            k = min(k, n_allowed)
            fetch = self._fetch(k)
            params, keep_alive = self._search_params(mask if filtered else None, n_allowed)
            with _openmp_threads(max(self.threads, os.cpu_count() or 1)):  # a batch is throughput work: every core
                _, found = self.ann.search(queries, fetch, params=params)
            del keep_alive
            out: list[Neighbours] = []
            for query, row in zip(queries, found):
                candidates = np.unique(row[row >= 0])
                candidates = candidates[mask[candidates]]
                out.append(self._exact_subset(query, candidates, k) if len(candidates) >= k else self._exact_masked(query, mask, k))
            return out

    def _scans_exactly(self) -> bool:
        return self.ann is None  # below the ANN threshold every search is an exact scan

    def _search(self, query: np.ndarray, k: int, mask: np.ndarray, filtered: bool, n_allowed: int) -> Neighbours:
        if self.ann is None:
            return self._exact_masked(query, mask, k)
        ids, scores = self._approximate(query, k, mask if filtered else None, n_allowed)
        if len(ids) < k:
            return self._exact_masked(query, mask, k)
        return ids, scores

    def _approximate(self, query: np.ndarray, k: int, mask: np.ndarray | None, n_allowed: int) -> Neighbours:
        assert self.ann is not None
        fetch = self._fetch(k)
        params, keep_alive = self._search_params(mask, n_allowed)
        with _openmp_threads(1):  # a single query: one thread (a second only spins)
            _, found = self.ann.search(query.reshape(1, -1), fetch, params=params)
        del keep_alive
        candidates = np.unique(found[0][found[0] >= 0])
        candidates = candidates[self.live[candidates]]
        if len(candidates) == 0:
            return no_neighbours()
        return self._exact_subset(query, candidates, min(k, len(candidates)))

    def rerank_depth(self) -> int:
        """Candidates re-scored exactly per result: ``rerank_factor``, FAST_SCAN_RERANK times that for 4-bit codes."""
        return max(1, self.spec.rerank_factor) * (FAST_SCAN_RERANK if is_fast_scan(self.ann_factory) else 1)

    def _fetch(self, k: int) -> int:
        """Candidates the ANN pass proposes for ``k`` results (re-scored exactly after)."""
        return min(self.count, k * self.rerank_depth())

    def _search_params(self, mask: np.ndarray | None, n_allowed: int) -> tuple[Any, Any]:
        """Search parameters for the ANN index: nprobe raised as a filter gets more selective
        (:meth:`IndexSpec.filtered_probes`; the full 1/selectivity scaling cost latency for no recall)."""
        selector, bits = (None, None)
        if mask is not None:
            selector, bits = bitmap_selector(mask)
        try:
            nlist = faiss.extract_index_ivf(self.ann).nlist
            if mask is None:
                nprobe = self.spec.probes(nlist)
            else:
                nprobe = self.spec.filtered_probes(nlist, max(n_allowed, 1) / max(self.count, 1))
            inner = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector) if selector else faiss.SearchParametersIVF(nprobe=nprobe)
        except RuntimeError:  # not an IVF index (e.g. HNSW from a custom factory string)
            inner = faiss.SearchParameters(sel=selector) if selector else None
        params = inner
        if isinstance(self.ann, faiss.IndexPreTransform) and inner is not None:
            params = faiss.SearchParametersPreTransform(index_params=inner)
        return params, (bits, selector, inner)


@contextlib.contextmanager
def _openmp_threads(count: int) -> Iterator[None]:
    """FAISS on ``count`` OpenMP threads for the block, then the calling thread's own count again.

    OpenMP's thread count belongs to each thread: a server's worker threads never set it and
    start at every core.  A single query gains no time from a second thread (the coarse
    quantiser's parallel loop leaves it spinning): 1M products in one process, 1.44 against
    1.49 ms at half the CPU (1.45 against 2.9 ms); the 1M server at 8 clients measured the same
    either way.  A batch is throughput work and gets every core."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def snapshot_info(directory: Path, model: str) -> dict[str, Any] | None:
    """The description of ``model``'s ANN snapshot in ``directory`` (factory, generation, dim),
    or None when there is none, it is unreadable, or it holds another model's vectors (a snapshot
    written before models were recorded is trusted; the dimension check is the caller's)."""
    index_path, info_path = directory / "ann.faiss", directory / "ann.json"
    if not (index_path.exists() and info_path.exists()):
        return None
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("model", model) != model or "factory" not in info or "generation" not in info:
        return None
    return info


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(inode, modification time) of a file, or None when absent: tells whether it was replaced."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _nlist_of(index: faiss.Index) -> int:
    try:
        return int(faiss.extract_index_ivf(index).nlist)
    except RuntimeError:
        return 1


def _seed_clustering(index: faiss.Index, seed: int) -> None:
    """Make k-means deterministic so rebuilding the same collection gives the same index."""
    with contextlib.suppress(RuntimeError):
        faiss.extract_index_ivf(index).cp.seed = seed


def _with_ids(index: faiss.Index) -> faiss.Index:
    """Indexes that cannot store our ids themselves (flat, HNSW) are wrapped in an id map."""
    try:
        faiss.extract_index_ivf(index)
        return index
    except RuntimeError:
        return faiss.IndexIDMap2(index)
