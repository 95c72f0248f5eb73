"""Ingest as a pipeline of small stages: read rows → load images → embed → write.

* **read**: :func:`lookalike.catalogue.read_catalogue` yields rows or row errors.
* **load** (:class:`ImageLoader`): fetch bytes, hash them, and only when the hash differs
  from the stored one decode (JPEG draft mode), letterbox and thumbnail.  Runs on an
  :class:`Executor`, threads by default; Pillow and file/HTTP I/O release the GIL, so
  decoding overlaps model inference on the main thread.
* **embed**: batches of preprocessed pixels through the encoder.
* **write**: each batch is one SQLite transaction (see :mod:`lookalike.store`), then the
  in-memory index is updated, so a crash loses at most the batch in flight and a re-run
  skips everything already committed.

The executor is the seam for scale-out: anything with ``map(fn, items)`` that yields
results in order can replace :class:`ThreadExecutor` (a process pool, Ray, Spark...).
"""

from __future__ import annotations

import csv
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol, TypeVar

import httpx
import numpy as np

from .catalogue import CatalogueRow, RowError, read_catalogue
from .encoders import Encoder
from .images import ImageError, ImageLimits, content_hash, decode, read_bytes, thumbnail_jpeg
from .store import ProductWrite, canonical_json

if TYPE_CHECKING:
    from .engine import Engine

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Runs a function over items, yielding results in input order."""

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]: ...


class ThreadExecutor:
    """A bounded-window thread pool: at most ``window`` items in flight, results in order."""

    def __init__(self, workers: int = 2, window: int = 64):
        self.workers, self.window = max(1, workers), max(1, window)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        with ThreadPoolExecutor(self.workers, thread_name_prefix="lookalike-load") as pool:
            pending: deque[Future] = deque()
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= self.window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


class SerialExecutor:
    """Runs everything on the calling thread (debugging, or when the encoder owns all cores)."""

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        return map(fn, items)


@dataclass
class Job:
    """A catalogue row on its way through the pipeline."""

    row: CatalogueRow
    known_hash: str | None = None
    known_metadata: str | None = None
    has_vector: bool = False
    image_hash: str | None = None
    pixels: np.ndarray | None = None
    thumbnail: bytes | None = None
    error: ImageError | None = None


@dataclass
class Skipped:
    item: str
    source: str
    kind: str
    reason: str


@dataclass
class IngestReport:
    run_id: int
    source: str
    seen: int = 0
    added: int = 0
    updated: int = 0  # image changed: re-embedded
    metadata_updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    skip_report: str | None = None
    status: str = "running"

    @property
    def embedded(self) -> int:
        return self.added + self.updated

    def counts(self) -> dict[str, Any]:
        return {
            "seen": self.seen, "added": self.added, "updated": self.updated, "metadata_updated": self.metadata_updated,
            "unchanged": self.unchanged, "deleted": self.deleted, "skipped": len(self.skipped), "seconds": round(self.seconds, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "source": self.source, "status": self.status, **self.counts(), "skip_report": self.skip_report,
                "skipped_items": [s.__dict__ for s in self.skipped[:100]]}

    def summary(self) -> str:
        rate = self.embedded / self.seconds if self.seconds > 0 else 0.0
        text = (
            f"{self.seen} rows: {self.added} added, {self.updated} re-embedded, {self.metadata_updated} metadata updated, "
            f"{self.unchanged} unchanged, {self.deleted} deleted, {len(self.skipped)} skipped "
            f"in {self.seconds:.1f} s ({rate:.0f} images/s)"
        )
        if self.skipped:
            kinds: dict[str, int] = {}
            for s in self.skipped:
                kinds[s.kind] = kinds.get(s.kind, 0) + 1
            text += "\nskipped by reason: " + ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items()))
            if self.skip_report:
                text += f"\nfull list: {self.skip_report}"
        return text


ProgressCallback = Callable[[IngestReport, int | None], None]


class ImageLoader:
    """The load stage: bytes → hash → (if changed) decoded, letterboxed pixels and a thumbnail."""

    def __init__(self, encoder: Encoder, limits: ImageLimits, thumbnail_size: int):
        self.encoder, self.limits, self.thumbnail_size = encoder, limits, thumbnail_size
        self.client = httpx.Client(timeout=limits.url_timeout, follow_redirects=True)

    def __call__(self, job: Job) -> Job:
        try:
            data = read_bytes(job.row.image, self.limits, self.client)
            job.image_hash = content_hash(data)
            if job.image_hash == job.known_hash and job.has_vector:
                return job  # same picture as stored: nothing to decode or embed
            image = decode(data, self.limits, draft_size=self.encoder.input_size, name=job.row.image)
            job.pixels = self.encoder.preprocess(image)
            job.thumbnail = thumbnail_jpeg(image, self.thumbnail_size)
        except ImageError as exc:
            job.error = exc
        return job

    def close(self) -> None:
        self.client.close()


class IngestPipeline:
    """Wires the stages for one engine; ``run`` ingests one catalogue source."""

    def __init__(self, engine: "Engine", executor: Executor | None = None, batch_size: int | None = None):
        settings = engine.settings
        self.engine = engine
        self.batch_size = batch_size or settings.batch_size
        self.executor = executor or ThreadExecutor(settings.loader_threads, window=4 * self.batch_size)
        self.loader = ImageLoader(engine.encoder, engine.limits, settings.thumbnail_size)

    def _jobs(self, rows: Iterable[CatalogueRow | RowError], report: IngestReport, seen_ids: set[str]) -> Iterator[Job]:
        """Annotate rows with what the store already has, in chunks (one query per chunk)."""
        chunk: list[CatalogueRow] = []

        def flush() -> Iterator[Job]:
            known = self.engine.store.fingerprints([r.id for r in chunk])
            for row in chunk:
                image_hash, metadata, has_vector = known.get(row.id, (None, None, False))
                yield Job(row, image_hash, metadata, has_vector)
            chunk.clear()

        for item in rows:
            report.seen += 1
            if isinstance(item, RowError):
                report.skipped.append(Skipped(item.item, item.source, item.kind, item.reason))
                continue
            seen_ids.add(item.id)
            chunk.append(item)
            if len(chunk) >= 256:
                yield from flush()
        if chunk:
            yield from flush()

    def run(self, source: str | Path, id_column: str | None = None, image_column: str | None = None,
            prune: bool = False, progress: ProgressCallback | None = None, total: int | None = None) -> IngestReport:
        store = self.engine.store
        rows = read_catalogue(source, id_column=id_column, image_column=image_column)  # raises before anything is written
        report = IngestReport(run_id=store.start_run(str(source)), source=str(source))
        started = time.perf_counter()
        seen_ids: set[str] = set()
        batch: list[Job] = []
        last_progress = 0.0
        try:
            for job in self.executor.map(self.loader, self._jobs(rows, report, seen_ids)):
                if job.error is not None:
                    report.skipped.append(Skipped(job.row.id, job.row.image, job.error.kind, job.error.message))
                elif job.pixels is None:
                    self._write_unchanged_image(job, report)
                else:
                    batch.append(job)
                    if len(batch) >= self.batch_size:
                        self._embed_and_write(batch, report)
                        batch = []
                now = time.perf_counter()
                if progress and now - last_progress > 0.2:
                    report.seconds = now - started
                    progress(report, total)
                    last_progress = now
            self._embed_and_write(batch, report)
            if prune:
                stale = sorted(store.all_ids() - seen_ids)
                report.deleted = self.engine.delete_many(stale)
            report.status = "completed"
        except BaseException:
            report.status = "interrupted"
            raise
        finally:
            self.loader.close()
            report.seconds = time.perf_counter() - started
            self._finish(report)
            if progress:
                progress(report, total)
        return report

    def _write_unchanged_image(self, job: Job, report: IngestReport) -> None:
        if canonical_json(job.row.metadata) == job.known_metadata:
            report.unchanged += 1
            return
        self.engine.apply_writes([ProductWrite(job.row.id, job.row.image, job.image_hash, job.row.metadata)])
        report.metadata_updated += 1

    def _embed_and_write(self, batch: list[Job], report: IngestReport) -> None:
        if not batch:
            return
        vectors = self.engine.encoder.embed(np.stack([job.pixels for job in batch]))
        writes = [ProductWrite(j.row.id, j.row.image, j.image_hash, j.row.metadata, vectors[i], j.thumbnail) for i, j in enumerate(batch)]
        self.engine.apply_writes(writes)
        for job in batch:
            if job.known_hash is None and not job.has_vector and job.known_metadata is None:
                report.added += 1
            else:
                report.updated += 1

    def _finish(self, report: IngestReport) -> None:
        store = self.engine.store
        entries = [(s.item, s.source, s.kind, s.reason) for s in report.skipped]
        if entries:
            reports = store.directory / "reports"
            reports.mkdir(exist_ok=True)
            path = reports / f"ingest-{report.run_id}-skipped.csv"
            with path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["item", "source", "kind", "reason"])
                writer.writerows(entries)
            report.skip_report = str(path)
            store.record_skipped(report.run_id, entries)
        store.update_run(report.run_id, report.counts(), status=report.status, skip_report=report.skip_report)
