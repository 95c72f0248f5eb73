"""The serving side of a store: the database plus one model's in-memory index, kept in step.

SQLite is the source of truth; the vector backend and the filter columns are derived from it
and tagged with the store generation they reflect.  A backend that filters server-side (Milvus)
is sent each product's filter fields with its vector, and again when its metadata or tags change;
a persistent one restored at open is sent only the changes since its snapshot.  Writes go through here (the ingest writer,
tagging and the CRUD calls use it), so a committed product is visible to the next query; writes
committed by another process are caught up by :meth:`ServingIndex.sync`, called before reads.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

import numpy as np

from ..models.encoders import Encoder
from ..vectors import VectorBackend
from .filters import MetadataColumns, filter_fields, with_tag_columns

log = logging.getLogger("lookalike.serving")


class ServingStore(Protocol):
    """What the serving index reads and writes in the store (:class:`lookalike.storage.ProductStore`)."""

    read_only: bool
    last_write_generation: int

    @property
    def generation(self) -> int: ...

    def get_meta(self, key: str) -> str | None: ...

    def iter_vectors(self, since_gen: int = -1) -> Iterator[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]]: ...

    def tombstones_since(self, gen: int) -> np.ndarray: ...

    def all_tags(self) -> dict[int, dict[str, dict[str, Any]]]: ...

    def tags_for(self, rowids: list[int]) -> dict[int, dict[str, dict[str, Any]]]: ...

    def write(self, items: list[Any], encoder: str | None = None) -> list[int]: ...

    def delete(self, ids: Iterable[str]) -> list[int]: ...

    def write_tags(self, entries: list[tuple[int, dict[str, dict[str, Any]]]], tagger: str) -> int: ...

    def get_by_rowids(self, rowids: Iterable[int]) -> dict[int, Any]: ...


class ServingIndex:
    """One model's vectors and the filter columns, over one store.  Thread-safe; writes serialised."""

    def __init__(self, store: ServingStore, encoder: Encoder, backend: VectorBackend, snapshot_dir: Path, max_columns: int = 128):
        self.store, self.encoder, self.backend = store, encoder, backend
        self.snapshot_dir = snapshot_dir
        self.columns = MetadataColumns(max_columns)
        self.synced_gen = 0  # the store generation the backend and columns reflect
        self.lock = threading.RLock()
        self._dirty = False  # the backend's snapshot lags what it holds

    # ---- loading and catching up -------------------------------------------------------------
    def load(self, restore: bool = True) -> None:
        """Fill the backend and filter columns, then catch them up with the store.

        From snapshots when the backend restores its vectors and the columns were saved too: only
        what changed since is read from the store (a 1M-product store opens in seconds).  Otherwise
        every row is read.  The generation is read *before* the rows: whatever another process
        commits meanwhile is then caught up by :meth:`sync` (applying a row twice is harmless), never missed."""
        store, backend = self.store, self.backend
        generation = store.generation
        snapshot_gen = backend.restore(self.snapshot_dir, self.encoder.identity) if restore else None
        if snapshot_gen is not None and snapshot_gen > generation:
            backend.discard_snapshot()  # a snapshot from the future belongs to another database
            snapshot_gen = None
        saved = MetadataColumns.restore(self.snapshot_dir, self.encoder.identity, self.columns.max_columns) \
            if snapshot_gen is not None and backend.restored_vectors else None
        if saved is not None and saved[1] <= generation:
            self.columns, since = saved[0], min(snapshot_gen or 0, saved[1])
            if since < generation:
                self._send_changes(since)
                self._dirty = True
        else:
            self._load_every_row(snapshot_gen, generation)
        self.synced_gen = generation
        self.maintain(save=not store.read_only)

    def _load_every_row(self, snapshot_gen: int | None, generation: int) -> None:
        """Read every product's vector, metadata and tags; a restored snapshot of derived structures
        (an ANN index, a Milvus collection) is then caught up for what changed since it was taken."""
        store, backend = self.store, self.backend
        self.columns = MetadataColumns(self.columns.max_columns)
        tags = store.all_tags()
        # a persistent backend restored from its snapshot already holds every field: computing them is wasted
        send_fields = snapshot_gen is None or not backend.persistent
        for rowids, vectors, metadata in store.iter_vectors():
            columns = [with_tag_columns(meta, tags.get(rowid)) for rowid, meta in zip(rowids.tolist(), metadata)]
            backend.load(rowids, vectors, self._fields(columns) if send_fields else None)
            for rowid, values in zip(rowids.tolist(), columns):
                self.set_columns(rowid, values)
        if snapshot_gen is not None and snapshot_gen < generation:
            if backend.persistent:
                self._send_changes(snapshot_gen)
            else:
                deleted = store.tombstones_since(snapshot_gen)
                if backend.restored_vectors:
                    backend.remove(deleted)  # restored rows deleted since: reading every row did not visit them
                changed = [r for r, _, _ in store.iter_vectors(since_gen=snapshot_gen)]
                backend.refresh(np.concatenate(changed + [deleted]))
        # what is on disk is not (all) this index's, or lags it: the first save replaces it
        self._dirty = True

    def _fields(self, columns: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """Filter fields for a backend that filters server-side (None for one filtering by bitmap)."""
        return [filter_fields(values) for values in columns] if self.backend.wants_fields else None

    def _send_changes(self, since: int) -> None:
        """Rows written and deleted since generation ``since``, to the backend and the columns
        (:meth:`sync`, and a persistent backend's restored snapshot)."""
        for rowids, vectors, metadata in self.store.iter_vectors(since_gen=since):
            tags = self.store.tags_for(rowids.tolist())
            columns = [with_tag_columns(meta, tags.get(rowid)) for rowid, meta in zip(rowids.tolist(), metadata)]
            self.backend.upsert(rowids, vectors, self._fields(columns))
            for rowid, values in zip(rowids.tolist(), columns):
                self.set_columns(rowid, values)
        deleted = self.store.tombstones_since(since)
        if len(deleted):
            self.backend.remove(deleted)
            for rowid in deleted.tolist():
                self.columns.remove(rowid)

    def set_columns(self, rowid: int, values: dict[str, Any]) -> None:
        """Make one product filterable (its metadata with tag columns, :func:`with_tag_columns`); a cell
        the filters cannot take is logged and left out, so no stored value can stop the store from opening."""
        try:
            self.columns.set(rowid, values)
        except Exception as exc:
            self.columns.remove(rowid)
            log.warning("product rowid %s: metadata not filterable (%s: %s)", rowid, type(exc).__name__, exc)

    def sync(self) -> bool:
        """Catch up with writes other processes committed (a CLI ingest while the server runs).
        One cheap read of the generation counter when nothing changed."""
        if self.store.generation == self.synced_gen:
            return False
        with self.lock:
            generation = self.store.generation
            if generation <= self.synced_gen:
                return False
            if self.store.get_meta("encoder") != self.encoder.identity:
                log.warning("another process re-indexed this store with %s; restart to serve it", self.store.get_meta("encoder"))
                self.synced_gen = generation  # keep serving the old, consistent index
                return False
            self._send_changes(self.synced_gen)
            self._dirty = True
            self.synced_gen = generation
            return True

    def _advance(self, generation: int) -> None:
        """After this process's own write: current only if nobody else wrote in between;
        otherwise :meth:`sync` catches up (re-applying ours too)."""
        if generation == self.synced_gen + 1:
            self.synced_gen = generation

    # ---- writes (the ingest writer, tagging and CRUD go through these) ---------------------------
    def write(self, writes: list[Any]) -> list[int]:
        """Commit products (:class:`lookalike.storage.ProductWrite`), then make them visible."""
        with self.lock:
            rowids = self.store.write(writes, encoder=self.encoder.identity)
            self._advance(self.store.last_write_generation)
            columns = [with_tag_columns(write.metadata, None) for write in writes]
            embedded = [i for i, w in enumerate(writes) if w.vector is not None]
            if embedded:
                self.backend.upsert(np.array([rowids[i] for i in embedded]), np.stack([writes[i].vector for i in embedded]),
                                    self._fields([columns[i] for i in embedded]))
                self._dirty = True
            metadata_only = [i for i, w in enumerate(writes) if w.vector is None]
            if metadata_only:
                self._annotate([rowids[i] for i in metadata_only], [columns[i] for i in metadata_only])
            for rowid, values in zip(rowids, columns):
                self.set_columns(rowid, values)
        return rowids

    def _annotate(self, rowids: list[int], columns: list[dict[str, Any]]) -> None:
        """New filter fields, for a backend that keeps them, of products whose vector it holds."""
        if not self.backend.wants_fields:
            return
        live = self.backend.live_mask()
        keep = [i for i, r in enumerate(rowids) if r < len(live) and live[r]]
        fields = self._fields([columns[i] for i in keep])
        if keep and fields:
            self.backend.annotate(np.array([rowids[i] for i in keep]), fields)
            self._dirty = True

    def delete(self, product_ids: Iterable[str]) -> list[int]:
        """Delete products by id; returns the rowids that existed."""
        with self.lock:
            rowids = self.store.delete(product_ids)
            self._advance(self.store.last_write_generation)
            if rowids:
                self.backend.remove(np.array(rowids))
                for rowid in rowids:
                    self.columns.remove(rowid)
                self._dirty = True
            return rowids

    def write_tags(self, entries: list[tuple[int, dict[str, dict[str, Any]]]], tagger: str) -> int:
        """Store predicted tags and make them filterable as ``tag.<name>`` columns."""
        with self.lock:
            written = self.store.write_tags(entries, tagger)
            self._advance(self.store.last_write_generation)
            products = self.store.get_by_rowids([r for r, _ in entries])
            columns = {rowid: with_tag_columns(product.metadata, product.tags) for rowid, product in products.items()}
            for rowid, values in columns.items():
                self.set_columns(rowid, values)
            self._annotate(list(columns), list(columns.values()))
        return written

    # ---- the snapshot ---------------------------------------------------------------------------
    def maintain(self, save: bool) -> None:
        """Rebuild the backend's derived structure when outgrown, and snapshot it if asked."""
        with self.lock:
            if self.backend.maintain():
                self._dirty = True
            if save and self._dirty:
                self.save()

    def save(self) -> None:
        """Snapshot tagged with the generation it reflects (never a newer one, so a reopened
        store catches up on every write this process did not see)."""
        with self.lock:
            if not self.store.read_only:
                self.backend.snapshot(self.snapshot_dir, self.synced_gen, self.encoder.identity)
                self.columns.save(self.snapshot_dir, self.synced_gen, self.encoder.identity)
            self._dirty = False

    @property
    def dirty(self) -> bool:
        return self._dirty
