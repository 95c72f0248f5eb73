"""The engine: a thin facade that opens a store and composes the capabilities over it.

Each capability lives in its own package and gets only what it needs: ingest a product sink
and a mapper factory, search a :class:`~lookalike.search.Searcher`, training and tagging a
:class:`~lookalike.search.view.CatalogueView` (see docs/architecture.md).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterable

from threadpoolctl import threadpool_limits

from .catalog import Catalog
from .common.progress import Log, Progress, fan_out, no_log
from .config import Settings, load_settings, split_list
from .detection.service import FinderLoader
from .duplicates import DuplicateFinder
from .export import SimilarExport
from .images import ImageSource, set_decode_budget
from .ingest import Distributor, IngestPipeline, IngestReport, IngestRequest, MapperFactory, default_distributor
from .ingest.catalogue import count_rows
from .ingest.garments import VERSION_META, find_catalogue_garments, garments_after_ingest
from .ingest.reindex import reindex_store
from .jobs import BusyError, JobBoard
from .judging import Rounds
from .models import Encoder, adopt_model, get_encoder
from .search import ExactFirst, Hit, ImageQuery, NotFoundError, ProductQuery, Query, Searcher, ServingIndex, TextQuery
from .search.look import Look, LookService
from .search.view import CatalogueView
from .security.paths import PathPolicy
from .storage import Product
from .tagging.service import TaggingService
from .text import TextService
from .vectors import BackendConfig, VectorBackend, create_backend

__all__ = ["BusyError", "Engine", "NotFoundError"]
DEFAULT_ENCODER = "efficientnet-lite0-int8"  # INT8, calibrated on packaged photos: float quality, about 1.4x faster (README)


class Engine(Catalog):
    """A store opened for ingest and search. Thread-safe; one writing job at a time."""

    def __init__(self, directory: Path, settings: Settings, encoder: str | Encoder | None = None):
        super().__init__(directory, settings)
        try:
            set_decode_budget(settings.max_decode_pixels)
            threadpool_limits(max(1, settings.threads), user_api="blas")  # exact search's BLAS joins the pinned budget
            self.closing, self.jobs = threading.Event(), JobBoard()  # closing: set by close(), a running ingest stops after its last batch
            self.tagging, self.text, self.exports = TaggingService(self.view), TextService(self.view), SimilarExport(self.view)
            self.duplicates, self.judging = DuplicateFinder(self.view, threads=settings.threads), Rounds(self.view)  # lookalike.duplicates, .judging
            self.finders = FinderLoader(self.directory, self.settings)
            self.looks = LookService(lambda: self.searcher, self.read_image, lambda: self.finders.get(self.settings.detector),
                                     settings.garment_groups, settings.garment_search, self.store.region_matrix,
                                     lambda: self.store.get_meta(VERSION_META) or "")
            model = encoder if isinstance(encoder, Encoder) else get_encoder(self.encoder_name(encoder, DEFAULT_ENCODER), self.settings)
            self.settings = self.settings.replace(encoder=model.name)
            # The serving encoder and its index change together (re-index): a query reads one searcher, never a mix of two models.
            self.searcher = self._serve(model)
        except BaseException:
            super().close()
            raise

    @classmethod
    def open(cls, path: str | Path | None = None, settings: Settings | None = None, encoder: str | Encoder | None = None,  # type: ignore[override]
             **overrides: Any) -> Engine:
        """Open (or create) the store at ``path``.  The encoder is, in order: the ``encoder`` argument, ``settings.encoder``,
        the one the store was built with, ``efficientnet-lite0-int8``.  A store refuses an encoder other than its own."""
        settings = (settings or load_settings()).replace(**overrides)
        directory = Path(path or settings.store).expanduser()
        return cls(directory, settings.replace(store=str(directory)), encoder)

    def _serve(self, encoder: Encoder) -> Searcher:
        self.store.bind_encoder(encoder.identity, encoder.dim)
        serving = ServingIndex(self.store, encoder, self._backend(encoder), self.directory / "index", self.settings.max_filter_columns)
        serving.load()
        return self._searcher(serving)

    def _searcher(self, serving: ServingIndex) -> Searcher:  # noqa: E704  (ExactFirst: a fine-tuned model's photo search puts the exact product first)
        return Searcher(serving, self.store, self.read_image, split_list(self.settings.facets), ExactFirst.chosen(self.settings.exact_first_depth, serving.encoder.exact_first_depth, self.store))

    def _backend(self, encoder: Encoder) -> VectorBackend:
        return create_backend(encoder.dim, BackendConfig.from_settings(self.settings, encoder.identity), getattr(encoder, "quantizer", None))

    encoder = property(lambda self: self.searcher.serving.encoder, doc="The serving encoder.")
    index = property(lambda self: self.searcher.serving.backend, doc="The serving vector backend.")

    def view(self) -> CatalogueView:  # what training and tagging may read (and, for tags, write)
        return CatalogueView(self.directory, self.settings, self.limits, self.store, self.searcher)

    def sync(self) -> bool: return self.searcher.serving.sync()  # noqa: E704  (catch up with writes other processes committed)

    def close(self, wait: float = 30.0) -> None:
        """Stop a running job after its last committed batch, snapshot, and close the store."""
        if self._closed:
            return
        self.closing.set()
        self.jobs.wait_idle(wait)
        with self.searcher.serving.lock:
            self.store.interrupt_running()  # runs left "running" (this process's, or a killed one's) end as interrupted
            if self.searcher.serving.dirty:
                self.searcher.serving.save()
            super().close()

    # ---- jobs: ingest, re-index, training ---------------------------------------------------
    def ingest(self, source: str | Path, id_column: str | None = None, image_column: str | None = None, prune: bool = False,
               progress: Progress | None = None, distributor: Distributor | None = None, batch_size: int | None = None,
               force_prune: bool = False, paths: PathPolicy | None = None, label: str | None = None, garments: bool | None = None) -> IngestReport:
        """Add or update a catalogue's products (see :mod:`lookalike.ingest`): only new or changed images are embedded;
        ``prune`` deletes unlisted products (at most ``max_prune_fraction`` unless ``force_prune``); ``paths`` confines
        server-side paths; ``garments`` (default: ``ingest_garments``) then finds new outfit shots' garments."""
        with self.jobs.exclusive("ingest", label or str(source)) as job:
            limits, progress = self.limits if paths is None else self.limits.confined(paths), fan_out(job.progress, progress)
            mapper = MapperFactory(self.encoder, limits, self.settings.thumbnail_size, self.settings.max_downloads)
            pipeline = IngestPipeline(self.store, self.searcher.serving, mapper, self.settings, distributor, batch_size, self.closing)
            report = pipeline.run(IngestRequest(source, id_column, image_column, prune, force_prune, label), progress, count_rows(source), job.set_outcome)
            self.searcher.serving.maintain(save=True)
            self.tagging.auto_tag()
            if (self.settings.ingest_garments if garments is None else garments) and self.settings.detector != "none":
                report.garments = garments_after_ingest(self.store, limits, self.encoder, self.looks.finder, progress, self.closing)
            return report

    def reindex(self, model: str, progress: Progress | None = None, batch_size: int = 64, allow_paths: bool = True, distributor: Distributor | None = None) -> dict[str, Any]:
        """Re-embed the catalogue with another model and switch to it atomically; search answers from the current index meanwhile."""
        with self.jobs.exclusive("reindex", model) as job:
            target = get_encoder(adopt_model(model, self.directory) if allow_paths else model, self.settings, allow_paths=allow_paths)
            job.outcome = {"model": target.identity, "switched": False, "reason": "already serving this model"}
            if target.identity != self.encoder.identity:
                job.outcome = reindex_store(self.store, self.limits, self.searcher.serving, target, self._backend(target),
                                            fan_out(job.progress, progress), batch_size, self._switch,
                                            distributor or default_distributor(self.settings))
            return dict(job.outcome)

    def _switch(self, serving: ServingIndex) -> None:
        """Called by re-index under the serving lock: the new model serves the next query."""
        self.searcher = self._searcher(serving)
        self.settings = self.settings.replace(encoder=serving.encoder.name)

    def train_embedding(self, options: Any, progress: Progress | None = None, log: Log = no_log, save: bool = True) -> Any:
        from .training import train_embedding  # fine-tune an embedding, saved as a new model; PyTorch only here
        return train_embedding(self.view(), options, progress=progress, log=log, save=save)

    def train_quantizer(self, options: Any, progress: Progress | None = None, log: Log = no_log, save: bool = True) -> Any:
        from .training import train_quantizer  # compact codes for a fine-tuned model, saved as a new model
        return train_quantizer(self.view(), options, progress=progress, log=log, save=save)

    # ---- tagging (the service does the work: engine.tagging) -------------------------------------
    @property
    def taggers(self) -> Any:
        return self.tagging.taggers

    def train_taggers(self, options: Any, progress: Progress | None = None, log: Log = no_log, save: bool = True) -> Any:
        return self.tagging.train(options, progress, log, save)

    def tag(self, only_untagged: bool = False, threshold: float | None = None, rules: Any = None, progress: Progress | None = None) -> int:
        return self.tagging.tag(only_untagged, threshold, rules, progress)

    def tag_image(self, image: ImageSource, text: str = "", threshold: float | None = None) -> dict[str, dict[str, Any]]:
        picture = self.read_image(image, self.encoder.input_size)
        return self.tagging.tag_picture(picture, self.searcher.embed(picture), text, threshold)

    # ---- products -------------------------------------------------------------------------------
    def upsert(self, product_id: str, image: ImageSource | None = None, metadata: dict[str, Any] | None = None) -> Product:
        """Insert or update one product; a new product needs an image, ``metadata`` None keeps the stored metadata."""
        write = self.product_write(product_id, image, metadata, self.encoder)
        self.searcher.serving.write([write])
        return self.get(product_id)

    def delete_many(self, product_ids: Iterable[str]) -> int:  # unknown ids are ignored
        return len(self.searcher.serving.delete(product_ids))

    # ---- search (the searcher catches up with other processes' writes first) ----------------------
    def query(self, query: Query) -> list[Hit]:  # a query object (lookalike.search.queries); words and changes: lookalike.text
        if isinstance(query, TextQuery):
            return self.text.search(query)
        return self.text.similar_changed(query) if isinstance(query, ProductQuery) and query.change else self.searcher.search(query)

    def search(self, image: ImageSource, k: int = 10, where: Iterable[str] | str | None = None) -> list[Hit]:  # a photo's nearest products
        return self.query(ImageQuery(image, k=k, where=where))  # type: ignore[arg-type]

    def similar(self, product_id: str, k: int = 10, where: Iterable[str] | str | None = None, hide_sharing: Iterable[str] = (), change: Any = ()) -> list[Hit]:
        """Products most similar to a catalogue product (itself excluded); ``hide_sharing``: columns whose value the results
        must not share with it; ``change`` ({"base_colour": "Red"}): "like this, but in red" (see :mod:`lookalike.text`)."""
        return self.query(ProductQuery(str(product_id), k=k, where=where, hide_sharing=hide_sharing, change=change))  # type: ignore[arg-type]

    def search_text(self, text: str = "", k: int = 10, where: Iterable[str] | str | None = None, image: ImageSource | None = None,
                    negative: Iterable[str] = ()) -> list[Hit]:  # words, optionally around a photo ("this, but in red")
        return self.query(TextQuery(k=k, where=where, text=text, image=image, negative=negative))  # type: ignore[arg-type]

    def look(self, image: ImageSource, k: int = 10, where: Iterable[str] | str | None = None, **options: Any) -> Look:
        return self.looks.look(image, k, where, **options)  # shop the look (lookalike.search.look)

    def search_garment(self, image: ImageSource, k: int = 10, where: Iterable[str] | str | None = None, whole: bool | None = None) -> tuple[Any, list[Hit]]:
        return self.looks.search(image, k, where, whole)  # a photo of a person: by its main garment (None: whole)

    def train_detector(self, spec: Any, name: str | None = None, progress: Progress | None = None, log: Log = no_log) -> tuple[Path, dict[str, Any]]:
        with self.jobs.exclusive("train-detector", str(spec.images_csv)):  # teach the garment finder (lookalike.detection)
            return self.finders.train(spec, name, progress, log)

    def find_garments(self, progress: Progress | None = None) -> dict[str, Any]:  # outfit shots: a vector per garment (lookalike.ingest.garments)
        with self.jobs.exclusive("garments", "catalogue") as job:
            return find_catalogue_garments(self.store, self.limits, self.encoder, self.looks.finder(), fan_out(job.progress, progress), self.closing).to_dict()

    def browse(self, where: Iterable[str] | str | None = None, offset: int = 0, limit: int = 48) -> tuple[int, list[Product]]: return self.searcher.browse(where, offset, limit)  # noqa: E704

    def facets(self, max_values: int = 100) -> list[dict[str, Any]]: return self.searcher.facets(max_values)  # noqa: E704

    __len__ = lambda self: self.searcher.count()  # noqa: E731

    def stats(self) -> dict[str, Any]:
        reindex = self.jobs.latest.get("reindex")
        return {**self.store_facts(), "vectors": self.searcher.count(), "encoder": self.encoder.identity, "dim": self.encoder.dim,
                "quantized_bits": getattr(getattr(self.encoder, "quantizer", None), "bits", None),
                "reindexing": reindex.label if reindex and reindex.running else None,
                "index": self.index.describe(), "columns": self.searcher.serving.columns.names()}

    def ingest_status(self) -> dict[str, Any]:
        return self.jobs.ingest_status(self.store.runs(10))
