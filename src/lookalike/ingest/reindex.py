"""Re-embedding a store's catalogue with another encoder, resumably, while search goes on.

Vectors for the target encoder are *staged* in the store's ``embeddings`` table (under its model) in
batches (one transaction each), so a killed run resumes where it stopped.  For each product
the cheapest source wins:

1. a vector already staged or kept for the target encoder, for the same image (resume, or
   switching back to an earlier model);
2. for a fine-tuned model, its backbones' vectors already in the store (the serving vectors
   or kept ones): the head is applied to them, no image is read;
3. otherwise the image is read again (its source, or the stored thumbnail when the source is
   gone) and embedded.

Re-index runs on the ingest pipeline's shape: the driver reads products in partitions and
settles what needs no image (1 and 2); a :class:`ReembedderFactory` (picklable, like the
ingest mapper's) builds a worker per thread or process that reads and embeds the rest; the
driver stages each partition in one transaction.  The same distributors run it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..common.progress import Progress
from ..images import ImageLimits, is_url, load_source_or_thumbnail
from ..models.encoders import Encoder, FineTunedEncoder
from ..search.live import ServingIndex
from ..storage import ProductStore
from ..vectors import VectorBackend
from .distributors import Distributor, ThreadDistributor
from .reader import LOCAL, REMOTE

SourceRow = tuple[int, "str | None", "str | None"]  # rowid, image hash, image source


@dataclass
class ReembedBatch:
    """Products re-embedded together (picklable): ``ready`` vectors settled by the driver,
    ``todo`` rows (rowid, image hash, source, stored thumbnail) a worker reads and embeds."""

    lane: str
    ready: list[tuple[int, str | None, np.ndarray]] = field(default_factory=list)
    todo: list[tuple[int, str | None, str | None, bytes | None]] = field(default_factory=list)
    kept: dict[str, list[tuple[int, str | None, np.ndarray]]] = field(default_factory=dict)  # other models' vectors found on the way
    from_images: int = 0
    from_thumbnails: int = 0
    size: int = 0


@dataclass(frozen=True)
class ReembedderFactory:
    """What a worker needs to re-embed products: the target model and the image limits."""

    encoder: Encoder
    limits: ImageLimits

    def __call__(self) -> Reembedder:
        return Reembedder(self.encoder, self.limits)


class Reembedder:
    """Reads each product's picture (its source, or its thumbnail when the source is gone) and embeds it."""

    def __init__(self, encoder: Encoder, limits: ImageLimits):
        self.encoder, self.limits = encoder, limits

    def __call__(self, batch: ReembedBatch) -> ReembedBatch:
        if batch.todo:
            pixels = []
            for rowid, _, source, thumbnail in batch.todo:
                picture, from_thumbnail = load_source_or_thumbnail(source, thumbnail, self.limits, self.encoder.input_size,
                                                                   f"product with rowid {rowid}")
                batch.from_thumbnails += from_thumbnail
                batch.from_images += not from_thumbnail
                pixels.append(self.encoder.preprocess(picture))
            vectors, kept = self.encoder.embed_keeping(np.stack(pixels))
            batch.ready += [(rowid, image_hash, vector) for (rowid, image_hash, _, _), vector in zip(batch.todo, vectors)]
            for model, rows in kept.items():
                batch.kept[model] = [(rowid, image_hash, row) for (rowid, image_hash, _, _), row in zip(batch.todo, rows)]
            batch.todo = []  # thumbnails are not sent back
        return batch

    def close(self) -> None:
        """Nothing to release (the distributor's worker protocol asks for it)."""


class Reindexer:
    def __init__(self, store: ProductStore, limits: ImageLimits, target: Encoder, batch_size: int = 64,
                 distributor: Distributor | None = None):
        self.store, self.limits = store, limits
        self.target = target
        self.batch_size = batch_size
        self.distributor = distributor or ThreadDistributor(2, 4)
        self.start_generation = self.store.generation
        self.counts = {"reused": 0, "from_backbone_vectors": 0, "from_images": 0, "from_thumbnails": 0}

    def stage(self, progress: Progress | None = None) -> dict[str, Any]:
        """Stage a target vector for every product that has a vector now."""
        rows = self.store.vector_sources()
        self._run(rows, reuse=True, progress=progress)
        if progress and not rows:
            progress("re-embedding", 0, 0)
        return dict(self.counts, products=len(rows))

    def catch_up(self) -> int:
        """Stage products added or changed since staging began (call under the serving index's lock)."""
        rows = self.store.vector_sources()
        changed = {int(r) for rowids, _, _ in self.store.iter_vectors(since_gen=self.start_generation) for r in rowids}
        staged = self.store.model_vectors(self.target.identity, [r for r, _, _ in rows])
        todo = [row for row in rows if row[0] in changed or row[0] not in staged or staged[row[0]][0] != row[1]]
        self._run(todo, reuse=False)
        return len(todo)

    def _run(self, rows: list[SourceRow], reuse: bool, progress: Progress | None = None) -> None:
        """read (and settle on the driver) → re-embed (on the distributor) → stage."""
        done = 0
        batches = (self._settle(rows[start : start + self.batch_size], reuse) for start in range(0, len(rows), self.batch_size))
        for batch in self.distributor.map(ReembedderFactory(self.target, self.limits), batches):
            if batch is None:
                continue
            self.store.stage_vectors(self.target.identity, batch.ready)
            for model, entries in batch.kept.items():
                if model != self.store.serving_model:  # the serving model's vectors of these pictures are stored already
                    self.store.stage_vectors(model, entries)
            self.counts["from_images"] += batch.from_images
            self.counts["from_thumbnails"] += batch.from_thumbnails
            done += batch.size
            if progress:
                progress("re-embedding", done, len(rows))

    # ---- the driver's part of one batch ------------------------------------------------------------------
    def _settle(self, rows: list[SourceRow], reuse: bool) -> ReembedBatch:
        """Vectors that need no image (kept for the same picture, or a head over kept backbone
        vectors); the rest, with their thumbnails, left for a worker."""
        rowids = [r for r, _, _ in rows]
        hashes = {r: h for r, h, _ in rows}
        vectors: dict[int, np.ndarray] = {}
        if reuse:
            for rowid, (h, vector) in self.store.model_vectors(self.target.identity, rowids).items():
                if h == hashes[rowid] and len(vector) == self.target.dim:
                    vectors[rowid] = vector
            self.counts["reused"] += len(vectors)
        target = self.target
        missing = [r for r in rowids if r not in vectors]
        if missing and isinstance(target, FineTunedEncoder):
            from_backbones = self._from_backbone_vectors(target, missing, hashes)
            vectors.update(from_backbones)
            self.counts["from_backbone_vectors"] += len(from_backbones)
        todo = [row for row in rows if row[0] not in vectors]
        thumbnails = self.store.thumbnails([r for r, _, _ in todo]) if todo else {}
        return ReembedBatch(lane=REMOTE if any(source and is_url(source) for _, _, source in todo) else LOCAL,
                            ready=[(r, hashes[r], vectors[r]) for r in rowids if r in vectors],
                            todo=[(r, h, source, thumbnails.get(r)) for r, h, source in todo], size=len(rows))

    def _from_backbone_vectors(self, target: FineTunedEncoder, rowids: list[int], hashes: dict[int, str | None]) -> dict[int, np.ndarray]:
        parts = []
        for backbone in target.backbones:
            found = self.store.model_vectors(backbone.identity, rowids)
            parts.append({r: v for r, (h, v) in found.items() if h == hashes[r] and len(v) == backbone.dim})
        usable = [r for r in rowids if all(r in part for part in parts)]
        if not usable:
            return {}
        features = np.stack([np.concatenate([part[r] for part in parts]) for r in usable])
        return dict(zip(usable, target.model.head(features)))


def reindex_store(store: ProductStore, limits: ImageLimits, serving: ServingIndex, target: Encoder, backend: VectorBackend,
                  progress: Progress | None, batch_size: int, switch: Callable[[ServingIndex], None],
                  distributor: Distributor | None = None) -> dict[str, Any]:
    """Stage ``target``'s vectors for every product, then switch the store and the serving index
    to it.  The switch happens under the serving index's lock: products changed meanwhile are
    caught up, the store switches in one transaction, and ``switch`` installs the new index."""
    reindexer = Reindexer(store, limits, target, batch_size, distributor)
    counts = reindexer.stage(progress)
    with serving.lock:
        counts["caught_up"] = reindexer.catch_up()
        previous = serving.encoder.identity
        store.switch_encoder(target.identity, target.dim)
        fresh = ServingIndex(store, target, backend, serving.snapshot_dir, serving.columns.max_columns)
        fresh.load(restore=False)  # saves its snapshot once, replacing (or removing) the previous model's
        switch(fresh)
    return {"model": target.identity, "previous": previous, "switched": True, **counts}
