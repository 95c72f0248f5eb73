"""Ingest as a pipeline: read rows → map (fetch, decode, embed) → write.

* **read** (:mod:`.reader`): the catalogue parsed once, streaming, rows annotated with the
  store's fingerprints (image hash, metadata) in partitions of one lane (local or URL);
* **map** (:mod:`.mapper`): per partition, only rows whose image hash changed are decoded and
  embedded; runs wherever the :mod:`distributor <.distributors>` puts it;
* **write** (:mod:`.writer`): each partition is one SQLite transaction, so a crash loses at
  most the partitions in flight and a re-run skips everything already committed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from ..common.progress import Progress
from ..config import Settings
from ..storage import StoreError
from .catalogue import read_catalogue
from .distributors import DISTRIBUTOR_NAMES, Distributor, DistributorError, ProcessDistributor, SerialDistributor, ThreadDistributor
from .mapper import MapperFactory
from .reader import read_partitions
from .report import IngestReport, write_skip_report
from .writer import BatchWriter, ProductSink

log = logging.getLogger("lookalike.ingest")


class IngestCancelled(RuntimeError):
    """The process is shutting down: the ingest stops after its last committed batch."""


class RunLog(Protocol):
    """What ingest reads and records in the store besides products (:class:`lookalike.storage.ProductStore`)."""

    directory: Path

    def fingerprints(self, ids: list[str]) -> dict[str, tuple[str | None, str, bool]]: ...

    def all_ids(self) -> set[str]: ...

    def count(self) -> int: ...

    def start_run(self, source: str) -> int: ...

    def record_skipped(self, run_id: int, entries: list[tuple[str, str, str, str]]) -> None: ...

    def update_run(self, run_id: int, counts: dict[str, int], status: str | None = None, skip_report: str | None = None) -> None: ...


@dataclass
class IngestRequest:
    source: str | Path
    id_column: str | None = None
    image_column: str | None = None
    prune: bool = False
    force_prune: bool = False
    label: str | None = None  # how the run is recorded (an uploaded file's name)


def make_distributor(name: str, workers: int = 0, remote_workers: int = 4, ray_address: str = "") -> Distributor:
    """A distributor by name (settings ``distributor``, ``distributor_workers``, ``ray_address``;
    the CLI's ``--distributor``, ``--workers``, ``--ray-address``); ``workers`` 0 sizes it to the CPUs."""
    cpus = os.cpu_count() or 1
    if name == "threads":
        return ThreadDistributor(workers or cpus + 1, remote_workers)
    if name == "processes":
        return ProcessDistributor(workers or cpus)
    if name == "serial":
        return SerialDistributor()
    if name == "ray":
        from .ray_distributor import RayDistributor

        return RayDistributor(workers or None, ray_address or None)
    raise DistributorError(f"unknown distributor {name!r}; choose one of {', '.join(DISTRIBUTOR_NAMES)}")


def default_distributor(settings: Settings) -> Distributor:
    """As configured (``distributor``); threads by default: one more mapper than loader threads
    (one embeds while the others fetch and decode)."""
    if settings.distributor == "threads" and not settings.distributor_workers:
        return ThreadDistributor(settings.loader_threads + 1, settings.max_downloads)
    return make_distributor(settings.distributor, settings.distributor_workers, settings.max_downloads, settings.ray_address)


class IngestPipeline:
    """Wires the stages for one store; :meth:`run` ingests one catalogue."""

    def __init__(self, runs: RunLog, sink: ProductSink, mapper: MapperFactory, settings: Settings,
                 distributor: Distributor | None = None, batch_size: int | None = None, cancelled: threading.Event | None = None):
        self.runs, self.sink, self.mapper, self.settings = runs, sink, mapper, settings
        self.batch_size = batch_size or settings.batch_size
        self.distributor = distributor or default_distributor(settings)
        self.cancelled = cancelled or threading.Event()

    def run(self, request: IngestRequest, progress: Progress | None = None, total: int | None = None,
            on_report: Callable[[IngestReport], None] | None = None) -> IngestReport:
        """Ingest one catalogue; ``progress("ingest", rows done, total)`` as rows are written, and
        ``on_report`` receives the live report once the run is recorded (a job's status shows it)."""
        label = request.label or str(request.source)
        rows = read_catalogue(request.source, id_column=request.id_column, image_column=request.image_column,
                              limits=self.settings.metadata_limits(), paths=self.mapper.limits.paths)  # raises before anything is written
        report = IngestReport(run_id=self.runs.start_run(label), source=label)
        if on_report is not None:
            on_report(report)
        started, last_progress = time.perf_counter(), 0.0
        seen_ids: set[str] = set()
        writer = BatchWriter(self.sink, report)
        partitions = read_partitions(rows, self.runs.fingerprints, report, seen_ids, self.batch_size, self.settings.max_downloads)
        try:
            for mapped in self.distributor.map(self.mapper, partitions):
                if self.cancelled.is_set():
                    raise IngestCancelled("the ingest was stopped because the process is shutting down")
                if mapped is not None:
                    writer.write(mapped)
                now = time.perf_counter()
                report.seconds = now - started
                if progress and now - last_progress > 0.2:
                    progress("ingest", report.done, total)
                    last_progress = now
            if request.prune:
                self._prune(sorted(self.runs.all_ids() - seen_ids), request.force_prune, report)
            report.status = "completed"
        except BaseException:
            report.status = "interrupted"
            raise
        finally:
            report.seconds = time.perf_counter() - started
            self._finish(report)
            if progress:
                progress("ingest", report.done, total)
        return report

    def _prune(self, stale: list[str], force: bool, report: IngestReport) -> None:
        """Delete products the catalogue no longer lists, unless that is more than the allowed
        share of the store (a truncated or wrong file must not wipe the catalogue)."""
        existing = self.runs.count()
        share = self.settings.max_prune_fraction
        if stale and len(stale) > share * existing and not force:
            report.prune_refused = (f"prune refused: it would delete {len(stale)} of {existing} products, more than "
                                    f"{share:.0%}; check the catalogue, or force it (--force-prune, \"force_prune\": true)")
            return
        report.deleted = len(self.sink.delete(stale)) if stale else 0

    def _finish(self, report: IngestReport) -> None:
        """Record the run and its skip list; a full disk here loses only the report, never products."""
        entries = [(s.item, s.source, s.kind, s.reason) for s in report.skipped]
        try:
            if entries:
                report.skip_report = write_skip_report(self.runs.directory / "reports", report.run_id, entries)
                self.runs.record_skipped(report.run_id, entries)
            self.runs.update_run(report.run_id, report.counts(), status=report.status, skip_report=report.skip_report)
        except (OSError, StoreError) as exc:
            log.error("ingest run %s: its report could not be saved (%s)", report.run_id, exc)
