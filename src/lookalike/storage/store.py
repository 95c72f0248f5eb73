"""The embedded store: one SQLite database holding products, their embeddings and thumbnails.

SQLite is the single source of truth.  Every batch a writer commits is one transaction
that bumps a generation counter, so a process killed mid-ingest leaves the last committed
batch readable and the next run resumes from there.  The in-memory vector index and the
FAISS snapshot on disk are derived from this database and rebuilt or caught up from it
(rows with ``gen`` above the snapshot's, and ``tombstones`` for deletes) when they lag.

Embeddings are keyed by (model, region, product): the serving model's whole-image vectors
(region ``""``) are what search uses; other models' vectors (a re-index in progress, or kept
so switching back needs no images) and a photo's regions (garments found in it) sit beside
them.  Each embedding records the image hash it was computed from, so a stale one is known.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

SCHEMA_VERSION = "2"
WHOLE_IMAGE = ""  # the region name of an embedding of the whole photo
NO_GARMENTS = "-"  # a garment region row that records "looked at this photo: no person in it"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    image TEXT,
    image_hash TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    gen INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS products_gen ON products(gen);
CREATE TABLE IF NOT EXISTS thumbnails (rowid INTEGER PRIMARY KEY, jpeg BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tombstones (rowid INTEGER PRIMARY KEY, gen INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    counts TEXT NOT NULL DEFAULT '{}',
    skip_report TEXT
);
CREATE TABLE IF NOT EXISTS skipped (
    run_id INTEGER NOT NULL,
    item TEXT NOT NULL,
    source TEXT,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS skipped_run ON skipped(run_id);
-- One vector per (model, region of the photo, product). The serving model's whole-image vectors
-- are searched; other models' are a re-index in progress (resumable) or kept so switching back,
-- or training a head on them, needs no images.
CREATE TABLE IF NOT EXISTS embeddings (
    model TEXT NOT NULL,
    region TEXT NOT NULL DEFAULT '',
    product INTEGER NOT NULL,
    image_hash TEXT,
    vector BLOB NOT NULL,
    PRIMARY KEY (model, region, product)
);
CREATE INDEX IF NOT EXISTS embeddings_product ON embeddings(product);
CREATE TABLE IF NOT EXISTS tags (
    rowid INTEGER PRIMARY KEY,
    tags TEXT NOT NULL,
    tagger TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS label_changes (
    change INTEGER PRIMARY KEY AUTOINCREMENT,
    product TEXT NOT NULL,
    column_name TEXT NOT NULL,
    old TEXT,
    new TEXT NOT NULL,
    who TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS votes (
    round TEXT NOT NULL,
    query TEXT NOT NULL,
    judge TEXT NOT NULL,
    shown TEXT NOT NULL,
    choice TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (round, query, judge)
);
CREATE TABLE IF NOT EXISTS pair_marks (
    first TEXT NOT NULL,
    second TEXT NOT NULL,
    verdict TEXT NOT NULL,
    who TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (first, second)
);
"""


log = logging.getLogger("lookalike.store")


class StoreError(RuntimeError):
    """The store cannot be opened as asked (wrong encoder, newer schema, damaged file)."""


class StoreFullError(StoreError):
    """The disk (or the database's size limit) is full; the write was rolled back whole."""


class ReadOnlyStoreError(StoreError):
    """The store is on a read-only file system (or opened read-only): it can be searched, not changed."""


@dataclass
class Product:
    rowid: int
    id: str
    image: str | None
    image_hash: str | None
    metadata: dict[str, Any]
    updated_at: float
    tags: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "image": self.image, "metadata": self.metadata, "tags": self.tags, "updated_at": self.updated_at}


def shown_tags(tags: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The predicted tags a product shows: those with a value.  A stored entry without one holds a
    tagger's below-threshold candidates, read by text search only (``ProductStore.tags_for`` gives
    them); an entry of any other shape (an older or foreign writer) is not shown rather than
    breaking the answer it would be part of."""
    return {str(name): tag for name, tag in tags.items()
            if isinstance(tag, dict) and isinstance(tag.get("value"), str) and isinstance(tag.get("confidence", 0.0), (int, float))}


@dataclass
class ProductWrite:
    """One product to insert or update. ``vector`` None keeps the stored vector (metadata-only change)."""

    id: str
    image: str | None
    image_hash: str | None
    metadata: dict[str, Any]
    vector: np.ndarray | None = None
    thumbnail: bytes | None = None
    # other models' vectors of the same picture, by model identity (a fine-tuned model's backbone
    # features: see Encoder.embed_keeping); written with ``vector`` only
    kept: dict[str, np.ndarray] = field(default_factory=dict)


def canonical_json(metadata: dict[str, Any]) -> str:
    return json.dumps(metadata, sort_keys=True, ensure_ascii=False, default=str)


class ProductStore:
    """Thread-safe access to the SQLite database of one store directory."""

    FILENAME = "catalogue.sqlite"

    def __init__(self, directory: Path, read_only: bool = False):
        self.directory = directory
        self.path = directory / self.FILENAME
        self._lock = threading.RLock()
        self.last_write_generation = 0  # the generation of this process's latest committed write
        self.unreadable_rows = 0  # rows whose stored metadata or tags could not be parsed (served as empty)
        self.read_only = read_only or _is_read_only(directory, self.path)
        self._db = self._connect_read_only() if self.read_only else self._connect()
        version = self.get_meta("schema_version")
        if version is None and not self.read_only:
            self.set_meta("schema_version", SCHEMA_VERSION)
        elif version == "1":
            self._upgrade_from_v1()
        elif version is not None and version != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}; this lookalike reads version {SCHEMA_VERSION}")

    def _upgrade_from_v1(self) -> None:
        """Version 1 kept the serving vectors in ``products.vector`` and other encoders' in
        ``model_vectors``.  A writable store moves them into ``embeddings`` in one transaction
        (a crash leaves version 1 intact); a read-only one is read through a temporary view."""
        if self.read_only:
            self._db.execute(
                "CREATE TEMP VIEW embeddings AS "
                "SELECT (SELECT value FROM meta WHERE key = 'encoder') AS model, '' AS region, rowid AS product, image_hash, vector "
                "FROM products WHERE vector IS NOT NULL "
                "UNION ALL SELECT encoder, '', rowid, image_hash, vector FROM model_vectors")
            return
        with self._write_transaction(new_generation=False):
            self._db.execute("INSERT OR REPLACE INTO embeddings(model, region, product, image_hash, vector) "
                             "SELECT encoder, '', rowid, image_hash, vector FROM model_vectors")
            self._db.execute("INSERT OR REPLACE INTO embeddings(model, region, product, image_hash, vector) "
                             "SELECT m.value, '', p.rowid, p.image_hash, p.vector FROM products p, meta m "
                             "WHERE m.key = 'encoder' AND p.vector IS NOT NULL")
            self._db.execute("UPDATE products SET vector = NULL WHERE vector IS NOT NULL")
            self._db.execute("DROP TABLE model_vectors")
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
        log.info("store %s: upgraded to schema version %s (embeddings by model and region)", self.directory, SCHEMA_VERSION)

    def _connect(self) -> sqlite3.Connection:
        if self.directory.exists() and not self.directory.is_dir():
            raise StoreError(f"the store {self.directory} is a file, not a store directory; name a directory (it is created if missing)")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store directory {self.directory}: {exc.strerror}") from exc
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a usable lookalike store: {exc}") from exc
        return db

    def _connect_read_only(self) -> sqlite3.Connection:
        """A store on a read-only mount: SQLite cannot create its WAL index there, so the file is
        opened immutable (nobody can be writing it) and every write is refused with a clear error."""
        if not self.path.is_file():
            raise StoreError(f"no lookalike store at {self.directory} (and it is read-only, so none can be created)")
        uri = self.path.resolve().as_uri()
        wal = self.path.with_name(self.path.name + "-wal")
        pending = wal.is_file() and wal.stat().st_size > 0
        # Writes still in the WAL (a copy taken while a writer was open) are only seen by a
        # non-immutable open, which SQLite allows read-only when the -shm file is there.
        attempts = ([f"{uri}?mode=ro"] if pending else []) + [f"{uri}?mode=ro&immutable=1"]
        for attempt in attempts:
            try:
                db = sqlite3.connect(attempt, uri=True, check_same_thread=False, isolation_level=None)
                db.execute("SELECT COUNT(*) FROM meta").fetchone()
                break
            except sqlite3.DatabaseError as exc:
                error = exc
        else:
            raise StoreError(f"{self.path} is not a usable lookalike store: {error}")
        if pending and attempt.endswith("immutable=1"):
            log.warning("store %s: its write-ahead log cannot be read on this read-only mount; the latest writes may be missing "
                        "(checkpoint the store before mounting it read-only)", self.directory)
        log.warning("store %s is read-only: searching works, writes are refused", self.directory)
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self._check_writable()
        with self._lock:
            self._db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation") or 0)

    def bind_encoder(self, identity: str, dim: int) -> None:
        """Record the encoder on first use; refuse a different one afterwards (vectors must not mix)."""
        with self._lock:
            current = self.get_meta("encoder")
            if current is None and self.read_only:
                return  # an empty read-only store: nothing to bind, nothing to mix
            if current is None:
                self.set_meta("encoder", identity)
                self.set_meta("dim", str(dim))
            elif current != identity:
                raise StoreError(
                    f"the store at {self.directory} holds vectors from encoder {current!r}, not {identity!r}; "
                    "open it with the same encoder, or re-index into a new store"
                )

    # ---- writes ---------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(f"the store at {self.directory} is read-only; it can be searched but not changed")

    def _next_generation(self) -> int:
        gen = self.generation + 1
        self._db.execute("INSERT INTO meta(key, value) VALUES ('generation', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(gen),))
        return gen

    @contextmanager
    def _write_transaction(self, new_generation: bool = True) -> Iterator[int]:
        """One atomic write: all of it is committed with a new generation number, or none of it.
        ``new_generation=False`` for writes that change no product (staged re-index vectors):
        the index need not catch up on them."""
        self._check_writable()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    gen = self._next_generation() if new_generation else self.generation
                    yield gen
                    self._db.execute("COMMIT")
                    self.last_write_generation = gen
                except BaseException:
                    # SQLite rolls back by itself after some errors (disk full); a second
                    # ROLLBACK would then raise and hide the real cause.
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                raise _storage_error(exc, self.directory) from exc

    def write(self, items: list[ProductWrite], encoder: str | None = None) -> list[int]:
        """Insert or update products in one transaction; returns their rowids in order.

        ``encoder``: the identity that made the vectors; refused when another process has
        re-indexed the store with a different encoder meanwhile (vectors must not mix)."""
        if not items:
            return []
        now = time.time()
        rowids = []
        with self._write_transaction() as gen:
            current = self.get_meta("encoder")
            with_vectors = any(i.vector is not None for i in items)
            if encoder is not None and current is not None and current != encoder and with_vectors:
                raise StoreError(f"the store at {self.directory} now serves encoder {current!r} (re-indexed by another process), "
                                 f"not {encoder!r}; reopen it (restart the server) before writing")
            model = current or encoder
            if with_vectors and model is None:
                raise StoreError(f"the store at {self.directory} has no encoder recorded; vectors cannot be written")
            for item in items:
                row = self._db.execute(
                    """INSERT INTO products(id, image, image_hash, metadata, gen, updated_at)
                       VALUES (?, ?, ?, ?, ?, ?)
                       ON CONFLICT(id) DO UPDATE SET
                           image = excluded.image,
                           image_hash = COALESCE(excluded.image_hash, products.image_hash),
                           metadata = excluded.metadata,
                           gen = excluded.gen,
                           updated_at = excluded.updated_at
                       RETURNING rowid""",
                    (item.id, item.image, item.image_hash, canonical_json(item.metadata), gen, now),
                ).fetchone()
                rowids.append(row[0])
                if item.vector is not None:
                    self._put_embedding(str(model), WHOLE_IMAGE, row[0], item.image_hash, item.vector)
                    for kept_model, kept_vector in item.kept.items():
                        if kept_model != model:  # never the serving model's own row
                            self._put_embedding(kept_model, WHOLE_IMAGE, row[0], item.image_hash, kept_vector)
                    # Regions found in another picture no longer describe this one.
                    self._db.execute("DELETE FROM embeddings WHERE product = ? AND region != '' AND image_hash IS NOT ?", (row[0], item.image_hash))
                # Predicted tags describe the old image and text; the auto-tagger writes fresh ones.
                self._db.execute("DELETE FROM tags WHERE rowid = ?", (row[0],))
                if item.thumbnail is not None:
                    self._db.execute("INSERT OR REPLACE INTO thumbnails(rowid, jpeg) VALUES (?, ?)", (row[0], item.thumbnail))
        return rowids

    def _put_embedding(self, model: str, region: str, product: int, image_hash: str | None, vector: np.ndarray) -> None:
        self._db.execute("INSERT OR REPLACE INTO embeddings(model, region, product, image_hash, vector) VALUES (?, ?, ?, ?, ?)",
                         (model, region, int(product), image_hash, np.asarray(vector, dtype=np.float32).tobytes()))

    def delete(self, ids: Iterable[str]) -> list[int]:
        """Delete products by id in one transaction; returns the rowids that existed."""
        ids = list(ids)
        if not ids:
            return []
        removed = []
        with self._write_transaction() as gen:
            for item_id in ids:
                row = self._db.execute("DELETE FROM products WHERE id = ? RETURNING rowid", (item_id,)).fetchone()
                if row is not None:
                    removed.append(row[0])
                    self._db.execute("DELETE FROM thumbnails WHERE rowid = ?", (row[0],))
                    self._db.execute("DELETE FROM embeddings WHERE product = ?", (row[0],))
                    self._db.execute("DELETE FROM tags WHERE rowid = ?", (row[0],))
                    self._db.execute("INSERT OR REPLACE INTO tombstones(rowid, gen) VALUES (?, ?)", (row[0], gen))
        return removed

    # ---- reads ----------------------------------------------------------------------------------
    def _product(self, row: tuple) -> Product:
        return Product(row[0], row[1], row[2], row[3], self.parse_json(row[4], row[1]), row[5], shown_tags(self.parse_json(row[6], row[1])) if row[6] else {})

    def parse_json(self, text: str, item: Any = None) -> dict[str, Any]:
        """A stored JSON object, or {} when it cannot be parsed (a value written by an older or
        foreign writer must never make the store unreadable); such rows are counted and logged."""
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:
            self.unreadable_rows += 1
            log.warning("product %r: stored JSON is unreadable (%s); served as empty", item, type(exc).__name__)
            return {}
        if not isinstance(value, dict):
            self.unreadable_rows += 1
            return {}
        return value

    # the serving model's whole-image vector of product ``p`` (bind the model)
    _SERVING_VECTOR = "SELECT 1 FROM embeddings e WHERE e.model = ? AND e.region = '' AND e.product = p.rowid"

    @property
    def serving_model(self) -> str:
        """The model whose whole-image vectors search uses ("" before the first write)."""
        return self.get_meta("encoder") or ""

    _COLUMNS = "products.rowid, id, image, image_hash, metadata, products.updated_at, tags.tags"
    _FROM = "products LEFT JOIN tags ON tags.rowid = products.rowid"

    def get(self, item_id: str) -> Product | None:
        with self._lock:
            row = self._db.execute(f"SELECT {self._COLUMNS} FROM {self._FROM} WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else self._product(row)

    def _select_in(self, sql: str, keys: list[Any], params: tuple = ()) -> list[tuple]:
        """Rows of ``sql`` whose ``IN ({marks})`` list takes many keys, 500 per statement
        (SQLite caps the number of bound variables); ``params`` bind the ``?`` before the list."""
        rows: list[tuple] = []
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                rows += self._db.execute(sql.format(marks=",".join("?" * len(chunk))), [*params, *chunk]).fetchall()
        return rows

    def get_by_rowids(self, rowids: Iterable[int]) -> dict[int, Product]:
        rows = self._select_in(f"SELECT {self._COLUMNS} FROM {self._FROM} WHERE products.rowid IN ({{marks}})", [int(r) for r in rowids])
        return {row[0]: self._product(row) for row in rows}

    def fingerprints(self, ids: list[str]) -> dict[str, tuple[str | None, str, bool]]:
        """For each known id: (image hash, canonical metadata JSON, has a vector) — what ingest diffs against."""
        rows = self._select_in(f"SELECT id, image_hash, metadata, EXISTS ({self._SERVING_VECTOR}) FROM products p WHERE id IN ({{marks}})",
                               ids, (self.serving_model,))
        return {row[0]: (row[1], row[2], bool(row[3])) for row in rows}

    # ---- predicted tags -------------------------------------------------------------------------
    def write_tags(self, entries: list[tuple[int, dict[str, dict[str, Any]]]], tagger: str) -> int:
        """Replace the predicted tags of products (by rowid) in one transaction; rows deleted
        meanwhile are skipped. Returns how many products were tagged."""
        if not entries:
            return 0
        now, written = time.time(), 0
        with self._write_transaction() as gen:
            for rowid, tags in entries:
                if self._db.execute("SELECT 1 FROM products WHERE rowid = ?", (int(rowid),)).fetchone() is None:
                    continue
                self._db.execute("INSERT OR REPLACE INTO tags(rowid, tags, tagger, updated_at) VALUES (?, ?, ?, ?)",
                                 (int(rowid), canonical_json(tags), tagger, now))
                # Another process serving this store catches up on rows whose gen moved.
                self._db.execute("UPDATE products SET gen = ? WHERE rowid = ?", (gen, int(rowid)))
                written += 1
        return written

    def all_tags(self) -> dict[int, dict[str, dict[str, Any]]]:
        with self._lock:
            return {row[0]: self.parse_json(row[1], row[0]) for row in self._db.execute("SELECT rowid, tags FROM tags")}

    def tags_for(self, rowids: list[int]) -> dict[int, dict[str, dict[str, Any]]]:
        """The stored tags as written, below-threshold candidates included (see :func:`shown_tags`)."""
        rows = self._select_in("SELECT rowid, tags FROM tags WHERE rowid IN ({marks})", [int(r) for r in rowids])
        return {r[0]: self.parse_json(r[1], r[0]) for r in rows}

    def untagged_rowids(self) -> list[int]:
        with self._lock:
            return [r[0] for r in self._db.execute(
                f"SELECT rowid FROM products p WHERE EXISTS ({self._SERVING_VECTOR}) AND rowid NOT IN (SELECT rowid FROM tags) ORDER BY rowid",
                (self.serving_model,))]

    def relabel(self, product_id: str, column: str, value: str, who: str) -> str | None:
        """Set one product's label and record the change (who, when, the old value) in one
        transaction; returns the old value.  The product's vector and predicted tags stay."""
        with self._write_transaction() as gen:
            row = self._db.execute("SELECT metadata FROM products WHERE id = ?", (product_id,)).fetchone()
            if row is None:
                raise KeyError(product_id)
            metadata = self.parse_json(row[0], product_id)
            old = metadata.get(column)
            metadata[column] = value
            self._db.execute("UPDATE products SET metadata = ?, gen = ?, updated_at = ? WHERE id = ?",
                             (canonical_json(metadata), gen, time.time(), product_id))
            self._db.execute("INSERT INTO label_changes(product, column_name, old, new, who, at) VALUES (?, ?, ?, ?, ?, ?)",
                             (product_id, column, None if old is None else str(old), value, who, time.time()))
        return None if old is None else str(old)

    def label_changes(self, limit: int = 100_000) -> list[dict[str, Any]]:
        """Recorded label changes, newest first."""
        try:
            with self._lock:
                rows = self._db.execute("SELECT change, product, column_name, old, new, who, at FROM label_changes ORDER BY change DESC LIMIT ?",
                                        (limit,)).fetchall()
        except sqlite3.OperationalError:  # an older store opened read-only has no such table yet
            rows = []
        return [{"change": r[0], "id": r[1], "column": r[2], "old": r[3], "new": r[4], "who": r[5], "at": r[6]} for r in rows]

    def add_vote(self, round_name: str, query: str, shown: str, choice: str, judge: str) -> bool:
        """Record a judge's vote; False when this judge already voted on this query of the round."""
        with self._write_transaction(new_generation=False):
            cursor = self._db.execute("INSERT OR IGNORE INTO votes(round, query, judge, shown, choice, at) VALUES (?, ?, ?, ?, ?, ?)",
                                      (round_name, query, judge, shown, choice, time.time()))
            return cursor.rowcount == 1

    def votes(self, round_name: str) -> list[dict[str, Any]]:
        try:
            with self._lock:
                rows = self._db.execute("SELECT query, judge, shown, choice, at FROM votes WHERE round = ? ORDER BY at, query", (round_name,)).fetchall()
        except sqlite3.OperationalError:  # an older store opened read-only has no votes table yet
            rows = []
        return [{"query": r[0], "judge": r[1], "shown": r[2], "choice": r[3], "at": r[4]} for r in rows]

    def mark_pairs(self, pairs: Iterable[tuple[str, str]], verdict: str, who: str) -> int:
        """Remember a person's verdict on pairs of listings (by product id, either order);
        ``verdict`` "" forgets them.  Not a product change: no new generation."""
        ordered = sorted({(min(a, b), max(a, b)) for a, b in pairs if a != b})
        now = time.time()
        with self._write_transaction(new_generation=False):
            for first, second in ordered:
                if verdict:
                    self._db.execute("INSERT OR REPLACE INTO pair_marks(first, second, verdict, who, at) VALUES (?, ?, ?, ?, ?)",
                                     (first, second, verdict, who, now))
                else:
                    self._db.execute("DELETE FROM pair_marks WHERE first = ? AND second = ?", (first, second))
        return len(ordered)

    def pair_marks(self, verdict: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT first, second, verdict, who, at FROM pair_marks", [] if verdict is None else [verdict]
        if verdict is not None:
            sql += " WHERE verdict = ?"
        try:
            with self._lock:
                rows = self._db.execute(sql + " ORDER BY first, second", params).fetchall()
        except sqlite3.OperationalError:  # an older store opened read-only has no marks table yet: no marks
            rows = []
        return [{"first": r[0], "second": r[1], "verdict": r[2], "who": r[3], "at": r[4]} for r in rows]

    def thumbnails(self, rowids: Iterable[int]) -> dict[int, bytes]:
        return dict(self._select_in("SELECT rowid, jpeg FROM thumbnails WHERE rowid IN ({marks})", [int(r) for r in rowids]))

    def thumbnail_rowids(self) -> list[int]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT rowid FROM thumbnails ORDER BY rowid")]

    def thumbnail(self, rowid: int) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT jpeg FROM thumbnails WHERE rowid = ?", (rowid,)).fetchone()
        return None if row is None else row[0]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM products").fetchone()[0]

    def count_vectors(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM embeddings WHERE model = ? AND region = ''", (self.serving_model,)).fetchone()[0])

    def all_ids(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT id FROM products")}

    def iter_vectors(self, since_gen: int = -1, chunk: int = 20_000) -> Iterator[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]]:
        """(rowids, vectors, metadata) of products with a vector written after ``since_gen``, in chunks."""
        last, model = -1, self.serving_model
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT p.rowid, e.vector, p.metadata FROM products p JOIN embeddings e ON e.model = ? AND e.region = '' AND e.product = p.rowid "
                    "WHERE p.rowid > ? AND p.gen > ? ORDER BY p.rowid LIMIT ?",
                    (model, last, since_gen, chunk),
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            rowids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
            yield rowids, vectors, [self.parse_json(r[2], r[0]) for r in rows]

    def tombstones_since(self, gen: int) -> np.ndarray:
        with self._lock:
            rows = self._db.execute("SELECT rowid FROM tombstones WHERE gen > ?", (gen,)).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def page(self, offset: int, limit: int) -> list[Product]:
        with self._lock:
            rows = self._db.execute(f"SELECT {self._COLUMNS} FROM {self._FROM} ORDER BY products.rowid LIMIT ? OFFSET ?", (limit, offset)).fetchall()
        return [self._product(r) for r in rows]

    def interrupt_running(self) -> None:
        """Mark runs left 'running' as interrupted (a process shutting down mid-ingest)."""
        if not self.read_only:
            with self._lock:
                self._db.execute("UPDATE runs SET status = 'interrupted', finished_at = ? WHERE status = 'running'", (time.time(),))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob(self.FILENAME + "*") if p.is_file())

    # ---- other models' vectors (re-indexing) and regions -------------------------------------------
    def vector_sources(self) -> list[tuple[int, str | None, str | None]]:
        """(rowid, image hash, image source) of every product with a serving vector."""
        with self._lock:
            return [tuple(r) for r in self._db.execute(
                f"SELECT rowid, image_hash, image FROM products p WHERE EXISTS ({self._SERVING_VECTOR}) ORDER BY rowid", (self.serving_model,))]

    def model_vectors(self, model: str, rowids: list[int], region: str = WHOLE_IMAGE) -> dict[int, tuple[str | None, np.ndarray]]:
        """rowid -> (image hash it was computed from, vector) stored for ``model`` and ``region``."""
        rows = self._select_in("SELECT product, image_hash, vector FROM embeddings WHERE model = ? AND region = ? AND product IN ({marks})",
                               [int(r) for r in rowids], (model, region))
        return {r[0]: (r[1], np.frombuffer(r[2], dtype=np.float32)) for r in rows}

    def stage_vectors(self, model: str, entries: list[tuple[int, str | None, np.ndarray]], region: str = WHOLE_IMAGE) -> None:
        """Store vectors of a model that does not serve (yet): a re-index in progress, in one
        transaction per call, so a crash loses at most one batch.  The serving model's vectors
        change only through :meth:`write`, which moves the generation the index follows."""
        if model == self.serving_model:
            raise StoreError(f"{model!r} is the serving model; its vectors are written with the products")
        with self._write_transaction(new_generation=False):
            for rowid, image_hash, vector in entries:
                self._put_embedding(model, region, rowid, image_hash, vector)

    def switch_encoder(self, identity: str, dim: int) -> int:
        """Make ``identity``'s staged vectors the serving ones, in one transaction (the previous
        model's stay, kept); every product with a vector must have one from ``identity``."""
        with self._write_transaction() as gen:
            missing = self._db.execute(
                f"SELECT COUNT(*) FROM products p WHERE EXISTS ({self._SERVING_VECTOR}) AND NOT EXISTS "
                "(SELECT 1 FROM embeddings m WHERE m.model = ? AND m.region = '' AND m.product = p.rowid)",
                (self.serving_model, identity)).fetchone()[0]
            if missing:
                raise StoreError(f"{missing} product(s) have no vector from {identity!r} yet; the re-index is not complete")
            self._db.execute("DELETE FROM embeddings WHERE product NOT IN (SELECT rowid FROM products)")
            for key, value in (("encoder", identity), ("dim", str(dim))):
                self._db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))
            # every served vector changed: another process serving this store sees all of them move
            self._db.execute("UPDATE products SET gen = ? WHERE rowid IN (SELECT product FROM embeddings WHERE model = ? AND region = '')", (gen, identity))
            return gen

    def kept_encoders(self) -> dict[str, int]:
        """Models with whole-image vectors kept besides the serving one, and how many."""
        with self._lock:
            return dict(self._db.execute("SELECT model, COUNT(*) FROM embeddings WHERE region = '' AND model != ? GROUP BY model",
                                         (self.serving_model,)).fetchall())

    def put_garments(self, model: str, entries: list[tuple[int, str | None, dict[str, np.ndarray]]]) -> None:
        """Replace the garment regions of products (rowid, image hash, {group: vector}) for
        ``model`` in one transaction; an empty dict records "looked, no person" (region
        ``NO_GARMENTS``) so the next run skips the photo.  Whole-image vectors are not touched."""
        with self._write_transaction(new_generation=False):
            for rowid, image_hash, found in entries:
                self._db.execute("DELETE FROM embeddings WHERE model = ? AND product = ? AND region != ''", (model, int(rowid)))
                for region, vector in (found.items() if found else [(NO_GARMENTS, np.zeros(0, np.float32))]):
                    if not region or region == WHOLE_IMAGE:
                        raise StoreError("a garment region needs a name")
                    self._put_embedding(model, region, rowid, image_hash, vector)

    def drop_garments(self, model: str) -> None:
        """Forget every garment region of ``model`` (another finder will look again)."""
        with self._write_transaction(new_generation=False):
            self._db.execute("DELETE FROM embeddings WHERE model = ? AND region != ''", (model,))

    def garment_hashes(self, model: str) -> dict[int, str | None]:
        """rowid -> the image hash its garment regions were found in, for products already looked at."""
        with self._lock:
            return dict(self._db.execute("SELECT product, MAX(image_hash) FROM embeddings WHERE model = ? AND region != '' GROUP BY product",
                                         (model,)).fetchall())

    def region_matrix(self, model: str, region: str) -> tuple[np.ndarray, np.ndarray]:
        """(rowids, vectors) of one region for ``model``, rowid order."""
        with self._lock:
            rows = self._db.execute("SELECT product, vector FROM embeddings WHERE model = ? AND region = ? ORDER BY product",
                                    (model, region)).fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return np.array([r[0] for r in rows], np.int64), np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])

    def regions(self, model: str | None = None) -> dict[str, int]:
        """Region names with stored vectors for ``model`` (the serving one by default), and how many."""
        with self._lock:
            return dict(self._db.execute("SELECT region, COUNT(*) FROM embeddings WHERE model = ? GROUP BY region",
                                         (model or self.serving_model,)).fetchall())

    # ---- ingest runs ------------------------------------------------------------------------------
    def start_run(self, source: str) -> int:
        self._check_writable()
        with self._lock:
            # A run left "running" by a killed process is recorded as interrupted.
            self._db.execute("UPDATE runs SET status = 'interrupted' WHERE status = 'running'")
            cur = self._db.execute("INSERT INTO runs(source, status, started_at) VALUES (?, 'running', ?)", (source, time.time()))
            return int(cur.lastrowid or 0)  # an INSERT always sets it

    def record_skipped(self, run_id: int, entries: list[tuple[str, str, str, str]]) -> None:
        """(item, source, kind, reason) rows for one run."""
        if entries:
            with self._lock:
                self._db.executemany("INSERT INTO skipped(run_id, item, source, kind, reason) VALUES (?, ?, ?, ?, ?)", [(run_id, *e) for e in entries])

    def update_run(self, run_id: int, counts: dict[str, int], status: str | None = None, skip_report: str | None = None) -> None:
        with self._lock:
            finished = time.time() if status and status != "running" else None
            self._db.execute(
                "UPDATE runs SET counts = ?, status = COALESCE(?, status), finished_at = COALESCE(?, finished_at), skip_report = COALESCE(?, skip_report) WHERE run_id = ?",
                (json.dumps(counts), status, finished, skip_report, run_id),
            )

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT run_id, source, status, started_at, finished_at, counts, skip_report FROM runs ORDER BY run_id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [
            {"run_id": r[0], "source": r[1], "status": r[2], "started_at": r[3], "finished_at": r[4], "counts": json.loads(r[5]), "skip_report": r[6]}
            for r in rows
        ]

    def skipped(self, run_id: int | None = None, limit: int = 1000) -> list[dict[str, str]]:
        with self._lock:
            if run_id is None:
                row = self._db.execute("SELECT MAX(run_id) FROM runs").fetchone()
                run_id = row[0] if row else None
            if run_id is None:
                return []
            rows = self._db.execute("SELECT item, source, kind, reason FROM skipped WHERE run_id = ? LIMIT ?", (run_id, limit)).fetchall()
        return [{"item": r[0], "source": r[1], "kind": r[2], "reason": r[3]} for r in rows]


def _is_read_only(directory: Path, path: Path) -> bool:
    """True when the store exists but cannot be written (a read-only mount or permissions)."""
    if not path.is_file():
        return False
    return not (os.access(directory, os.W_OK) and os.access(path, os.W_OK))


def _storage_error(exc: sqlite3.OperationalError, directory: Path) -> StoreError:
    """Say what a failed write means for the user: a full disk, a read-only store, or a busy one."""
    text = str(exc).lower()
    if "full" in text:
        return StoreFullError(f"disk full: the store at {directory} could not be written; nothing of this write was kept "
                              "(free space, then retry)")
    if "readonly" in text or "read-only" in text:
        return ReadOnlyStoreError(f"the store at {directory} is read-only; it can be searched but not changed")
    if "locked" in text or "busy" in text:
        return StoreError(f"the store at {directory} is busy (another process holds the write lock); retry")
    return StoreError(f"the store at {directory} could not be written: {exc}")
