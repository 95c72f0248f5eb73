"""Vectors and their filter fields in Milvus: Milvus Lite (one local file) or a Milvus server or cluster.

``vector_backend = "milvus"`` with ``milvus_uri = "vectors.db"`` (Lite, a path; relative paths
are inside the store folder) or ``"http://host:19530"`` (a server; ``milvus_token`` if it asks
for one).  Each model's vectors are one collection: ``id`` (the store's rowid), ``vector``
(inner product on unit vectors, i.e. cosine), and two JSON fields that ``where`` clauses are
compiled against (:func:`lookalike.search.filters.filter_fields` and ``clauses_expression``), so
filters run inside Milvus, not on what it returns.  SQLite stays the source of truth: the
collection is derived, and tagged (a small file beside the store's other snapshots) with the
store generation it reflects.  Writes reach Milvus before that tag moves, so a crash leaves it
behind, never ahead, and the next open re-sends what changed since.

Filters that arrive as bare bitmaps (batch jobs' business rules) are spelled as id lists when
short, else answered by a wider search filtered here, and by id-list pages when that falls short.

Milvus Lite serves one process at a time and scans every row per query: right for a laptop and
for tests, not for speed; a catalogue that needs Milvus for its size runs a Milvus server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..common.folders import replace_atomically
from .base import BackendError, Fields, Neighbours, VectorFilter, checked, no_neighbours

log = logging.getLogger("lookalike.vectors.milvus")

MAX_LIMIT = 16_384   # the most results one Milvus search returns (its topk cap)
ID_LIST_MAX = 8_192  # ids spelled out in one filter expression
WRITE_BATCH = 1_000  # rows per upsert call (well under gRPC's message size at 1,280 dimensions)
QUERY_BATCH = 256    # queries per search call
# Searches read this client's session (its upserts are visible to its next query at no cost), but
# Milvus does not count deletes in a session: within this many seconds of a delete, searches ask
# for strong consistency (they wait for every write to apply, ~0.2 s on a server).
STRONG_AFTER_DELETE = 10.0
INDEX_TYPES = ("AUTOINDEX", "FLAT", "IVF_FLAT", "HNSW")
# Build and search parameters per index type (AUTOINDEX and FLAT take none): HNSW as FAISS's
# HNSW32 would be built; IVF_FLAT with lists for ~1M vectors, a few per cent of them probed.
BUILD_PARAMS: dict[str, dict[str, int]] = {"HNSW": {"M": 16, "efConstruction": 200}, "IVF_FLAT": {"nlist": 1024}}


def search_params(index: str, k: int) -> dict[str, Any]:
    extra = {"HNSW": {"ef": max(64, 2 * k)}, "IVF_FLAT": {"nprobe": 32}}.get(index, {})
    return {"metric_type": "IP", "params": extra}
EMPTY_FIELDS: dict[str, dict[str, Any]] = {"text": {}, "numbers": {}}


def collection_name(prefix: str, model: str, dim: int) -> str:
    """A collection per model: Milvus names allow letters, digits and underscores only."""
    readable = re.sub(r"[^A-Za-z0-9]+", "_", model).strip("_")[:40] or "model"
    digest = hashlib.sha1(f"{model}|{dim}".encode()).hexdigest()[:8]
    return f"{prefix}_{readable}_{digest}"


def _client(uri: str, token: str) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise BackendError("the milvus vector backend needs pymilvus (and milvus-lite for a local file): pip install 'lookalike[milvus]'") from exc
    local = "://" not in uri
    if local:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    try:
        return MilvusClient(uri=uri, token=token) if token else MilvusClient(uri=uri)
    except Exception as exc:
        hint = ("; Milvus Lite serves one process at a time: close the other process, or run a Milvus server "
                "(milvus_uri = \"http://host:19530\") for a store that several processes open") if local else ""
        raise BackendError(f"cannot open Milvus at {uri!r}: {exc}{hint}") from exc


class MilvusBackend:
    """One model's vectors in one Milvus collection; the live-id mask is kept here (one byte per id)."""

    name = "milvus"
    persistent = True    # the collection outlives the process: a restored one is sent only changes
    restored_vectors = False  # the ids it holds are not kept locally: the serving index reads them from the store
    wants_fields = True  # where clauses run inside Milvus over the fields sent with each vector

    def __init__(self, dim: int, uri: str, collection: str, token: str = "", index: str = "AUTOINDEX"):
        if index.upper() not in INDEX_TYPES:
            raise BackendError(f"milvus_index {index!r} is not one of {', '.join(INDEX_TYPES)}")
        self.dim, self.uri, self.collection, self.index = dim, uri, collection, index.upper()
        self.client = _client(uri, token)
        self.live = np.zeros(0, dtype=bool)
        self._count = 0
        self._lock = threading.RLock()
        self._state = "unclaimed"  # -> "restored" (the collection holds the store's vectors) or "fresh"
        self._failed = False       # a write did not reach Milvus: never tag the collection as current
        self._last_delete = -STRONG_AFTER_DELETE  # time.monotonic() of the last delete

    # ---- the collection ------------------------------------------------------------------------
    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"Milvus at {self.uri!r}, collection {self.collection!r}: {what} failed: {exc}") from exc

    def _create(self) -> None:
        """A new, empty collection (dropping any of that name: it is derived data)."""
        from pymilvus import DataType

        client = self.client
        if self._call("checking the collection", client.has_collection, self.collection):
            self._call("dropping a stale collection", client.drop_collection, self.collection)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("text", DataType.JSON)
        schema.add_field("numbers", DataType.JSON)
        index = client.prepare_index_params()
        index.add_index("vector", index_type=self.index, metric_type="IP", params=BUILD_PARAMS.get(self.index, {}))
        self._call("creating the collection", client.create_collection, self.collection, schema=schema, index_params=index,
                   consistency_level="Session")  # searches ask for more right after a delete (STRONG_AFTER_DELETE)
        self._call("loading the collection", client.load_collection, self.collection)
        self.live, self._count, self._state = np.zeros(0, dtype=bool), 0, "fresh"

    def _claim(self) -> None:
        """First use without a restored snapshot: whatever the collection holds is not known to match the store."""
        if self._state == "unclaimed":
            self._create()

    def _stored_dim(self) -> int | None:
        description = self._call("describing the collection", self.client.describe_collection, self.collection)
        for field in description.get("fields", []):
            if field.get("name") == "vector":
                return int(field.get("params", {}).get("dim", -1))
        return None

    # ---- contents ------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return self._count

    def _checked(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return checked(ids, vectors, self.dim)

    def _mark(self, ids: np.ndarray) -> None:
        needed = int(ids.max()) + 1
        if needed > len(self.live):
            grown = np.zeros(max(needed, int(len(self.live) * 1.5) + 1024), dtype=bool)
            grown[: len(self.live)] = self.live
            self.live = grown
        self._count += len(ids) - int(np.count_nonzero(self.live[ids]))
        self.live[ids] = True

    def _write(self, ids: np.ndarray, vectors: np.ndarray, fields: Fields | None) -> None:
        if fields is not None and len(fields) != len(ids):
            raise ValueError(f"expected filter fields for {len(ids)} ids, got {len(fields)}")
        for start in range(0, len(ids), WRITE_BATCH):
            rows = [{"id": int(i), "vector": v, "text": f.get("text", {}), "numbers": f.get("numbers", {})}
                    for i, v, f in zip(ids[start:start + WRITE_BATCH].tolist(), vectors[start:start + WRITE_BATCH],
                                       fields[start:start + WRITE_BATCH] if fields is not None else [EMPTY_FIELDS] * len(ids))]
            try:
                self._call("writing vectors", self.client.upsert, self.collection, rows)
            except BackendError:
                self._failed = True
                raise

    def upsert(self, ids: np.ndarray, vectors: np.ndarray, fields: Fields | None = None) -> None:
        ids, vectors = self._checked(ids, vectors)
        if len(ids):
            with self._lock:
                self._claim()
                self._write(ids, vectors, fields)
                self._mark(ids)

    def load(self, ids: np.ndarray, vectors: np.ndarray, fields: Fields | None = None) -> None:
        ids, vectors = self._checked(ids, vectors)
        if len(ids):
            with self._lock:
                self._claim()
                if self._state != "restored":
                    self._write(ids, vectors, fields)
                self._mark(ids)

    def annotate(self, ids: np.ndarray, fields: Fields) -> None:
        """Milvus replaces whole rows: fetch the vectors, send them back with the new fields."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        with self._lock:
            self._claim()
            by_id = dict(zip(ids.tolist(), fields))
            for start in range(0, len(ids), WRITE_BATCH):
                rows = self._call("reading vectors", self.client.get, self.collection, ids=ids[start:start + WRITE_BATCH].tolist(),
                                  output_fields=["vector"])
                if rows:
                    found = np.array([int(r["id"]) for r in rows], dtype=np.int64)
                    vectors = np.asarray([r["vector"] for r in rows], dtype=np.float32)
                    self._write(found, vectors, [by_id[i] for i in found.tolist()])

    def remove(self, ids: np.ndarray) -> int:
        """Deletes every id asked (a restored collection may hold ids the store has since deleted)."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        ids = ids[ids >= 0]
        if len(ids) == 0:
            return 0
        with self._lock:
            self._claim()
            for start in range(0, len(ids), ID_LIST_MAX):
                try:
                    self._call("deleting vectors", self.client.delete, self.collection, ids=ids[start:start + ID_LIST_MAX].tolist())
                except BackendError:
                    self._failed = True
                    raise
                finally:
                    self._last_delete = time.monotonic()
            known = ids[ids < len(self.live)]
            present = known[self.live[known]]
            self.live[present] = False
            self._count -= len(present)
            return len(present)

    def vector(self, id_: int) -> np.ndarray:
        if id_ < 0 or id_ >= len(self.live) or not self.live[id_]:
            raise KeyError(id_)
        rows = self._call("reading a vector", self.client.get, self.collection, ids=[int(id_)], output_fields=["vector"])
        if not rows:
            raise KeyError(id_)
        return np.asarray(rows[0]["vector"], dtype=np.float32)

    def ids(self) -> np.ndarray:
        return np.flatnonzero(self.live)

    def live_mask(self) -> np.ndarray:
        return self.live

    # ---- the generation tag ----------------------------------------------------------------------
    def _tag_path(self, directory: Path) -> Path:
        return Path(directory) / f"milvus-{self.collection}.json"

    def snapshot(self, directory: Path, generation: int, model: str = "") -> None:
        """Tag the collection with the store generation it reflects (atomically: write, then rename)."""
        if self._failed:
            log.warning("Milvus collection %s missed a write; it stays tagged with its last good generation, "
                        "so the next open re-sends what changed since", self.collection)
            return
        path = self._tag_path(directory)
        path.parent.mkdir(parents=True, exist_ok=True)
        tag = json.dumps({"generation": generation, "model": model, "collection": self.collection, "dim": self.dim, "uri": self.uri})
        replace_atomically(path, lambda partial: partial.write_text(tag, encoding="utf-8"))  # its own temporary file: savers never collide

    def restore(self, directory: Path, model: str = "") -> int | None:
        """The tagged generation when the collection is this model's and intact; otherwise a new,
        empty collection (filled from the store by :meth:`load`) and None."""
        with self._lock:
            try:
                tag = json.loads(self._tag_path(directory).read_text(encoding="utf-8"))
                usable = (tag.get("model") == model and tag.get("dim") == self.dim and isinstance(tag.get("generation"), int)
                          and self._call("checking the collection", self.client.has_collection, self.collection)
                          and self._stored_dim() == self.dim)
            except (OSError, ValueError, AttributeError):
                usable = False
            if not usable:
                self._create()
                return None
            self._call("loading the collection", self.client.load_collection, self.collection)
            self._state = "restored"
            return int(tag["generation"])

    def refresh(self, ids: np.ndarray) -> None:
        return None  # persistent: the serving index re-sends changed rows with upsert and remove

    def discard_snapshot(self) -> None:
        with self._lock:
            self._create()

    def maintain(self) -> bool:
        return False  # Milvus builds and compacts its own index

    def describe(self) -> str:
        where = "Milvus Lite " + self.uri if "://" not in self.uri else "Milvus " + self.uri
        return f"{where}, collection {self.collection} ({self.index}, inner product; filters in Milvus)"

    def memory_bytes(self) -> int:
        return int(self.live.nbytes)  # the vectors live in Milvus

    # ---- search -----------------------------------------------------------------------------------
    def _query(self, query: np.ndarray) -> np.ndarray:
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dim:
            raise ValueError(f"query has {query.shape[0]} dimensions, index has {self.dim}")
        return query

    def _run(self, queries: np.ndarray, limit: int, expression: str) -> list[Neighbours]:
        answers: list[Neighbours] = []
        consistency = "Strong" if time.monotonic() - self._last_delete < STRONG_AFTER_DELETE else "Session"
        for start in range(0, len(queries), QUERY_BATCH):
            batch = [q.tolist() for q in queries[start:start + QUERY_BATCH]]
            hits = self._call("searching", self.client.search, self.collection, data=batch, limit=limit, filter=expression,
                              output_fields=[], search_params=search_params(self.index, limit), consistency_level=consistency)
            for row in hits:
                answers.append((np.array([int(h["id"]) for h in row], dtype=np.int64),
                                np.array([float(h["distance"]) for h in row], dtype=np.float32)))
        return answers

    def _expression(self, where: VectorFilter | None) -> str | None:
        """The filter as one Milvus expression ("" for none), or None when it needs the bitmap path."""
        if where is None:
            return ""
        if where.expression or where.allowed is None:
            return where.full_expression()
        allowed = np.flatnonzero(where.bitmap(self.live))
        if len(allowed) <= ID_LIST_MAX:
            return f"id in [{', '.join(map(str, allowed.tolist()))}]" if len(allowed) else "id in [-1]"
        barred = np.flatnonzero(self.live & ~where.bitmap(self.live))
        if len(barred) <= ID_LIST_MAX:
            return f"id not in [{', '.join(map(str, barred.tolist()))}]" if len(barred) else ""
        return None

    def search(self, query: np.ndarray, k: int, filter: VectorFilter | np.ndarray | None = None) -> Neighbours:
        return self.search_many(self._query(query)[None], k, filter)[0]

    def search_many(self, queries: np.ndarray, k: int, filter: VectorFilter | np.ndarray | None = None) -> list[Neighbours]:
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(len(queries), -1)
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have {queries.shape[1]} dimensions, index has {self.dim}")
        where = VectorFilter.coerce(filter)
        if k <= 0 or self._count == 0 or len(queries) == 0:
            return [no_neighbours() for _ in queries]
        limit = min(k, MAX_LIMIT)
        expression = self._expression(where)
        if expression is not None:
            return self._run(queries, limit, expression)
        assert where is not None
        return [self._search_bitmap(q, limit, where.bitmap(self.live)) for q in queries]

    def _search_bitmap(self, query: np.ndarray, k: int, allowed: np.ndarray) -> Neighbours:
        """A broad bitmap: a wider unfiltered search kept to the allowed ids, or, when too few of
        them are among its results, every allowed id in pages of id lists, merged."""
        share = max(int(np.count_nonzero(allowed)), 1) / max(self._count, 1)
        wide = min(MAX_LIMIT, int(k / share * 2) + 64)
        ids, scores = self._run(query[None], wide, "")[0]
        inside = ids < len(allowed)
        keep = np.flatnonzero(inside)[allowed[ids[inside]]]
        if len(keep) >= k or wide >= self._count:
            return ids[keep[:k]], scores[keep[:k]]
        pages = np.flatnonzero(allowed)
        found = [self._run(query[None], k, f"id in [{', '.join(map(str, pages[s:s + ID_LIST_MAX].tolist()))}]")[0]
                 for s in range(0, len(pages), ID_LIST_MAX)]
        all_ids, all_scores = np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])
        order = np.argsort(-all_scores, kind="stable")[:k]
        return all_ids[order], all_scores[order]


def from_config(dim: int, config: Any, quantizer: Any = None) -> MilvusBackend:
    """Built by :func:`lookalike.vectors.registry.create_backend` for ``vector_backend = "milvus"``."""
    uri = config.milvus_uri or "vectors.milvus.db"
    if "://" not in uri and not Path(uri).is_absolute() and config.store:
        uri = str(Path(config.store) / uri)
    # Stores sharing one Milvus server must not share collections: by default the prefix names the store.
    remote_default = "lookalike_" + hashlib.sha1(str(Path(config.store or ".").resolve()).encode()).hexdigest()[:8]
    prefix = config.milvus_collection or ("lookalike" if "://" not in uri else remote_default)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,100}", prefix):
        raise BackendError(f"milvus_collection {prefix!r}: letters, digits and underscores only, not starting with a digit")
    return MilvusBackend(dim, uri, collection_name(prefix, config.model or "vectors", dim), config.milvus_token, config.milvus_index)
