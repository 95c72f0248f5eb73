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
every result can replace :class:`ThreadExecutor` (a process pool, Ray, Spark...).  URL rows
load on their own threads and in their own order, so a slow image host never holds back rows
whose photos are on disk; local rows keep the catalogue's order.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol, TypeVar

import numpy as np

from .catalogue import CatalogueRow, RowError, read_catalogue
from .encoders import Encoder
from .images import ImageError, ImageLimits, content_hash, decode, display_name, is_url, read_bytes, thumbnail_jpeg
from .security.paths import PathPolicy
from .security.urls import Downloader
from .store import ProductWrite, StoreError, canonical_json

log = logging.getLogger("lookalike.ingest")

if TYPE_CHECKING:
    from .engine import Engine

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Runs a function over items, yielding every result; it may also yield None while nothing is
    ready, so the consumer can commit a partial batch instead of waiting."""

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R | None]: ...


class ThreadExecutor:
    """Thread pools with one lane per kind of item: ``lane(item)`` picks it, and items of the
    ``"remote"`` lane (image URLs) run on their own ``remote_workers`` threads.  Each lane yields
    its results in input order (so ingest order, and the rowids it gives, stay reproducible), but
    the lanes do not wait for each other: a slow image host holds back only other URL rows."""

    REMOTE_BACKLOG = 10_000  # queued URL rows hold no pixels, so many may wait while local rows flow
    HEARTBEAT = 0.5  # seconds without a result before yielding None

    def __init__(self, workers: int = 2, window: int = 64, remote_workers: int = 4, lane: Callable[[Any], str] | None = None):
        self.workers, self.window = max(1, workers), max(1, window)
        self.remote_workers = max(1, remote_workers)
        self.lane = lane or (lambda _: "local")

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R | None]:
        with ThreadPoolExecutor(self.workers, thread_name_prefix="lookalike-load") as local, \
                ThreadPoolExecutor(self.remote_workers, thread_name_prefix="lookalike-fetch") as remote:
            pools = {"local": local, "remote": remote}
            in_flight = {"local": self.window, "remote": 2 * self.remote_workers}
            running: dict[str, deque[Future]] = {"local": deque(), "remote": deque()}
            waiting: dict[str, deque[T]] = {"local": deque(), "remote": deque()}
            source = iter(items)
            exhausted = False
            while True:
                # Read ahead until the local lane is full (URL rows queue without holding pixels).
                while not exhausted and len(running["local"]) + len(waiting["local"]) < self.window \
                        and len(running["remote"]) + len(waiting["remote"]) < self.REMOTE_BACKLOG:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    name = self.lane(item)
                    waiting[name if name in pools else "local"].append(item)
                for name, pool in pools.items():
                    while waiting[name] and len(running[name]) < in_flight[name]:
                        running[name].append(pool.submit(fn, waiting[name].popleft()))
                heads = [running[name][0] for name in pools if running[name]]
                if not heads:
                    if exhausted and not waiting["local"] and not waiting["remote"]:
                        return
                    continue
                done, _ = wait(heads, timeout=self.HEARTBEAT, return_when=FIRST_COMPLETED)
                if not done:
                    yield None  # nothing ready yet: the consumer may commit what it holds
                for name in pools:
                    while running[name] and running[name][0].done():
                        yield running[name].popleft().result()


class SerialExecutor:
    """Runs everything on the calling thread (debugging, or when the encoder owns all cores)."""

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        return map(fn, items)


class IngestCancelled(RuntimeError):
    """The process is shutting down: the ingest stops after its last committed batch."""


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
    prune_refused: str | None = None

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
                "prune_refused": self.prune_refused,
                "skipped_items": [s.__dict__ for s in self.skipped[:100]]}

    def summary(self) -> str:
        rate = self.embedded / self.seconds if self.seconds > 0 else 0.0
        text = (
            f"{self.seen} rows: {self.added} added, {self.updated} re-embedded, {self.metadata_updated} metadata updated, "
            f"{self.unchanged} unchanged, {self.deleted} deleted, {len(self.skipped)} skipped "
            f"in {self.seconds:.1f} s ({rate:.0f} images/s)"
        )
        if self.prune_refused:
            text += "\n" + self.prune_refused
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

    def __init__(self, encoder: Encoder, limits: ImageLimits, thumbnail_size: int, max_downloads: int = 4):
        self.encoder, self.limits, self.thumbnail_size = encoder, limits, thumbnail_size
        # An ingest waits for a download slot as long as it takes (slot_wait), but its slots are
        # its own: a catalogue full of slow URLs cannot take the server's.
        self.downloader = Downloader(limits.max_bytes, limits.url_timeout, limits.allow_private_urls, max_downloads, slot_wait=3600)

    def __call__(self, job: Job) -> Job:
        try:
            data = read_bytes(job.row.image, self.limits, self.downloader)
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
        self.downloader.close()


def _lane(job: Job) -> str:
    return "remote" if is_url(job.row.image) else "local"


class IngestPipeline:
    """Wires the stages for one engine; ``run`` ingests one catalogue source."""

    def __init__(self, engine: "Engine", executor: Executor | None = None, batch_size: int | None = None,
                 paths: PathPolicy | None = None):
        settings = engine.settings
        self.engine = engine
        self.limits = engine.limits if paths is None else dataclasses.replace(engine.limits, paths=paths)
        self.batch_size = batch_size or settings.batch_size
        self.executor = executor or ThreadExecutor(settings.loader_threads, window=4 * self.batch_size,
                                                   remote_workers=settings.max_downloads, lane=_lane)
        self.loader = ImageLoader(engine.encoder, self.limits, settings.thumbnail_size, settings.max_downloads)
        self.cancelled = engine.closing

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
            prune: bool = False, progress: ProgressCallback | None = None, total: int | None = None,
            force_prune: bool = False, label: str | None = None) -> IngestReport:
        """Ingest ``source``; ``label`` is how the run is recorded (an uploaded file's name)."""
        store = self.engine.store
        settings = self.engine.settings
        rows = read_catalogue(source, id_column=id_column, image_column=image_column, limits=settings.metadata_limits(),
                              paths=self.limits.paths)  # raises before anything is written
        report = IngestReport(run_id=store.start_run(label or str(source)), source=label or str(source))
        started = time.perf_counter()
        seen_ids: set[str] = set()
        batch: list[Job] = []
        batch_started = last_progress = 0.0
        try:
            for job in self.executor.map(self.loader, self._jobs(rows, report, seen_ids)):
                if self.cancelled.is_set():
                    raise IngestCancelled("the ingest was stopped because the process is shutting down")
                now = time.perf_counter()
                if job is None:
                    pass
                elif job.error is not None:
                    report.skipped.append(Skipped(job.row.id, display_name(job.row.image), job.error.kind, job.error.message))
                elif job.pixels is None:
                    self._write_unchanged_image(job, report)
                else:
                    batch_started = batch_started if batch else now
                    batch.append(job)
                # A full batch, or one that has waited a while (slow URLs elsewhere), is committed.
                if batch and (len(batch) >= self.batch_size or now - batch_started > self.MAX_BATCH_WAIT):
                    self._embed_and_write(batch, report)
                    batch = []
                if progress and now - last_progress > 0.2:
                    report.seconds = now - started
                    progress(report, total)
                    last_progress = now
            self._embed_and_write(batch, report)
            if prune:
                self._prune(sorted(store.all_ids() - seen_ids), force_prune, report)
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

    MAX_BATCH_WAIT = 1.0  # seconds a partial batch may wait for more images before it is committed

    def _prune(self, stale: list[str], force: bool, report: IngestReport) -> None:
        """Delete products the catalogue no longer lists, unless that is more than the allowed
        share of the store (a truncated or wrong file must not wipe the catalogue)."""
        existing = self.engine.store.count()
        allowed = self.engine.settings.max_prune_fraction * existing
        if stale and len(stale) > allowed and not force:
            report.prune_refused = (f"prune refused: it would delete {len(stale)} of {existing} products, more than "
                                    f"{self.engine.settings.max_prune_fraction:.0%}; check the catalogue, or force it "
                                    "(--force-prune, \"force_prune\": true)")
            return
        report.deleted = self.engine.delete_many(stale)

    def _write_unchanged_image(self, job: Job, report: IngestReport) -> None:
        if canonical_json(job.row.metadata) == job.known_metadata:
            report.unchanged += 1
            return
        self.engine.apply_writes([ProductWrite(job.row.id, display_name(job.row.image), job.image_hash, job.row.metadata)])
        report.metadata_updated += 1

    def _embed_and_write(self, batch: list[Job], report: IngestReport) -> None:
        if not batch:
            return
        vectors = self.engine.encoder.embed(np.stack([job.pixels for job in batch]))
        writes = [ProductWrite(j.row.id, display_name(j.row.image), j.image_hash, j.row.metadata, vectors[i], j.thumbnail)
                  for i, j in enumerate(batch)]
        self.engine.apply_writes(writes)
        for job in batch:
            if job.known_hash is None and not job.has_vector and job.known_metadata is None:
                report.added += 1
            else:
                report.updated += 1

    def _finish(self, report: IngestReport) -> None:
        """Record the run and its skip list; a full disk here loses only the report, never products."""
        store = self.engine.store
        entries = [(s.item, s.source, s.kind, s.reason) for s in report.skipped]
        try:
            if entries:
                report.skip_report = _write_skip_report(store.directory / "reports", report.run_id, entries)
                store.record_skipped(report.run_id, entries)
            store.update_run(report.run_id, report.counts(), status=report.status, skip_report=report.skip_report)
        except (OSError, StoreError) as exc:
            log.error("ingest run %s: its report could not be saved (%s)", report.run_id, exc)


def _write_skip_report(directory: Path, run_id: int, entries: list[tuple[str, str, str, str]]) -> str | None:
    """The skip list as CSV, written under a temporary name and renamed (never half a file)."""
    directory.mkdir(exist_ok=True)
    path = directory / f"ingest-{run_id}-skipped.csv"
    partial = path.with_suffix(".csv.partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item", "source", "kind", "reason"])
        writer.writerows(entries)
    partial.replace(path)
    return str(path)
