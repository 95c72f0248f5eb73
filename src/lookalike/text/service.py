"""Text search and "like this, but…" for one store: words, words with a photo, and facet changes.

Evidence, each turned into comparable units before it is mixed:

* **facets** named in the query ("red", "dresses", "summer") — a product's label or predicted tag;
  each wanted facet counts ``FACET_WEIGHT`` shared among the facets named, so naming a colour and
  a type ranks red dresses above red shirts and blue dresses;
* **title** — the query's and the title's sentence vectors (where a title exists);
* **image** — the query in the bridge's shared space against the photo (every product, titled or not);
* **photo** — with an uploaded photo, its cosine to the product's photo.

Semantic evidence is standardised over the candidates (z-scores; an uploaded photo's are squashed
beyond ±2 so that its own product, a far outlier, cannot outvote a facet the words name) and weighs
``SEMANTIC_WEIGHT`` per standard deviation (more when many of the query's words name no facet),
so facets decide first and similarity orders within them.  Words keep their outliers: a title matched almost word for word should come first.  Each hit says which
evidence ranked it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..common.progress import Log, Progress, no_log
from ..search.filters import FilterError, parse_where
from ..search.queries import ProductQuery, TextQuery
from ..search.searcher import Hit
from ..search.view import CatalogueView
from ..vectors import VectorFilter
from .bridge import BridgeOptions, TextImageBridge, current_bridge_folder
from .encoder import MINILM, SentenceEncoder, TextError, guess_text_columns, sentence_encoder
from .facets import Facets
from .gallery import TextGallery
from .vocabulary import FacetMatch, ParsedQuery, tokens

FACET_WEIGHT = 1.0
SEMANTIC_WEIGHT = 0.2       # per standard deviation of the mixed semantic evidence (chosen on a development split, see benchmarks/text_search.py)
UNREAD_WEIGHT = 0.6         # more semantic weight per share of the query's words that name no facet (brand, fit, fabric…)
IMAGE_SHARE = 0.3           # titled products: image evidence's share beside the title's
PHOTO_SHARE = 0.7           # words with a photo: the photo's share beside the words'
# Words with a photo: the mixed evidence is squashed into ±this many standard deviations, so its
# whole swing (times SEMANTIC_WEIGHT) stays below one named facet a product fully matches: "this
# blazer, but a dress" shows every dress first, however like the photo a blazer is.
SEMANTIC_BOUND = 0.95 * FACET_WEIGHT / (2 * SEMANTIC_WEIGHT)  # 2.375; under the half-swing, as tanh reaches it in float
NEGATIVE_SHARE = 0.5        # how hard a negative phrase pushes, relative to the positive words
PHOTO_DEPTH = 2000          # photo similarity is read for this many nearest products (others: the lowest seen)
TYPE_FACETS = ("article_type", "category", "product_type", "type", "image_group", "gender")
KEEP_BONUS = 0.02           # "like this, but…": per other facet value shared with the product
CHANGE_CONFIDENCE = 2.0     # "like this, but…": per unit of probability that a product has the asked value
CHANGE_RUNNER_UP = 0.1      # "like this, but…": a guessed runner-up this likely may stand in for a missing match of the product's type
SWATCH_POOL = 10            # swatches: a type facet narrows the products counted while this many remain
TYPE_BONUS = 1.0            # "like this, but…": a type facet too few candidates share puts those first


class TextService:
    def __init__(self, view: Callable[[], CatalogueView], sentences: Callable[[], SentenceEncoder] | None = None):
        self._view = view
        # The sentence model's ONNX export lives in the store's configured model cache.
        self._sentences = sentences or (lambda: sentence_encoder(MINILM, view().settings.model_cache_dir()))
        self._gallery: tuple[tuple[Any, ...], TextGallery] | None = None
        self._facet_cache: tuple[tuple[Any, ...], Facets] | None = None
        self._example_cache: tuple[tuple[Any, ...], np.ndarray] | None = None

    # ---- the bridge ---------------------------------------------------------------------------
    def bridge_folder(self) -> Path | None:
        view = self._view()
        return current_bridge_folder(view.directory, view.encoder.identity)

    def train(self, options: BridgeOptions | None = None, progress: Progress | None = None, log: Log = no_log, save: bool = True) -> TextImageBridge:
        """Learn the bridge from every product with a title and a photo (saved as the next version)."""
        view = self._view()
        view.searcher.serving.sync()
        options = options or BridgeOptions()
        gallery = TextGallery(view.store, self._sentences, None, self._text_columns(view), keep_colours=options.colour_weight > 0)
        if not gallery.text_columns:
            raise TextError("the catalogue has no title column (title, name, description…); a text bridge learns from titles")
        gallery.refresh(lambda n: progress("titles", n, view.store.count()) if progress else None)
        allowed = view.matching_rowids(options.where)
        rows = allowed[allowed < gallery.capacity]
        rows = rows[gallery.has_title[rows]]
        if progress:
            progress("titles", len(rows), len(rows))
        images = np.stack([view.vector(int(r)) for r in rows]) if len(rows) else np.zeros((0, view.encoder.dim), np.float32)
        log(f"text bridge: {len(rows)} products with a title and a photo")
        colours = gallery.colours[rows] if gallery.keep_colours else None
        titles = None
        if options.word_weight > 0:  # the titles' text itself, for their words (the gallery keeps only their vectors)
            products = view.store.get_by_rowids(rows.tolist())
            titles = [gallery.title_of(products[int(r)].metadata) if int(r) in products else "" for r in rows]
        bridge = TextImageBridge.fit(gallery.title_vectors(rows), images, self._sentences().name, view.encoder.identity, options, log,
                                     colours, titles)
        if save:
            folder = bridge.save(view.directory)
            bridge.info["name"] = folder.name
            self._gallery = None
        return bridge

    def gallery(self) -> TextGallery:
        view = self._view()
        folder = self.bridge_folder()
        key = (view.encoder.identity, folder, tuple(self._text_columns(view)))
        if self._gallery is None or self._gallery[0] != key:
            bridge = TextImageBridge.load(folder) if folder else None
            self._gallery = (key, TextGallery(view.store, self._sentences, bridge, list(key[2])))
        gallery = self._gallery[1]
        gallery.refresh()
        return gallery

    def _facets(self, view: CatalogueView, gallery: TextGallery) -> Facets:
        """The catalogue's facets, rebuilt only when the index or the gallery moved (the vocabulary costs milliseconds)."""
        key = (id(view.searcher.serving.columns), view.searcher.serving.synced_gen, gallery.generation, id(gallery))
        if self._facet_cache is None or self._facet_cache[0] != key:
            self._facet_cache = (key, Facets(view.searcher.serving.columns, gallery.text_columns, gallery.tag_probabilities,
                                                   gallery.tag_guesses))
        return self._facet_cache[1]

    @staticmethod
    def _text_columns(view: CatalogueView) -> list[str]:
        return guess_text_columns(view.column_names())

    def status(self) -> dict[str, Any]:
        view = self._view()
        folder = self.bridge_folder()
        info = TextImageBridge.load(folder).info if folder else None
        return {"text_columns": self._text_columns(view), "bridge": folder.name if folder else None, "bridge_info": info}

    # ---- text queries ---------------------------------------------------------------------------
    def search(self, query: TextQuery) -> list[Hit]:
        view = self._view()
        searcher = view.searcher
        searcher.serving.sync()
        gallery = self.gallery()
        facets = self._facets(view, gallery)
        rows = self._allowed_rows(view, query.where, query.exclude, gallery.capacity)
        parsed = facets.vocabulary.parse(query.text, query.negative)
        facet_score = np.zeros(len(rows), np.float32)
        phrases: dict[str, list[FacetMatch]] = {}  # one phrase may name values of several facets: it counts once
        for match in parsed.wanted:
            phrases.setdefault(match.phrase, []).append(match)
        for named in phrases.values():
            surety = np.max([facets.match(m.facet, m.value, gallery.capacity)[rows] * m.strength for m in named], axis=0)
            facet_score += surety * FACET_WEIGHT / len(phrases)
        wanted = list(dict.fromkeys(m.facet for m in parsed.wanted))
        for match in parsed.unwanted:
            against = facets.match(match.facet, match.value, gallery.capacity)[rows] * match.strength
            facet_score -= against * FACET_WEIGHT
        examples = self._examples(view, gallery)
        words = self._semantic(gallery, parsed.text, rows, examples)
        for phrase in parsed.negative_phrases:
            against = self._semantic(gallery, phrase, rows, examples)
            if against is not None:
                words = -NEGATIVE_SHARE * against if words is None else words - NEGATIVE_SHARE * against
        semantic: np.ndarray | None = words
        if query.image is not None:
            photo = _bounded(self._photo(view, query.image, rows))  # the photo's own product is a far outlier: it must not outvote the words
            semantic = _bounded(photo if words is None else PHOTO_SHARE * photo + (1 - PHOTO_SHARE) * words, SEMANTIC_BOUND)
        if semantic is None and not wanted and not parsed.unwanted:
            raise TextError("nothing in this catalogue can read these words: no title column, no text bridge "
                            "(`lookalike train text`) and no facet value named" if query.text else "no evidence to rank by")
        score = facet_score + (_semantic_weight(parsed) * semantic if semantic is not None else 0)
        return self._hits(view, gallery, facets, rows, score, query.k, parsed.describe(), wanted)

    def _allowed_rows(self, view: CatalogueView, where: tuple[str, ...], exclude: tuple[str, ...], capacity: int,
                      also: list[int] | None = None) -> np.ndarray:
        searcher = view.searcher
        clauses = parse_where(where)
        mask = searcher.serving.columns.mask(clauses)
        excluded = [p.rowid for p in (view.store.get(i) for i in exclude) if p is not None] + (also or [])
        allowed = VectorFilter(mask, exclude=tuple(excluded)).bitmap(view.live_mask())
        return np.flatnonzero(allowed[:capacity])

    def _examples(self, view: CatalogueView, gallery: TextGallery) -> np.ndarray | None:
        """Rowids of the products that may lend their titled photos to words (the gallery keeps
        those with a title): those the bridge learned from (its ``where``), whatever the query's
        own filters (they narrow the results, not what the shop's titles teach).  Cached until
        the index or the gallery moves."""
        if gallery.bridge is None:
            return None
        key = (view.searcher.serving.synced_gen, gallery.generation, id(gallery))
        if self._example_cache is None or self._example_cache[0] != key:
            self._example_cache = (key, view.matching_rowids(list(gallery.bridge.info.get("where") or [])))
        return self._example_cache[1]

    def _semantic(self, gallery: TextGallery, text: str, rows: np.ndarray, examples: np.ndarray | None = None) -> np.ndarray | None:
        """Title and image evidence for words, standardised over ``rows`` (None: nothing to read them with)."""
        if not text.strip() or (gallery.bridge is None and not gallery.has_title[rows].any()):
            return None
        vector = self._sentences().encode([text])[0]
        image, title = gallery.scores(vector, rows, examples, text)
        titled = ~np.isnan(title)
        out = _standard(image) if image is not None else np.zeros(len(rows), np.float32)
        if titled.any():
            title_z = _standard(np.where(titled, title, np.nanmean(title)))
            out = np.where(titled, (IMAGE_SHARE * out + (1 - IMAGE_SHARE) * title_z) if image is not None else title_z, out)
        return out

    def _photo(self, view: CatalogueView, image: Any, rows: np.ndarray) -> np.ndarray:
        vector = view.searcher.embed(image)
        allowed = np.zeros(int(rows.max()) + 1 if len(rows) else 0, bool)
        allowed[rows] = True
        ids, scores = view.searcher.serving.backend.search(vector, min(PHOTO_DEPTH, max(len(rows), 1)), VectorFilter(allowed))
        found = dict(zip(ids.tolist(), scores.tolist()))
        floor = min(found.values()) if found else 0.0
        return _standard(np.array([found.get(int(r), floor) for r in rows], np.float32))

    def _hits(self, view: CatalogueView, gallery: TextGallery, facets: Facets, rows: np.ndarray, score: np.ndarray, k: int,
              parsed: dict[str, Any], wanted: list[str]) -> list[Hit]:
        if not len(rows):
            return []
        top = np.argsort(-score, kind="stable")[:k] if len(rows) <= 4 * k else _top(score, k)
        products = view.store.get_by_rowids(rows[top].tolist())
        hits = []
        for position in top.tolist():
            rowid = int(rows[position])
            product = products.get(rowid)
            if product is None:
                continue
            shown = {f: facets.value_of(f, rowid) for f in wanted}
            evidence = {"facets": {f: {"value": v[0], "from": v[1]} for f, v in shown.items() if v is not None},
                        "title": bool(gallery.has_title[rowid]), "query": parsed}
            hits.append(Hit(product.id, float(score[position]), product.metadata, product.image, product.tags, evidence))
        return hits

    # ---- "like this, but…" -----------------------------------------------------------------------
    def similar_changed(self, query: ProductQuery) -> list[Hit]:
        """Products like ``query.product_id`` whose facet takes the asked value: the changed facet
        must match (a label or a top guess; a runner-up guess where too few of the product's type
        have those, see :func:`_change_pool`); the product's type facets are kept (when fewer than
        k products share one, those that do come first); photo similarity and the surety of the
        asked value order them, the product's other facet values break ties.  Each hit gives the
        probability it has each asked value (``changed_probability``: 1 for a label) and the
        product's own type as read here (``source_type``: its label, else its guess)."""
        view = self._view()
        searcher = view.searcher
        searcher.serving.sync()
        product = searcher.product(query.product_id)
        facets = self._facets(view, self.gallery())
        changes = [facets.resolve(f, v) for f, v in query.change]
        capacity = searcher.serving.columns.capacity
        rows = self._allowed_rows(view, query.where, query.exclude, capacity, also=[product.rowid])
        changed = {f for f, _ in changes}
        types = _type_values(facets, product.rowid, changed)
        surety = [facets.match(facet, value, capacity) for facet, value in changes]  # per rowid, how surely it has the asked value
        mask, kept, preferred = _change_pool(facets, changes, surety, types, rows, capacity, query.k)
        if not mask.any():
            return []
        vector = searcher.serving.backend.vector(product.rowid)
        depth = max(5 * query.k, 100)
        found = self._nearest(view, vector, rows[mask], depth, capacity)
        sharing = [facets.match(facet, value, capacity, hard=True) > 0 for facet, value in preferred]  # per rowid: shares a preferred type
        for shares in sharing:
            found.update(self._nearest(view, vector, rows[mask & shares[rows]], depth, capacity))
        ids = np.fromiter(found, np.int64, len(found))
        final = np.fromiter(found.values(), np.float32, len(found))
        for shares in sharing:
            final += TYPE_BONUS * shares[ids]
        for sure in surety:  # surer values first among equally similar products
            final += CHANGE_CONFIDENCE * sure[ids]
        for facet in facets.names():
            own = facets.value_of(facet, product.rowid)
            if facet not in changed and facet not in kept and own is not None:
                final += KEEP_BONUS * (facets.match(facet, own[0], capacity, hard=True)[ids] > 0)
        order = np.argsort(-final, kind="stable")[: query.k]
        products = view.store.get_by_rowids(ids[order].tolist())
        evidence = {"changed": dict(changes), "kept": kept, "preferred": [f for f, _ in preferred], "source": product.id,
                    "source_type": types[0][1] if types else None}
        return [Hit(p.id, float(final[i]), p.metadata, p.image, p.tags,
                    {**evidence, "changed_probability": {f: round(float(sure[ids[i]]), 4) for (f, _), sure in zip(changes, surety)}})
                for i in order.tolist() if (p := products.get(int(ids[i]))) is not None]

    @staticmethod
    def _nearest(view: CatalogueView, vector: np.ndarray, candidates: np.ndarray, depth: int, capacity: int) -> dict[int, float]:
        """rowid -> cosine of the ``depth`` candidates nearest to ``vector``."""
        if not len(candidates):
            return {}
        allowed = np.zeros(capacity, bool)
        allowed[candidates] = True
        ids, scores = view.searcher.serving.backend.search(vector, min(len(candidates), depth), VectorFilter(allowed))
        return dict(zip(ids.tolist(), scores.tolist()))

    def facet_names(self) -> list[str]:
        """The catalogue's facets (shop columns and predicted tags, merged by name)."""
        view = self._view()
        view.searcher.serving.sync()
        return self._facets(view, self.gallery()).names()

    def change_values(self, product_id: str, facet: str, where: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """The values ``facet`` takes among products of the same type as ``product_id`` (the
        swatches of "same style in: …"), with how many products have each."""
        view = self._view()
        searcher = view.searcher
        searcher.serving.sync()
        product = searcher.product(product_id)
        facets = self._facets(view, self.gallery())
        name = facet.removeprefix("tag.")
        if name not in facets.sources:
            raise FilterError(f"{facet!r} is not a facet of this catalogue; facets: {', '.join(facets.names()[:30])}")
        capacity = searcher.serving.columns.capacity
        rows = self._allowed_rows(view, where, (), capacity, also=[product.rowid])
        for type_facet, type_value in _type_values(facets, product.rowid, {name}):  # kept as "like this, but…" keeps them
            if type_value:
                narrower = rows[facets.match(type_facet, type_value, capacity, hard=True)[rows] > 0]
                rows = narrower if len(narrower) >= SWATCH_POOL else rows
        own = facets.value_of(name, product.rowid)
        out = []
        for value in facets.values(name):
            count = int(np.count_nonzero(facets.match(name, value, capacity, hard=True)[rows]))
            if count:
                out.append({"value": value, "count": count, "current": own is not None and own[0].lower() == value.lower()})
        return sorted(out, key=lambda v: -v["count"])


def _change_pool(facets: Facets, changes: list[tuple[str, str]], surety: list[np.ndarray], types: list[tuple[str, str]],
                 rows: np.ndarray, capacity: int, k: int) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Which of ``rows`` may answer "like this, but…": (mask, type facets kept, type facets preferred).
    ``surety``: per change, how surely each rowid has the value (``Facets.match``, runners-up included).

    A candidate must show every changed value: by its label, its predicted tag or, below the
    tagger's threshold, its likeliest value (strict), and —
    only where fewer than ``k`` of the product's own type do so — also by a runner-up the tagger
    gives at least ``CHANGE_RUNNER_UP`` (loose).  A guess of the asked colour on a product of the
    right type beats a sure one on another type: on bare photos of the development split, the strict
    pool kept the product's type for 46 % of requests only, and results of another type were never
    right.  A type facet is kept (every candidate shares it) when ``k`` candidates share it, and
    preferred (those that share it come first, then the rest) when fewer do."""
    strict = np.ones(len(rows), bool)
    loose = np.ones(len(rows), bool)
    for (facet, value), sure in zip(changes, surety):
        strict &= facets.match(facet, value, capacity, hard=True)[rows] > 0
        loose &= sure[rows] >= CHANGE_RUNNER_UP
    loose |= strict
    kept: list[str] = []
    preferred: list[tuple[str, str]] = []
    for facet, own_value in types:
        if not own_value:
            continue
        same = facets.match(facet, own_value, capacity, hard=True)[rows] > 0
        if np.count_nonzero(strict & same) >= k:
            strict, loose, kept = strict & same, loose & same, [*kept, facet]
        elif np.count_nonzero(loose & same) >= k:
            strict = loose = loose & same
            kept = [*kept, facet]
        elif (loose & same).any():  # too few even so: those there are come first, then the rest
            strict = strict | (loose & same)
            preferred.append((facet, own_value))
    return strict, kept, preferred


def _type_values(facets: Facets, rowid: int, changed: set[str]) -> list[tuple[str, str]]:
    """The product's type facets and values: its labelled ones when it has any (a shop's own
    "category" outranks a predicted image group), else its predicted ones."""
    found = [(f, facets.value_of(f, rowid)) for f in TYPE_FACETS if f not in changed]
    present = [(f, v) for f, v in found if v is not None]
    labelled = [(f, v[0]) for f, v in present if v[1] == "label"]
    return labelled or [(f, v[0]) for f, v in present]


def _standard(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.float32)
    spread = float(values.std()) if len(values) else 0.0
    return (values - values.mean()) / spread if spread > 1e-9 else np.zeros_like(values)


def _semantic_weight(parsed: ParsedQuery) -> float:
    """``SEMANTIC_WEIGHT``, raised by ``UNREAD_WEIGHT`` times the share of the query's words no
    facet value took: those words ("puma", "slim", "linen") can only be read by the sentence
    vectors, so a query made of them leans on similarity; "black tshirts" stays with its facets."""
    words = tokens(parsed.text)
    if not words:
        return SEMANTIC_WEIGHT
    read = {w for match in parsed.wanted for w in tokens(match.phrase)}
    return SEMANTIC_WEIGHT + UNREAD_WEIGHT * sum(w not in read for w in words) / len(words)


def _bounded(z: np.ndarray, limit: float = 3.0, knee: float = 2.0) -> np.ndarray:
    """z-scores as they are up to ±``knee``, then squashed towards ±``limit`` (order kept): an
    outlier (the uploaded photo's own product) orders first among its kind but cannot outvote a
    named facet."""
    room = limit - knee
    excess = np.maximum(np.abs(z) - knee, 0.0)
    return np.where(excess > 0, np.sign(z) * (knee + room * np.tanh(excess / room)), z).astype(np.float32)


def _top(score: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-score, k - 1)[:k]
    return part[np.argsort(-score[part], kind="stable")]
