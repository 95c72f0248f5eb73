"""What text search reads about every product, kept in step with the store.

Per product (indexed by rowid): its photo in the bridge's shared space, and its title's sentence
vector when it has a title.  Title vectors are cached in the store (``embeddings`` under the
sentence model's name, region ``title``, keyed by a hash of the title), so a restart or an
unchanged title never re-encodes; a refresh reads only products written since the last one.
"""

from __future__ import annotations

import hashlib
import io
import math
import threading
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
from PIL import Image

from ..common.colour import COLOUR_FEATURES, colour_features
from .bridge import TextImageBridge
from .encoder import SentenceEncoder
from .matrix import Int8Rows

TITLE_REGION = "title"
ENCODE_BATCH = 256
COLOUR_MODEL, COLOUR_REGION = "colour:lab-v1", "colour"  # the garment-pixel colour descriptor, cached per photo
# Pseudo-relevance feedback (see TextGallery.image_scores), chosen on the development split of
# benchmarks/text_search.py: how many titled examples, how sharply their title cosines weigh them,
# and the examples' weight beside the bridge's reading of the words (0: the bridge alone).
FEEDBACK_EXAMPLES = 20
FEEDBACK_TEMPERATURE = 0.05
FEEDBACK_WEIGHT = 1.0

# The two big matrices (title sentence vectors, photos in the shared space) are int8 with a scale
# per row, scored by ONNX Runtime's integer kernel (see .matrix).  With MiniLM on ONNX Runtime too,
# text p50 at 100K products 32.7-37.9 -> 20.7-27.9 ms, same store, alternating runs, 2026-12-06
# (benchmarks/text_latency.py).


class TextSource(Protocol):
    """The store calls the gallery needs (:class:`lookalike.storage.ProductStore`)."""

    read_only: bool

    @property
    def generation(self) -> int: ...

    def iter_vectors(self, since_gen: int = -1, chunk: int = 20_000) -> Iterator[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]]: ...

    def model_vectors(self, model: str, rowids: list[int], region: str = "") -> dict[int, tuple[str | None, np.ndarray]]: ...

    def stage_vectors(self, model: str, entries: list[tuple[int, str | None, np.ndarray]], region: str = "") -> None: ...

    def tags_for(self, rowids: list[int]) -> dict[int, dict[str, dict[str, Any]]]: ...

    def thumbnails(self, rowids: Iterable[int]) -> dict[int, bytes]: ...


def title_hash(title: str) -> str:
    return hashlib.sha1(title.encode("utf-8")).hexdigest()[:16]


def title_model(encoder: SentenceEncoder) -> str:
    return f"text:{encoder.name}"


def tag_pairs(tag: Any) -> list[tuple[str, float]]:
    """(value in lower case, probability) a stored tag gives, likeliest first: a tag's value and its
    runners-up, or a below-threshold entry's candidates.  Malformed entries give nothing."""
    if not isinstance(tag, dict):
        return []
    if tag.get("value") is not None:
        raw = [(tag["value"], tag.get("confidence", 0.0)), *(tag.get("alternatives") or [])]
    else:
        raw = tag.get("candidates") or []
    pairs = []
    for pair in raw if isinstance(raw, list) else []:
        if isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], (int, float)) \
                and math.isfinite(pair[1]):
            pairs.append((pair[0].strip().lower(), max(0.0, min(1.0, float(pair[1])))))
    return pairs


class TextGallery:
    def __init__(self, store: TextSource, sentences: Callable[[], SentenceEncoder], bridge: TextImageBridge | None, text_columns: list[str],
                 keep_colours: bool = False):
        self.store, self._sentences, self.bridge, self.text_columns = store, sentences, bridge, text_columns
        self.keep_colours = keep_colours  # training keeps every photo's colour descriptor; serving only needs them to place photos
        self.colours = np.zeros((0, COLOUR_FEATURES), np.float32)
        self.generation = -1
        self.capacity = 0
        self.joint = Int8Rows(bridge.image_weights.shape[1] if bridge else 0)  # per rowid: photo in the shared space
        self.titles = Int8Rows(0)  # per rowid: title sentence vector (zeros: no title); its size is the encoder's, known on first use
        self.has_title = np.zeros(0, bool)
        # predicted tags as probabilities: tag name -> value (lower case) -> per-rowid probability (the
        # tag's value and its runners-up), so a product whose colour is uncertain still counts a little
        self.tag_probabilities: dict[str, dict[str, np.ndarray]] = {}
        # tag name -> value -> per rowid: the value is the product's likeliest, below the tagger's
        # threshold (no tag is shown; text search still takes it as the product's guess)
        self.tag_guesses: dict[str, dict[str, np.ndarray]] = {}
        self.lock = threading.Lock()

    def title_of(self, metadata: dict[str, Any]) -> str:
        return " . ".join(str(metadata[c]).strip() for c in self.text_columns if metadata.get(c) not in (None, ""))[:2000]

    def refresh(self, progress: Callable[[int], None] | None = None) -> int:
        """Catch up with products written since the last refresh; returns how many were read."""
        with self.lock:
            generation = self.store.generation
            if generation == self.generation:
                return 0
            seen = 0
            for rowids, vectors, metadata in self.store.iter_vectors(since_gen=self.generation):
                self._grow(int(rowids.max()) + 1)
                colours = self._colours(rowids, vectors) if self.keep_colours or (self.bridge and self.bridge.uses_colour) else None
                if self.keep_colours and colours is not None:
                    self.colours[rowids] = colours
                if self.bridge is not None:
                    self.joint.set(rowids, self.bridge.image_side(vectors, colours))
                if self.text_columns:
                    self._titles(rowids.tolist(), [self.title_of(m) for m in metadata])
                self._tags(rowids)
                seen += len(rowids)
                if progress:
                    progress(seen)
            self.generation = generation
            return seen

    def _grow(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        capacity = max(needed, int(self.capacity * 1.5) + 1024)
        extra = capacity - self.capacity
        self.joint.grow(capacity)
        if not self.titles.dim and self.text_columns:
            self.titles = Int8Rows(self._sentences().dim, self.capacity)
        self.titles.grow(capacity)
        self.has_title = np.concatenate([self.has_title, np.zeros(extra, bool)])
        if self.keep_colours:
            self.colours = np.concatenate([self.colours, np.zeros((extra, COLOUR_FEATURES), np.float32)])
        for values in (*self.tag_probabilities.values(), *self.tag_guesses.values()):
            for key, per_row in values.items():
                values[key] = np.concatenate([per_row, np.zeros(extra, per_row.dtype)])
        self.capacity = capacity

    def _colours(self, rowids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Colour descriptors of the photos (from the stored thumbnails), cached in the store under a
        hash of the product's vector, which changes exactly when its photo does."""
        keys = [hashlib.sha1(v.tobytes()).hexdigest()[:16] for v in vectors]
        cached = self.store.model_vectors(COLOUR_MODEL, rowids.tolist(), COLOUR_REGION)
        out = np.zeros((len(rowids), COLOUR_FEATURES), np.float32)
        missing = []
        for i, (rowid, key) in enumerate(zip(rowids.tolist(), keys)):
            hit = cached.get(rowid)
            if hit is not None and hit[0] == key and len(hit[1]) == COLOUR_FEATURES:
                out[i] = hit[1]
            else:
                missing.append(i)
        thumbnails = self.store.thumbnails([int(rowids[i]) for i in missing]) if missing else {}
        for i in missing:
            data = thumbnails.get(int(rowids[i]))
            if data:  # a product without a thumbnail keeps a neutral (zero) descriptor
                with Image.open(io.BytesIO(data)) as picture:
                    out[i] = colour_features(picture.convert("RGB"))
        if missing and not self.store.read_only:
            self.store.stage_vectors(COLOUR_MODEL, [(int(rowids[i]), keys[i], out[i]) for i in missing], COLOUR_REGION)
        return out

    def _tags(self, rowids: np.ndarray) -> None:
        for values in (*self.tag_probabilities.values(), *self.tag_guesses.values()):
            for per_row in values.values():
                per_row[rowids] = 0
        for rowid, tags in self.store.tags_for(rowids.tolist()).items():
            for name, tag in tags.items():
                pairs = tag_pairs(tag)
                for value, probability in pairs:
                    self._per_row(self.tag_probabilities, str(name), value, np.float16)[rowid] = probability
                if pairs and tag.get("value") is None:  # below the threshold: its likeliest value is its guess
                    self._per_row(self.tag_guesses, str(name), pairs[0][0], np.bool_)[rowid] = True

    def _per_row(self, table: dict[str, dict[str, np.ndarray]], name: str, value: str, dtype: Any) -> np.ndarray:
        values = table.setdefault(name, {})
        if value not in values:
            values[value] = np.zeros(self.capacity, dtype)
        return values[value]

    def _titles(self, rowids: list[int], titles: list[str]) -> None:
        present = [(r, t) for r, t in zip(rowids, titles) if t]
        absent = [r for r, t in zip(rowids, titles) if not t]
        self.has_title[absent] = False
        if not present:
            return
        encoder = self._sentences()
        model = title_model(encoder)
        cached = self.store.model_vectors(model, [r for r, _ in present], TITLE_REGION)
        missing = [(r, t) for r, t in present if cached.get(r, (None,))[0] != title_hash(t)]
        for start in range(0, len(missing), ENCODE_BATCH):
            batch = missing[start:start + ENCODE_BATCH]
            vectors = encoder.encode([t for _, t in batch])
            for (rowid, title), vector in zip(batch, vectors):
                cached[rowid] = (title_hash(title), vector)
            if not self.store.read_only:
                self.store.stage_vectors(model, [(r, title_hash(t), v) for (r, t), v in zip(batch, vectors)], TITLE_REGION)
        rows = [rowid for rowid, _ in present]
        self.titles.set(rows, np.stack([cached[rowid][1] for rowid in rows]))
        self.has_title[rows] = True

    def title_vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored title sentence vectors of ``rows`` as float32 (zeros where there is no title)."""
        return self.titles.get(rows)

    def scores(self, text_vector: np.ndarray, rows: np.ndarray, examples: np.ndarray | None = None,
               text: str = "") -> tuple[np.ndarray | None, np.ndarray]:
        """(image scores or None, title scores) of the query for ``rows``.  ``examples``: rowids of
        titled products whose photos may lend the words an example (see :meth:`image_scores`);
        ``text``: the words ``text_vector`` was made from (a bridge may read them too)."""
        every_title = self.titles.scores(text_vector) if self.titles.dim else np.zeros(self.capacity, np.float32)
        title = np.where(self.has_title[rows], every_title[rows], np.nan).astype(np.float32)
        return self.image_scores(text_vector, rows, examples, every_title, text), title

    def image_scores(self, text_vector: np.ndarray, rows: np.ndarray, examples: np.ndarray | None = None,
                     every_title: np.ndarray | None = None, text: str = "") -> np.ndarray | None:
        """Cosine, in the bridge's shared space, of the query with each row's photo (None without a bridge).

        With ``examples`` and the query's cosine with every title, the query also leans toward the
        photos of the ``FEEDBACK_EXAMPLES`` example products whose titles read most like it
        (pseudo-relevance feedback through the shop's own titles): a brand, fit or fabric word
        that the linear bridge cannot see in a photo is seen in the products named with it."""
        if self.bridge is None:
            return None
        query = self.bridge.text_side(text_vector[None], [text])[0]
        if examples is not None and every_title is not None and FEEDBACK_WEIGHT > 0:
            example = self._example(every_title, examples)
            if example is not None:
                query = query + FEEDBACK_WEIGHT * example
        return self.joint.scores(query)[rows]

    def _example(self, every_title: np.ndarray, examples: np.ndarray) -> np.ndarray | None:
        """The unit mean, in the shared space, of the photos of the examples whose titles are
        nearest the query, weighted by a softmax of those cosines (None: no titled example)."""
        pool = examples[examples < self.capacity]
        pool = pool[self.has_title[pool]]
        if not len(pool):
            return None
        m = min(FEEDBACK_EXAMPLES, len(pool))
        nearest = pool[np.argpartition(-every_title[pool], m - 1)[:m]]
        closeness = every_title[nearest].astype(np.float64) / FEEDBACK_TEMPERATURE
        weights = np.exp(closeness - closeness.max())
        mean = (weights / weights.sum()).astype(np.float32) @ self.joint.get(nearest)
        norm = float(np.linalg.norm(mean))
        return mean / norm if norm > 0 else None
