"""The write stage: mapped partitions into the store, one transaction per partition.

Writes are idempotent (an upsert by product id), so a partition retried after a crash or by
a distributor gives the same store.  Progress is counted here, where rows are final.
"""

from __future__ import annotations

from typing import Iterable, Protocol

from ..images import display_name
from ..storage import ProductWrite, canonical_json
from .reader import Job, Partition
from .report import IngestReport, Skipped


class ProductSink(Protocol):
    """Where products go (:class:`lookalike.search.ServingIndex`: the store, then the live index)."""

    def write(self, writes: list[ProductWrite]) -> list[int]: ...

    def delete(self, product_ids: Iterable[str]) -> list[int]: ...


class BatchWriter:
    def __init__(self, sink: ProductSink, report: IngestReport):
        self.sink, self.report = sink, report

    def write(self, partition: Partition) -> None:
        embedded, metadata_only = [], []
        for job in partition.jobs:
            if job.error is not None:
                self.report.skipped.append(Skipped(job.row.id, display_name(job.row.image), job.error.kind, job.error.message))
            elif job.vector is not None:
                embedded.append(job)
            elif canonical_json(job.row.metadata) == job.known_metadata:
                self.report.unchanged += 1
            else:
                metadata_only.append(job)
        if metadata_only:
            self.sink.write([_write(job, with_image=False) for job in metadata_only])
            self.report.metadata_updated += len(metadata_only)
        if embedded:
            self.sink.write([_write(job, with_image=True) for job in embedded])
            for job in embedded:
                if job.is_new:
                    self.report.added += 1
                else:
                    self.report.updated += 1


def _write(job: Job, with_image: bool) -> ProductWrite:
    image = display_name(job.row.image)
    if not with_image:
        return ProductWrite(job.row.id, image, job.image_hash, job.row.metadata)
    return ProductWrite(job.row.id, image, job.image_hash, job.row.metadata, job.vector, job.thumbnail, job.kept)
