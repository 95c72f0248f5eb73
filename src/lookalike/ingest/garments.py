"""Garments of the catalogue's own photos: outfit shots get one vector per garment.

A product photographed on a model is, to a whole-image embedding, partly a pose and a face;
searching a street garment against the garment in the product photo finds it by what is sold.
For every product whose photo shows a person, each garment the finder sees is cropped and
embedded with the serving model and stored under the region key of its group
(``embeddings(model, region=group, product)``, with the image hash it came from); a photo
without a person is recorded as looked at, so the next run skips it.  A new picture of a
product drops its old regions (the store does that on write), and the next run finds the new
ones; a different finder or serving model starts over.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits

from ..common.progress import Progress
from ..detection import DetectorError
from ..images import ImageError, ImageLimits, load_source_or_thumbnail
from ..models.encoders import Encoder
from ..models.encoders.base import SEARCHES
from ..search.look import PERSON_AREA, GarmentFinder, LookUnavailable, crop_box, main_garment

BATCH = 32
# Photos looked at side by side, one per core (at least two), each marked as a photo search in
# progress so that the finder runs it on one thread beside the other (see RunSlots): a lone
# photo's run on both threads is not twice as quick.  On 2 cores, 400 Myntra photos, three
# alternating rounds: 45.6-55.9 photos/s, against 39.6-44.4 unmarked (each look took both threads
# whenever the other was between runs) and 34.7-42.2 one photo at a time.
LOOKERS = max(2, min(8, os.cpu_count() or 1))
DETECTOR_META = "garments_detector"
VERSION_META = "garments_version"


@dataclass
class GarmentsOutcome:
    products: int = 0
    looked_at: int = 0
    with_person: int = 0
    garments: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (rowid, reason)

    def to_dict(self) -> dict[str, Any]:
        return {"products": self.products, "looked_at": self.looked_at, "with_person": self.with_person,
                "garments": self.garments, "skipped": len(self.skipped), "skipped_examples": self.skipped[:20]}


def find_catalogue_garments(store: Any, limits: ImageLimits, encoder: Encoder, finder: GarmentFinder | None,
                            progress: Progress | None = None, stop: threading.Event | None = None) -> GarmentsOutcome:
    """Find and embed the garments of every product photo not looked at yet with this finder
    and model; one transaction per batch, so an interrupted run keeps what it finished.

    BLAS runs on one thread meanwhile: the finder's head is many small products that gain
    nothing from a second thread, and two BLAS threads next to ONNX Runtime's pool collapse
    when anything else wants the cores (40 photos: 10.3 s with two, 4.5 s with one, while
    another process was busy)."""
    with threadpool_limits(1, user_api="blas"):
        return _find_garments(store, limits, encoder, finder, progress, stop)


def garments_after_ingest(store: Any, limits: ImageLimits, encoder: Encoder, finder: Callable[[], GarmentFinder | None],
                          progress: Progress | None = None, stop: threading.Event | None = None) -> dict[str, Any] | None:
    """The garments stage at the end of an ingest: only photos not looked at yet are read.  The
    products are already committed, so a finder that cannot be loaded is reported in the
    ingest's report, never costs the ingest."""
    if stop is not None and stop.is_set():
        return None
    try:
        return find_catalogue_garments(store, limits, encoder, finder(), progress, stop).to_dict()
    except (LookUnavailable, DetectorError, OSError) as exc:
        return {"error": str(exc)}


def _find_garments(store: Any, limits: ImageLimits, encoder: Encoder, finder: GarmentFinder | None,
                   progress: Progress | None, stop: threading.Event | None) -> GarmentsOutcome:
    if finder is None:
        raise LookUnavailable("no garment finder: this store's setting 'detector' is 'none'")
    model = encoder.identity
    key = f"{DETECTOR_META}:{model}"
    if store.get_meta(key) != finder.identity:  # another finder sees other garments: start over
        store.drop_garments(model)
        store.set_meta(key, finder.identity)
    done = store.garment_hashes(model)
    sources = store.vector_sources()
    todo = [(rowid, image_hash, source) for rowid, image_hash, source in sources if rowid not in done or done[rowid] != image_hash]
    outcome = GarmentsOutcome(products=len(sources))
    with ThreadPoolExecutor(LOOKERS, thread_name_prefix="garments") as pool:
        for start in range(0, len(todo), BATCH):
            if stop is not None and stop.is_set():
                break
            batch = todo[start:start + BATCH]
            thumbnails = store.thumbnails([rowid for rowid, _, _ in batch])
            looks = list(pool.map(partial(_look_at, thumbnails=thumbnails, limits=limits, finder=finder), batch))
            outcome.skipped += [(str(rowid), found) for rowid, _, found in looks if isinstance(found, str)]
            entries = _embed_crops([(rowid, image_hash, found) for rowid, image_hash, found in looks if not isinstance(found, str)], encoder)
            store.put_garments(model, entries)
            outcome.looked_at += len(entries)
            outcome.with_person += sum(1 for e in entries if e[2])
            outcome.garments += sum(len(e[2]) for e in entries)
            store.set_meta(VERSION_META, str(int(store.get_meta(VERSION_META) or 0) + 1))  # searchers reload regions
            if progress:
                progress("catalogue garments", min(start + BATCH, len(todo)), len(todo))
    return outcome


def _look_at(item: tuple[int, str, str | None], thumbnails: dict[int, bytes], limits: ImageLimits,
             finder: GarmentFinder) -> tuple[int, str, dict[str, Image.Image] | str]:
    """(rowid, image hash, its garments' crops or why its photo cannot be read)."""
    rowid, image_hash, source = item
    with SEARCHES.mark():  # lookers side by side: each finder run on one thread (see LOOKERS)
        try:
            picture, _ = load_source_or_thumbnail(source, thumbnails.get(rowid), limits, None, f"product with rowid {rowid}")
        except ImageError as exc:
            return rowid, image_hash, str(exc)
        return rowid, image_hash, _garment_crops(picture, finder)


def _embed_crops(looks: list[tuple[int, str, dict[str, Image.Image]]], encoder: Encoder) -> list[tuple[int, str, dict[str, np.ndarray]]]:
    """Every crop of a batch of looks embedded in one model run (a batch runs on every core; one
    small run per photo would queue behind the looks and leave the model's threads spinning)."""
    crops = [crop for _, _, found in looks for crop in found.values()]
    vectors = iter(encoder.encode(crops))
    return [(rowid, image_hash, {group: next(vectors) for group in found}) for rowid, image_hash, found in looks]


def _garment_crops(picture: Image.Image, finder: GarmentFinder) -> dict[str, Image.Image]:
    """One crop per garment group of a photo of a person.  A photo is first glanced at (a
    quarter of a full look's cost); only one where the glance sees a quarter of the skin and
    hair that makes a person gets the full look (on 240 catalogue and phone photos: 2 of 60
    people missed against 7 with the glance's own verdict, half the full looks spared)."""
    if max((r.person_area for r in finder.glance(picture)), default=0.0) < PERSON_AREA / 4:
        return {}
    found = finder.detect(picture)
    if main_garment(found) is None:
        return {}
    best: dict[str, Any] = {}
    for garment in found:  # one region per group: the most prominent
        if garment.group not in best or garment.area * garment.confidence > best[garment.group].area * best[garment.group].confidence:
            best[garment.group] = garment
    return {group: crop_box(picture, garment.box) for group, garment in best.items()}
