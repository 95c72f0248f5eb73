"""Re-embedding a store's catalogue with another encoder, resumably, while search goes on.

Vectors for the target encoder are *staged* in the store's ``model_vectors`` table in
batches (one transaction each), so a killed run resumes where it stopped.  For each product
the cheapest source wins:

1. a vector already staged or kept for the target encoder, for the same image (resume, or
   switching back to an earlier model);
2. for a fine-tuned model, its backbones' vectors already in the store (the serving vectors
   or kept ones): the head is applied to them, no image is read;
3. otherwise the image is read again (its source, or the stored thumbnail when the source is
   gone) and embedded.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..common.progress import Progress
from ..images import ImageLimits, load_source_or_thumbnail
from ..models.encoders import Encoder, FineTunedEncoder
from ..search.live import ServingIndex
from ..storage import ProductStore
from ..vectors import VectorBackend


class Reindexer:
    def __init__(self, store: ProductStore, limits: ImageLimits, target: Encoder, batch_size: int = 64):
        self.store, self.limits = store, limits
        self.target = target
        self.batch_size = batch_size
        self.start_generation = self.store.generation
        self.counts = {"reused": 0, "from_backbone_vectors": 0, "from_images": 0, "from_thumbnails": 0}

    def stage(self, progress: Progress | None = None) -> dict[str, Any]:
        """Stage a target vector for every product that has a vector now."""
        rows = self.store.vector_sources()
        for start in range(0, len(rows), self.batch_size):
            self._stage_rows(rows[start : start + self.batch_size])
            if progress:
                progress("re-embedding", min(start + self.batch_size, len(rows)), len(rows))
        if progress and not rows:
            progress("re-embedding", 0, 0)
        return dict(self.counts, products=len(rows))

    def catch_up(self) -> int:
        """Stage products added or changed since staging began (call under the engine's write lock)."""
        rows = self.store.vector_sources()
        changed = {int(r) for rowids, _, _ in self.store.iter_vectors(since_gen=self.start_generation) for r in rowids}
        staged = self.store.model_vectors(self.target.identity, [r for r, _, _ in rows])
        todo = [row for row in rows if row[0] in changed or row[0] not in staged or staged[row[0]][0] != row[1]]
        for start in range(0, len(todo), self.batch_size):
            self._stage_rows(todo[start : start + self.batch_size], reuse=False)
        return len(todo)

    # ---- one batch ----------------------------------------------------------------------------------
    def _stage_rows(self, rows: list[tuple[int, str | None, str | None]], reuse: bool = True) -> None:
        rowids = [r for r, _, _ in rows]
        hashes = {r: h for r, h, _ in rows}
        vectors: dict[int, np.ndarray] = {}
        if reuse:
            for rowid, (h, vector) in self.store.model_vectors(self.target.identity, rowids).items():
                if h == hashes[rowid] and len(vector) == self.target.dim:
                    vectors[rowid] = vector
            self.counts["reused"] += len(vectors)
        missing = [r for r in rowids if r not in vectors]
        if missing and isinstance(self.target, FineTunedEncoder):
            from_backbones = self._from_backbone_vectors(missing, hashes)
            vectors.update(from_backbones)
            self.counts["from_backbone_vectors"] += len(from_backbones)
        missing = [row for row in rows if row[0] not in vectors]
        if missing:
            vectors.update(self._from_images(missing))
        fresh = [(r, hashes[r], vectors[r]) for r in rowids if r in vectors]
        self.store.stage_vectors(self.target.identity, fresh)

    def _from_backbone_vectors(self, rowids: list[int], hashes: dict[int, str | None]) -> dict[int, np.ndarray]:
        parts = []
        for backbone in self.target.backbones:
            found = self.store.model_vectors(backbone.identity, rowids)
            parts.append({r: v for r, (h, v) in found.items() if h == hashes[r] and len(v) == backbone.dim})
        usable = [r for r in rowids if all(r in part for part in parts)]
        if not usable:
            return {}
        features = np.stack([np.concatenate([part[r] for part in parts]) for r in usable])
        return dict(zip(usable, self.target.model.head(features)))

    def _from_images(self, rows: list[tuple[int, str | None, str | None]]) -> dict[int, np.ndarray]:
        pixels, rowids = [], []
        thumbnails = self.store.thumbnails([r for r, _, _ in rows])
        for rowid, _, source in rows:
            picture, from_thumbnail = load_source_or_thumbnail(source, thumbnails.get(rowid), self.limits,
                                                               self.target.input_size, f"product with rowid {rowid}")
            self.counts["from_thumbnails" if from_thumbnail else "from_images"] += 1
            pixels.append(self.target.preprocess(picture))
            rowids.append(rowid)
        return dict(zip(rowids, self.target.embed(np.stack(pixels))))


def reindex_store(store: ProductStore, limits: ImageLimits, serving: ServingIndex, target: Encoder, backend: VectorBackend,
                  progress: Progress | None, batch_size: int, switch: Callable[[ServingIndex], None]) -> dict[str, Any]:
    """Stage ``target``'s vectors for every product, then switch the store and the serving index
    to it.  The switch happens under the serving index's lock: products changed meanwhile are
    caught up, the store switches in one transaction, and ``switch`` installs the new index."""
    reindexer = Reindexer(store, limits, target, batch_size)
    counts = reindexer.stage(progress)
    with serving.lock:
        counts["caught_up"] = reindexer.catch_up()
        previous = serving.encoder.identity
        store.switch_encoder(target.identity, target.dim)
        fresh = ServingIndex(store, target, backend, serving.snapshot_dir, serving.columns.max_columns)
        fresh.load(restore=False)  # saves its snapshot once, replacing (or removing) the previous model's
        switch(fresh)
    return {"model": target.identity, "previous": previous, "switched": True, **counts}
