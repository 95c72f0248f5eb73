"""The read stage: catalogue rows, annotated with what the store already has, in partitions.

The catalogue is parsed once, streaming.  Rows are grouped into partitions of one kind: local
files, or image URLs (which wait on other people's servers), so a distributor can run them on
separate lanes and a slow image host never holds back rows whose photos are on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from ..images import ImageError, is_url
from .catalogue import CatalogueRow, RowError
from .report import IngestReport, Skipped

LOCAL, REMOTE = "local", "remote"
Fingerprints = Callable[[list[str]], dict[str, tuple["str | None", str, bool]]]


@dataclass
class Job:
    """A catalogue row on its way through the pipeline (picklable: it crosses process boundaries)."""

    row: CatalogueRow
    known_hash: str | None = None
    known_metadata: str | None = None
    has_vector: bool = False
    image_hash: str | None = None
    pixels: np.ndarray | None = None
    vector: np.ndarray | None = None
    kept: dict[str, np.ndarray] = field(default_factory=dict)  # other models' vectors of the picture (Encoder.embed_keeping)
    thumbnail: bytes | None = None
    error: ImageError | None = None

    @property
    def is_new(self) -> bool:
        return self.known_hash is None and not self.has_vector and self.known_metadata is None


@dataclass
class Partition:
    """Rows mapped together (one embedding batch); ``lane`` is local or remote."""

    lane: str
    jobs: list[Job] = field(default_factory=list)


def read_partitions(rows: Iterable[CatalogueRow | RowError], fingerprints: Fingerprints, report: IngestReport,
                    seen_ids: set[str], size: int, remote_size: int) -> Iterator[Partition]:
    """Partitions of ``size`` local rows or ``remote_size`` URL rows; malformed rows go to the
    report as skipped, and every id seen is added to ``seen_ids`` (for prune)."""
    pending = {LOCAL: Partition(LOCAL), REMOTE: Partition(REMOTE)}
    limits = {LOCAL: size, REMOTE: remote_size}
    chunk: list[CatalogueRow] = []

    def annotate() -> Iterator[Partition]:
        known = fingerprints([r.id for r in chunk])
        for row in chunk:
            image_hash, metadata, has_vector = known.get(row.id, (None, None, False))
            lane = REMOTE if is_url(row.image) else LOCAL
            pending[lane].jobs.append(Job(row, image_hash, metadata, has_vector))
            if len(pending[lane].jobs) >= limits[lane]:
                yield pending[lane]
                pending[lane] = Partition(lane)
        chunk.clear()

    for item in rows:
        report.seen += 1
        if isinstance(item, RowError):
            report.skipped.append(Skipped(item.item, item.source, item.kind, item.reason))
            continue
        seen_ids.add(item.id)
        chunk.append(item)
        if len(chunk) >= 256:  # one store lookup per 256 rows
            yield from annotate()
    yield from annotate()
    for lane in (LOCAL, REMOTE):
        if pending[lane].jobs:
            yield pending[lane]
