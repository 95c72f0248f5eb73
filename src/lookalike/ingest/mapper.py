"""The map stage: fetch, hash, decode, thumbnail and embed one partition of rows.

A :class:`MapperFactory` is plain, picklable configuration (the encoder pickles without its
ONNX session); each worker builds its own :class:`Mapper` from it once, which holds what
cannot cross a process boundary (an HTTP client, the model session).  That is what lets the
same stage run on threads, in a process pool, or on a cluster's workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..images import ImageError, ImageLimits, content_hash, decode, read_bytes, thumbnail_jpeg
from ..models.encoders import Encoder
from ..security.urls import Downloader
from .reader import Job, Partition


@dataclass(frozen=True)
class MapperFactory:
    """Everything a worker needs to map partitions."""

    encoder: Encoder
    limits: ImageLimits
    thumbnail_size: int
    max_downloads: int = 4

    def __call__(self) -> Mapper:
        return Mapper(self)


class Mapper:
    """Maps partitions for one worker; not thread-safe (each worker has its own)."""

    def __init__(self, factory: MapperFactory):
        self.encoder, self.limits, self.thumbnail_size = factory.encoder, factory.limits, factory.thumbnail_size
        # An ingest waits for a download slot as long as it takes, but its slots are its own:
        # a catalogue full of slow URLs cannot take the server's.
        self.downloader = Downloader(self.limits.max_bytes, self.limits.url_timeout, self.limits.allow_private_urls,
                                     factory.max_downloads, slot_wait=3600)

    def __call__(self, partition: Partition) -> Partition:
        for job in partition.jobs:
            self.load(job)
        changed = [(job, job.pixels) for job in partition.jobs if job.pixels is not None]
        if changed:
            vectors, kept = self.encoder.embed_keeping(np.stack([pixels for _, pixels in changed]))
            for i, (job, _) in enumerate(changed):
                job.vector, job.pixels = vectors[i], None  # pixels are not sent back: only what is written
                job.kept = {model: rows[i] for model, rows in kept.items()}
        return partition

    def load(self, job: Job) -> None:
        """Bytes → hash → (if the picture changed) letterboxed pixels and a thumbnail."""
        try:
            data = read_bytes(job.row.image, self.limits, self.downloader)
            job.image_hash = content_hash(data)
            if job.image_hash == job.known_hash and job.has_vector:
                return  # same picture as stored: nothing to decode or embed
            image = decode(data, self.limits, draft_size=self.encoder.input_size, name=job.row.image)
            job.pixels = self.encoder.preprocess(image)
            job.thumbnail = thumbnail_jpeg(image, self.thumbnail_size)
        except ImageError as exc:
            job.error = exc

    def close(self) -> None:
        self.downloader.close()

    def __enter__(self) -> Mapper:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
