"""Backbone features of several views of every product, computed once and cached on disk.

Running the backbone is the only expensive part of training on a CPU, so it is done once:
view 0 is the clean catalogue photo, views 1..n-1 are random street-like views
(:func:`~lookalike.training.augment.street_view`), and each is run through every backbone
(features concatenated).  The head is then trained in minutes on these arrays.  View 0 of a
product whose vector the store already holds for these backbones (computed from the same image)
is read from the store instead of run again: a quarter of the backbone work at four views.

The cache is a folder of shards (``shard-NNNNN.npz``: ids, image hashes, features), each
written atomically, so an interrupted run resumes where it stopped and a later run computes
only products that are new or whose image changed.  The folder name hashes everything that
determines the numbers (backbones, view count, augmentation version, seed).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from ..common.augment import AUGMENT_VERSION, street_view
from ..common.progress import Progress
from ..images import ImageError, ImageLimits, load_image, load_source_or_thumbnail
from ..models.encoders import Encoder

SHARD_SIZE = 256
MIN_SIDE = 8  # a crop smaller than this on a side shows nothing to learn from
PADDING = 0.1  # context kept around a box, as a share of its size (as the street-to-shop evaluation crops)
EMBED_PRODUCTS = 32  # products whose views go through a backbone in one batch (~100 images: 8 % faster than 24 on 2 cores)


class TrainingDataError(ValueError):
    """The catalogue cannot be used for training as asked (too few products, no labels, …)."""


@dataclass
class ProductImage:
    """Where to read one product's photo: its source, with the stored thumbnail as fallback;
    with ``box``, the region of the source photo to cut out first (a garment in a street photo)."""

    id: str
    image_hash: str | None
    source: str | None
    thumbnail: bytes | None
    box: tuple[float, float, float, float] | None = None
    # view 0's features when the store already holds them (its vectors of these backbones for
    # this very image): the backbone then runs on the augmented views only
    clean: np.ndarray | None = None


def view_seed(product_id: str, view: int, seed: int) -> int:
    """A seed that depends on the product, not on its position, so views survive re-ordering."""
    digest = hashlib.blake2b(f"{seed}/{product_id}/{view}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def padded_box(box: tuple[float, float, float, float], width: int, height: int, padding: float = PADDING) -> tuple[int, int, int, int] | None:
    """The box with some context, inside the photo, in whole pixels rounded as Pillow's crop
    rounds; None when it is too small to use.  Training and the street-to-shop evaluation crop
    street garments with this one rule."""
    x1, y1, x2, y2 = box
    pw, ph = (x2 - x1) * padding, (y2 - y1) * padding
    out = (round(max(0, x1 - pw)), round(max(0, y1 - ph)), round(min(width, x2 + pw)), round(min(height, y2 + ph)))
    return out if out[2] - out[0] >= MIN_SIDE and out[3] - out[1] >= MIN_SIDE else None


class ViewFeatureCache:
    """Features of ``views`` views per product through ``backbones``, shape (n, views, dim)."""

    def __init__(self, directory: Path, backbones: Sequence[Encoder], views: int, seed: int, limits: ImageLimits, loader_threads: int = 2):
        if views < 1:
            raise TrainingDataError("views must be at least 1 (the clean photo)")
        self.backbones = list(backbones)
        self.views = views
        self.seed = seed
        self.limits = limits
        self.loader_threads = max(1, loader_threads)
        key = json.dumps({"backbones": [b.identity for b in self.backbones], "views": views, "augment": AUGMENT_VERSION, "seed": seed})
        self.directory = directory / hashlib.blake2b(key.encode(), digest_size=6).hexdigest()
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "key.json").write_text(key)
        self.dim = sum(b.dim for b in self.backbones)
        self.fallbacks = 0  # products read from the stored thumbnail because the source was unreadable

    # ---- reading what is cached ---------------------------------------------------------------
    def _shards(self) -> list[Path]:
        return sorted(self.directory.glob("shard-*.npz"))

    def cached(self) -> dict[str, tuple[str | None, np.ndarray]]:
        """id -> (image hash, features) for every cached product (later shards win)."""
        found: dict[str, tuple[str | None, np.ndarray]] = {}
        for path in self._shards():
            try:
                with np.load(path, allow_pickle=False) as shard:
                    for pid, h, feats in zip(shard["ids"].tolist(), shard["hashes"].tolist(), shard["features"]):
                        found[pid] = (h or None, feats)
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)  # a damaged shard is recomputed, never trusted
        return found

    # ---- computing -------------------------------------------------------------------------------
    def _picture(self, item: ProductImage) -> Image.Image:
        if item.box is not None:
            return self._crop(item, item.box)
        picture, from_thumbnail = load_source_or_thumbnail(item.source, item.thumbnail, self.limits,
                                                           max(b.input_size for b in self.backbones) * 2, f"product {item.id!r}")
        self.fallbacks += from_thumbnail
        return picture

    def _crop(self, item: ProductImage, box: tuple[float, float, float, float]) -> Image.Image:
        picture = load_image(item.source or "", self.limits)
        region = padded_box(box, picture.width, picture.height)
        if region is None:
            raise ImageError("corrupt", f"{item.id}: the box is under {MIN_SIDE} pixels on a side inside a {picture.width}x{picture.height} photo")
        return picture.crop(region)

    def _pixels(self, item: ProductImage) -> list[list[np.ndarray]] | ImageError:
        """Per backbone, the preprocessed pixels of every view (decode and augment run in loader threads)."""
        try:
            picture = self._picture(item)
        except ImageError as exc:
            return exc
        views = [picture] + [street_view(picture, view_seed(item.id, v, self.seed)) for v in range(1, self.views)]
        if item.clean is not None:
            views = views[1:]
        return [[b.preprocess(v) for v in views] for b in self.backbones]

    def _write_shard(self, ids: list[str], hashes: list[str | None], features: np.ndarray) -> None:
        number = len(self._shards())
        while (self.directory / f"shard-{number:05d}.npz").exists():
            number += 1
        target = self.directory / f"shard-{number:05d}.npz"
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, ids=np.array(ids, dtype=str), hashes=np.array([h or "" for h in hashes], dtype=str), features=features)
        os.replace(tmp, target)

    def _embed(self, ready: list[tuple[ProductImage, list[list[np.ndarray]]]]) -> list[np.ndarray]:
        """Run each backbone once over the views of several products (bigger batches run faster);
        a product whose clean-photo features are known gets them as view 0 without a backbone run."""
        per_backbone = []
        for b, backbone in enumerate(self.backbones):
            batch = np.stack([view for _, pixels in ready for view in pixels[b]])
            out = iter(backbone.embed(batch) if len(batch) else [])
            rows = []
            for item, pixels in ready:
                computed = [next(out) for _ in pixels[b]]
                if item.clean is not None:
                    start = sum(other.dim for other in self.backbones[:b])
                    computed.insert(0, item.clean[start:start + backbone.dim])
                rows.append(np.stack(computed))
            per_backbone.append(np.stack(rows))
        return list(np.concatenate(per_backbone, axis=2))

    def compute(self, items: list[ProductImage], progress: Progress | None = None,
                stored_clean: Callable[[list[ProductImage]], dict[str, np.ndarray]] | None = None) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
        """Features for every item (cached ones are reused); returns (id -> features, skipped (id, reason)).
        ``stored_clean`` gives, for the items still to compute, the view-0 features known without a
        backbone run (id -> features)."""
        cached = self.cached()
        result = {i.id: cached[i.id][1] for i in items if i.id in cached and cached[i.id][0] == i.image_hash}
        todo = [i for i in items if i.id not in result]
        if stored_clean is not None and todo:
            known = stored_clean(todo)
            todo = [replace(i, clean=known[i.id]) if i.id in known else i for i in todo]
        skipped: list[tuple[str, str]] = []
        done = len(result)
        if progress:
            progress("view features", done, len(items))
        with ThreadPoolExecutor(self.loader_threads) as pool:
            for start in range(0, len(todo), SHARD_SIZE):
                chunk = todo[start : start + SHARD_SIZE]
                loaded: list[tuple[ProductImage, list[list[np.ndarray]]]] = []
                feats: list[np.ndarray] = []
                # pool.map decodes and augments ahead in the loader threads while the backbone runs here
                for item, pixels in zip(chunk, pool.map(self._pixels, chunk)):
                    if isinstance(pixels, ImageError):
                        skipped.append((item.id, pixels.message))
                        continue
                    loaded.append((item, pixels))
                    if len(loaded) - len(feats) == EMBED_PRODUCTS:
                        feats += self._embed(loaded[len(feats):])
                        if progress:
                            progress("view features", done + len(feats), len(items))
                feats += self._embed(loaded[len(feats):]) if len(loaded) > len(feats) else []
                done += len(feats)
                if loaded:
                    ids = [i.id for i, _ in loaded]
                    block = np.stack(feats).astype(np.float16)
                    self._write_shard(ids, [i.image_hash for i, _ in loaded], block)
                    result.update(zip(ids, block))
        if progress:
            progress("view features", len(items), len(items))
        return result, skipped
