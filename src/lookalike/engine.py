"""The engine: one object that wires catalogue, images, encoder, store, index and search.

    engine = Engine.open("my-store")
    engine.ingest("products.csv", id_column="item_id", image_column="image_file")
    hits = engine.search("photo.jpg", k=20, where=["article_type=Shirts", "price<50"])
    engine.similar("10184", k=10)

Everything the CLI and the HTTP server do goes through these methods.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
from threadpoolctl import threadpool_limits

from .config import Settings, load_settings
from .encoders import Encoder, get_encoder
from .filters import MetadataColumns, parse_where
from .images import ImageLimits, ImageSource, content_hash, decode, display_name, load_image, read_bytes, set_decode_budget, thumbnail_jpeg
from .index import IndexSpec, VectorIndex
from .ingest import Executor, IngestPipeline, IngestReport, ProgressCallback
from .search import Hit, find
from .security.paths import PathPolicy
from .security.urls import Downloader
from .store import Product, ProductStore, ProductWrite
from .validation import RESERVED_PREFIX, validate_id, validate_metadata

log = logging.getLogger("lookalike.engine")

if TYPE_CHECKING:
    from .tagging import TaggerSet, TrainOptions

DEFAULT_ENCODER = "efficientnet-lite0"
TAG_PREFIX = RESERVED_PREFIX  # predicted tags are filterable as tag.<name>, apart from the shop's own columns


class NotFoundError(KeyError):
    """No product has the given id."""

    def __init__(self, product_id: str):
        super().__init__(product_id)
        self.product_id = product_id

    def __str__(self) -> str:
        return f"no product with id {self.product_id!r}"


class BusyError(RuntimeError):
    """Another ingest is already running on this engine."""


class Engine:
    """A catalogue store opened for ingest and search. Thread-safe; one writer at a time."""

    def __init__(self, directory: Path, settings: Settings, encoder: Encoder, store: ProductStore):
        self.directory = directory
        self.settings = settings
        self.store = store
        self.limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels, settings.url_timeout, settings.allow_private_urls)
        # One download pool for requests served by this engine (uploads by URL, search by URL);
        # ingest runs get their own, so neither can starve the other.
        self.downloader = Downloader(settings.max_image_bytes, settings.url_timeout, settings.allow_private_urls, settings.max_downloads,
                                     slot_wait=0.5)
        set_decode_budget(settings.max_decode_pixels)
        self.closing = threading.Event()  # set by close(): a running ingest stops after its last batch
        self._closed = False
        threadpool_limits(max(1, settings.threads), user_api="blas")  # exact search's BLAS joins the pinned budget
        # The serving encoder and its index change together (re-index), so they are one attribute:
        # a query reads both at once and never embeds with one model and searches another's vectors.
        self._serving: tuple[Encoder, VectorIndex] = (encoder, self._new_index(encoder))
        self._reindexing: str | None = None
        self.columns = MetadataColumns(settings.max_filter_columns)
        self._synced_gen = 0  # the store generation the in-memory index and columns reflect
        self._write_lock = threading.RLock()
        self._ingest_lock = threading.Lock()
        self._ann_dirty = False
        self.current_ingest: IngestReport | None = None
        self.current_total: int | None = None
        self._taggers: tuple[Path, Any] | None = None
        self._tag_predictor: tuple[Any, Any] | None = None
        self._load()

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path | None = None, settings: Settings | None = None, encoder: str | Encoder | None = None, **overrides: Any) -> "Engine":
        """Open (or create) the store at ``path``.

        The encoder is, in order: the ``encoder`` argument, ``settings.encoder``, the one the store
        was built with, ``efficientnet-lite0``.  A store refuses an encoder other than its own.
        """
        settings = (settings or load_settings()).replace(**overrides)
        directory = Path(path or settings.store).expanduser()
        store = ProductStore(directory)
        try:
            if not isinstance(encoder, Encoder):
                recorded = store.get_meta("encoder")
                name = encoder or settings.encoder or (recorded.split("@")[0] if recorded else DEFAULT_ENCODER)
                encoder = get_encoder(name, settings.replace(store=str(directory)))
            store.bind_encoder(encoder.identity, encoder.dim)
            return cls(directory, settings.replace(store=str(directory), encoder=encoder.name), encoder, store)
        except BaseException:
            store.close()
            raise

    def _load(self) -> None:
        """Fill the in-memory index and filter columns from the store, then catch the ANN snapshot up.

        The generation is read *before* the rows: whatever another process commits meanwhile
        is then caught up by :meth:`sync` (applying a row twice is harmless), never missed."""
        generation = self.store.generation
        snapshot_gen = self.index.load_ann(self._index_dir)
        ann, self.index.ann = self.index.ann, None  # fill the matrix without touching the snapshot
        tags = self.store.all_tags()
        for rowids, vectors, metadata in self.store.iter_vectors():
            self.index.upsert(rowids, vectors)
            for rowid, meta in zip(rowids.tolist(), metadata):
                self._set_columns(rowid, meta, tags.get(rowid))
        self.index.ann = ann
        if ann is not None and snapshot_gen is not None:
            if snapshot_gen > generation:
                self.index.ann = None  # a snapshot from the future belongs to another database
            elif snapshot_gen < generation:
                changed = [r for r, _, _ in self.store.iter_vectors(since_gen=snapshot_gen)]
                stale = np.concatenate(changed + [self.store.tombstones_since(snapshot_gen)])
                self.index.refresh_ann(stale)
                self._ann_dirty = True
        self._synced_gen = generation
        self._maintain_ann(save=not self.store.read_only)

    def _set_columns(self, rowid: int, metadata: dict[str, Any], tags: dict[str, dict[str, Any]] | None) -> None:
        """Make one product filterable; a cell the filters cannot take is logged and left out,
        so no stored value can stop the store from opening."""
        try:
            self.columns.set(rowid, with_tag_columns(metadata, tags))
        except Exception as exc:  # noqa: BLE001 - one bad cell must not make the store unopenable
            self.columns.remove(rowid)
            log.warning("product rowid %s: metadata not filterable (%s: %s)", rowid, type(exc).__name__, exc)

    def sync(self) -> bool:
        """Catch up with writes other processes committed to the store (a CLI ingest while the
        server runs): new and changed products, deletions and tags.  One cheap read of the
        generation counter when nothing changed; returns whether anything was applied."""
        if self.store.generation == self._synced_gen:
            return False
        with self._write_lock:
            generation = self.store.generation
            if generation <= self._synced_gen:
                return False
            if self.store.get_meta("encoder") != self.encoder.identity:
                log.warning("another process re-indexed this store with %s; restart to serve it", self.store.get_meta("encoder"))
                self._synced_gen = generation  # keep serving the old, consistent index
                return False
            since = self._synced_gen
            for rowids, vectors, metadata in self.store.iter_vectors(since_gen=since):
                self.index.upsert(rowids, vectors)
                tags = self.store.tags_for(rowids.tolist())
                for rowid, meta in zip(rowids.tolist(), metadata):
                    self._set_columns(rowid, meta, tags.get(rowid))
            deleted = self.store.tombstones_since(since)
            if len(deleted):
                self.index.remove(deleted)
                for rowid in deleted.tolist():
                    self.columns.remove(rowid)
            self._ann_dirty = self.index.ann is not None or self._ann_dirty
            self._synced_gen = generation
            return True

    def _new_index(self, encoder: Encoder) -> VectorIndex:
        spec = IndexSpec(self.settings.index, self.settings.ann_threshold, self.settings.nprobe, self.settings.rerank_factor)
        index = VectorIndex(encoder.dim, spec, threads=self.settings.threads)
        index.use_codes(getattr(encoder, "quantizer", None), self.settings.code_search)
        return index

    @property
    def encoder(self) -> Encoder:
        return self._serving[0]

    @property
    def index(self) -> VectorIndex:
        return self._serving[1]

    @property
    def _index_dir(self) -> Path:
        return self.directory / "index"

    def _maintain_ann(self, save: bool) -> None:
        if self.index.needs_rebuild():
            self.index.build_ann()
            self._ann_dirty = True
        if save and self._ann_dirty:
            self._save_snapshot()

    def _save_snapshot(self) -> None:
        """Snapshot the ANN index tagged with the generation it reflects (never a newer one, so
        a reopened store catches up on every write this process did not see)."""
        if not self.store.read_only:
            self.index.save_ann(self._index_dir, self._synced_gen)
        self._ann_dirty = False

    def close(self, wait: float = 30.0) -> None:
        """Stop a running ingest after its last committed batch, snapshot, and close the store.
        Closing twice is harmless."""
        if self._closed:
            return
        self.closing.set()
        if self._ingest_lock.acquire(timeout=wait):
            self._ingest_lock.release()
        with self._write_lock:
            self.store.interrupt_running()
            if self._ann_dirty:
                self._save_snapshot()
            self.downloader.close()
            self.store.close()
            self._closed = True

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- writing ---------------------------------------------------------------------------------
    def apply_writes(self, writes: list[ProductWrite]) -> list[int]:
        """Commit products to the store, then make them visible to the next query."""
        with self._write_lock:
            rowids = self.store.write(writes, encoder=self.encoder.identity)
            self._advance(self.store.last_write_generation)
            with_vectors = [(r, w) for r, w in zip(rowids, writes) if w.vector is not None]
            if with_vectors:
                self.index.upsert(np.array([r for r, _ in with_vectors]), np.stack([w.vector for _, w in with_vectors]))
                self._ann_dirty = self.index.ann is not None or self._ann_dirty
            for rowid, write in zip(rowids, writes):
                self._set_columns(rowid, write.metadata, None)
        return rowids

    def _advance(self, generation: int) -> None:
        """After this process's own write: the index is current only if nobody else wrote in
        between; otherwise :meth:`sync` catches up (re-applying ours too)."""
        if generation == self._synced_gen + 1:
            self._synced_gen = generation

    def ingest(self, source: str | Path, id_column: str | None = None, image_column: str | None = None, prune: bool = False,
               progress: ProgressCallback | None = None, executor: Executor | None = None, batch_size: int | None = None,
               force_prune: bool = False, paths: PathPolicy | None = None, label: str | None = None) -> IngestReport:
        """Add or update every product of a catalogue file or folder; see :mod:`lookalike.ingest`.

        Only new or changed images (by content hash) are embedded; changed metadata is updated;
        ``prune`` deletes products the catalogue no longer lists (at most ``max_prune_fraction``
        of the store unless ``force_prune``).  ``paths`` confines the catalogue and its image
        paths (the server passes its ingest roots; the default allows any path).
        """
        if not self._ingest_lock.acquire(blocking=False):
            raise BusyError("an ingest is already running on this store")
        try:
            from .catalogue import count_rows

            total = count_rows(source)
            self.current_total = total

            def track(report: IngestReport, total_rows: int | None) -> None:
                self.current_ingest = report
                if progress:
                    progress(report, total_rows)

            pipeline = IngestPipeline(self, executor=executor, batch_size=batch_size, paths=paths)
            report = pipeline.run(source, id_column, image_column, prune=prune, progress=track, total=total,
                                  force_prune=force_prune, label=label)
            self.current_ingest = report
            with self._write_lock:
                self._maintain_ann(save=True)
            self._auto_tag()
            return report
        finally:
            self._ingest_lock.release()

    # ---- training ----------------------------------------------------------------------------------------
    def train_embedding(self, options: Any, progress: Any = None, log: Any = lambda _: None) -> Any:
        """Fine-tune an embedding on this catalogue; saved as a new model (see :mod:`lookalike.training`)."""
        from .training import train_embedding

        return train_embedding(self, options, progress=progress, log=log)

    def train_quantizer(self, options: Any, progress: Any = None, log: Any = lambda _: None) -> Any:
        """Learn compact codes for a fine-tuned model; saved as a new model."""
        from .training import train_quantizer

        return train_quantizer(self, options, progress=progress, log=log)

    # ---- re-indexing with another model -----------------------------------------------------------------
    def reindex(self, model: str, progress: Any = None, batch_size: int = 64, allow_paths: bool = True) -> dict[str, Any]:
        """Re-embed the catalogue with another encoder (a trained model or a pretrained name),
        then switch to it atomically.

        Search keeps answering from the current index the whole time.  Only what is needed is
        computed: vectors staged by an interrupted run, or kept from an earlier switch, are
        reused, and a fine-tuned head whose backbone vectors are already stored is applied to
        them without reading any image.  Products changed meanwhile are caught up under the
        write lock just before the switch, which is one database transaction plus one
        attribute assignment in memory."""
        from .reindex import Reindexer

        if not self._ingest_lock.acquire(blocking=False):
            raise BusyError("an ingest or re-index is already running on this store")
        try:
            target = get_encoder(model, self.settings.replace(store=str(self.directory)), allow_paths=allow_paths)
            if target.identity == self.encoder.identity:
                return {"model": target.identity, "switched": False, "reason": "already serving this model"}
            self._reindexing = target.identity
            reindexer = Reindexer(self, target, batch_size)
            counts = reindexer.stage(progress)
            with self._write_lock:
                counts["caught_up"] = reindexer.catch_up()
                previous = self.encoder.identity
                self.store.switch_encoder(target.identity, target.dim)
                generation = self.store.generation
                index = self._new_index(target)
                for rowids, vectors, _ in self.store.iter_vectors():
                    index.upsert(rowids, vectors)
                if index.needs_rebuild():
                    index.build_ann()
                index.save_ann(self._index_dir, generation)
                self._serving = (target, index)
                self._synced_gen = generation
                self._ann_dirty = False
                self.settings = self.settings.replace(encoder=target.name)
            return {"model": target.identity, "previous": previous, "switched": True, **counts}
        finally:
            self._reindexing = None
            self._ingest_lock.release()

    # ---- tagging --------------------------------------------------------------------------------------
    @property
    def taggers(self) -> "TaggerSet | None":
        """The store's current tagger set (cached until a new one is saved); None when never trained."""
        from .tagging.tagger import current_tagger_path, load_taggers

        path = current_tagger_path(self)
        if path is None:
            return None
        if self._taggers is None or self._taggers[0] != path:
            self._taggers = (path, load_taggers(self, path))
        return self._taggers[1]

    def train_taggers(self, options: "TrainOptions", progress: Any = None, log: Any = lambda _: None, save: bool = True) -> "TaggerSet":
        """Train taggers from the catalogue's labelled columns; saved as the store's next version."""
        from .tagging.tagger import train_taggers

        taggers = train_taggers(self, options, progress=progress, log=log)
        if save:
            taggers.save(self)
        return taggers

    def _predictor(self) -> Any:
        """The tag predictor of the current tagger set, kept so its models load once (not per upload).

        Without trained taggers it is the label-free set, rebuilt when the catalogue changes
        (its text columns are guessed from the products)."""
        from .tagging.tagger import TagPredictor, untrained_taggers

        taggers = self.taggers
        key = taggers if taggers is not None else ("untrained", self.store.generation)  # tagger sets compare by identity
        if self._tag_predictor is None or self._tag_predictor[0] != key:
            self._tag_predictor = (key, TagPredictor(self, taggers or untrained_taggers(self)))
        return self._tag_predictor[1]

    def tag(self, only_untagged: bool = False, threshold: float | None = None, rules: Any = None, progress: Any = None) -> int:
        """Write predicted tags for every product (or those without tags); returns how many were tagged.

        Without trained taggers this applies text rules and zero-shot image groups."""
        rowids = self.store.untagged_rowids() if only_untagged else self.index.ids().tolist()
        return self._predictor().predict_rowids(rowids, threshold=threshold, rules=rules, progress=progress)

    def tag_image(self, image: ImageSource, text: str = "", threshold: float | None = None) -> dict[str, dict[str, Any]]:
        """Tags for an uploaded photo (and optional title), without storing anything."""
        picture = load_image(image, self.limits, draft_size=self.encoder.input_size, downloader=self.downloader)
        return self._predictor().predict_picture(picture, self.embed(picture), text, threshold)

    def write_tags(self, entries: list[tuple[int, dict[str, dict[str, Any]]]], tagger: str) -> int:
        """Store predicted tags and make them filterable as ``tag.<name>`` columns."""
        with self._write_lock:
            written = self.store.write_tags(entries, tagger)
            self._advance(self.store.last_write_generation)
            products = self.store.get_by_rowids([r for r, _ in entries])
            for rowid, product in products.items():
                self._set_columns(rowid, product.metadata, product.tags)
        return written

    def _auto_tag(self) -> None:
        """Once taggers exist, ingest tags what it added or changed (not with taggers of an
        encoder the store no longer serves: those need retraining, which ``tag info`` says)."""
        from .tagging import TaggerError

        try:
            taggers = self.taggers
        except TaggerError:
            return
        if taggers is not None:
            self.tag(only_untagged=True)

    def _image_write(self, product_id: str, image: ImageSource, metadata: dict[str, Any]) -> ProductWrite:
        if isinstance(image, (bytes, str, Path)):
            data = read_bytes(image, self.limits, self.downloader)
            picture = decode(data, self.limits, draft_size=self.encoder.input_size, name=f"image of {product_id!r}")
            image_hash, reference = content_hash(data), (None if isinstance(image, bytes) else display_name(image))
        else:
            picture, image_hash, reference = load_image(image), None, None
        vector = self.encoder.embed(self.encoder.preprocess(picture)[None])[0]
        return ProductWrite(product_id, reference, image_hash, metadata, vector, thumbnail_jpeg(picture, self.settings.thumbnail_size))

    def upsert(self, product_id: str, image: ImageSource | None = None, metadata: dict[str, Any] | None = None) -> Product:
        """Insert or update one product. A new product needs an image; ``metadata`` None keeps the stored metadata.

        The id and metadata are validated before anything is read or written
        (:mod:`lookalike.validation`): a refused product changes nothing."""
        product_id = validate_id(product_id)
        if metadata is not None:
            metadata = validate_metadata(metadata, self.settings.metadata_limits())
        existing = self.store.get(product_id)
        if image is None and existing is None:
            raise ValueError(f"product {product_id!r} is new, so it needs an image")
        new_metadata = dict(existing.metadata if existing and metadata is None else metadata or {})
        if image is not None:
            write = self._image_write(product_id, image, new_metadata)
        else:
            write = ProductWrite(product_id, existing.image, None, new_metadata)
        self.apply_writes([write])
        return self.get(product_id)

    def delete_many(self, product_ids: Iterable[str]) -> int:
        """Delete products; unknown ids are ignored. Returns how many were deleted."""
        with self._write_lock:
            rowids = self.store.delete(product_ids)
            self._advance(self.store.last_write_generation)
            if rowids:
                self.index.remove(np.array(rowids))
                for rowid in rowids:
                    self.columns.remove(rowid)
                self._ann_dirty = self.index.ann is not None or self._ann_dirty
            return len(rowids)

    def delete(self, product_id: str) -> None:
        if self.delete_many([product_id]) == 0:
            raise NotFoundError(product_id)

    # ---- reading ----------------------------------------------------------------------------------
    def get(self, product_id: str) -> Product:
        product = self.store.get(str(product_id))
        if product is None:
            raise NotFoundError(str(product_id))
        return product

    def thumbnail(self, product_id: str) -> bytes:
        data = self.store.thumbnail(self.get(product_id).rowid)
        if data is None:
            raise NotFoundError(product_id)
        return data

    def embed(self, image: ImageSource, encoder: Encoder | None = None) -> np.ndarray:
        """The unit vector of one image (path, URL, bytes or PIL image)."""
        encoder = encoder or self.encoder
        picture = load_image(image, self.limits, draft_size=encoder.input_size, downloader=self.downloader)
        return encoder.embed(encoder.preprocess(picture)[None])[0]

    def search(self, image: ImageSource, k: int = 10, where: Iterable[str] | str | None = None) -> list[Hit]:
        """Products most similar to a photo, best first, among those matching every ``where`` clause."""
        _check_k(k)
        self.sync()
        clauses = parse_where(where)
        self.columns.mask(clauses)  # reject a bad filter before spending time on the image
        encoder, index = self._serving
        return find(index, self.columns, self.store, self.embed(image, encoder), k, clauses)

    def search_vector(self, vector: np.ndarray, k: int = 10, where: Iterable[str] | str | None = None, exclude: list[int] | None = None) -> list[Hit]:
        """Products nearest to an embedding (e.g. from :meth:`embed`), optionally excluding rowids."""
        _check_k(k)
        self.sync()
        index = self.index
        if np.shape(vector) != (index.dim,):
            raise ValueError(f"expected a vector of {index.dim} numbers (the encoder {self.encoder.identity}), got shape {np.shape(vector)}")
        return find(index, self.columns, self.store, vector, k, parse_where(where), exclude)

    def similar(self, product_id: str, k: int = 10, where: Iterable[str] | str | None = None) -> list[Hit]:
        """Products most similar to a catalogue product (the product itself excluded)."""
        _check_k(k)
        self.sync()
        product = self.get(product_id)
        index = self.index
        return find(index, self.columns, self.store, index.vector(product.rowid), k, parse_where(where), [product.rowid])

    def browse(self, where: Iterable[str] | str | None = None, offset: int = 0, limit: int = 48) -> tuple[int, list[Product]]:
        """A page of the catalogue (in ingest order) among products matching ``where``; returns (total, page)."""
        self.sync()
        mask = self.columns.mask(parse_where(where))
        live = np.flatnonzero(self.index.live if mask is None else self.index.allowed_mask(mask))
        page = live[offset : offset + limit].tolist()
        products = self.store.get_by_rowids(page)
        return len(live), [products[r] for r in page if r in products]

    def facets(self, max_values: int = 100) -> list[dict[str, Any]]:
        """Filterable metadata columns with their values and counts (or numeric ranges), in the
        order of the ``facets`` setting when it names columns."""
        self.sync()
        found = self.columns.facets(max_values)
        pinned = [c.strip() for c in self.settings.facets.split(",") if c.strip()]
        if not pinned:
            return found
        by_name = {f["name"]: f for f in found}
        return [by_name[c] for c in pinned if c in by_name]

    def __len__(self) -> int:
        self.sync()
        return self.index.count

    def stats(self) -> dict[str, Any]:
        self.sync()
        return {
            "store": str(self.directory),
            "products": self.store.count(),
            "vectors": self.index.count,
            "encoder": self.encoder.identity,
            "dim": self.encoder.dim,
            "quantized_bits": getattr(self.encoder, "quantizer", None) and self.encoder.quantizer.bits,
            "kept_vectors": self.store.kept_encoders(),
            "reindexing": self._reindexing,
            "index": (f"{self.index.code_bytes}-byte codes, {self.index.code_search.upper()}" if self.index.quantizer is not None
                      else self.index.ann_factory or "flat (exact)"),
            "generation": self.store.generation,
            "columns": self.columns.names(),
            "store_bytes": self.store.size_bytes(),
            "read_only": self.store.read_only,
            "unreadable_rows": self.store.unreadable_rows,
        }

    def ingest_running(self) -> bool:
        """Whether an ingest or re-index holds this engine's job lock."""
        return self._ingest_lock.locked()

    def ingest_status(self) -> dict[str, Any]:
        current = self.current_ingest
        running = self._ingest_lock.locked()
        return {
            "running": running,
            "current": None if current is None else {**current.to_dict(), "total": self.current_total},
            "recent_runs": self.store.runs(10),
        }


def with_tag_columns(metadata: dict[str, Any], tags: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """The shop's metadata plus predicted tags as ``tag.<name>`` columns (kept apart from the shop's labels).
    A stored key that spells a tag column (from before such keys were refused) is not one."""
    if any(k.lower().startswith(TAG_PREFIX) for k in metadata):
        metadata = {k: v for k, v in metadata.items() if not k.lower().startswith(TAG_PREFIX)}
    if not tags:
        return metadata
    return {**metadata, **{f"{TAG_PREFIX}{name}": tag["value"] for name, tag in tags.items() if tag.get("value") is not None}}


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1 or k > 1000:
        raise ValueError(f"k must be an integer from 1 to 1000, got {k!r}")
