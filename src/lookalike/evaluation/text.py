"""The ``text_search`` task: words and "like this, but…" on products whose titles (and labels) are removed.

The task builds, next to the data set's store, a store that plays a shop: a seeded share of each
type keeps its title and labels (what the shop's taggers and text bridge learn from), the rest is
written three times — as a bare photo (``split=heldout``: no title, no labels, only what the
taggers predict from the photo), with its title only (``split=titled``), and with its labels but no
title (``split=labelled``).  The stored vectors and thumbnails are reused, so nothing is
re-embedded.  Taggers (store embedding + colour) and the bridge learn from the kept share only;
every figure is measured on the held-out products:

* "colour + type" queries ("black tshirts", every pair with >= ``min_pair`` held-out products):
  P@10 of the right type, and of the right type and colour — untitled; titled (hybrid); and a
  title-only ranking (MiniLM cosine with the titles) as the baseline with titles present;
* a held-out title as the query, its own product in the top 10 — untitled, titled, title-only;
  and, untitled, within a random gallery of 1,000 held-out products (a top-10 rate falls as the
  gallery grows, so this is the figure to compare across splits and shops);
* ``--change colour=X`` for held-out products (X: a colour their type has >= ``min_pair`` of):
  P@10 of colour X and the product's type (and of each alone), and how much of the product's title
  words (colour words removed: brand, fit, pattern, fabric) the results share — against a plain filtered
  search (similar items where the colour column is X) — with colours from predicted tags
  (bare photos) and from the shop's labels.

Random baselines come from the same queries.  ``development: true`` measures on a fifth of the kept
share instead, with the reported held-out products left out entirely: the split the text
service's weights were chosen on.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

import numpy as np

from ..engine import Engine
from ..storage import ProductWrite
from ..tagging.tagger import TrainOptions
from ..text import BridgeOptions
from .suite import Suite, SuiteError, TaskSpec
from .tasks import ConfigIndex, DatasetEmbeddings, TaskResult, summarise

BUILD_VERSION = 1
WORD = re.compile(r"[a-z]+")
PREFIXES = {"heldout": "", "titled": "t:", "labelled": "l:"}
POOL = 1000  # free text is also read within a random gallery of this many held-out products


def _split(ids: list[str], types: list[str], share: float, seed: int) -> set[str]:
    rng = np.random.default_rng(seed)
    by_type: dict[str, list[str]] = {}
    for item, kind in zip(ids, types):
        by_type.setdefault(kind, []).append(item)
    held: set[str] = set()
    for members in by_type.values():
        held.update(list(rng.permutation(members))[: int(round(len(members) * share))])
    return held


class _Copy:
    """One data-set product's photo, as written under several ids (its vector and thumbnail reused)."""

    def __init__(self, image: str | None, image_hash: str | None, vector: np.ndarray, thumbnail: bytes | None):
        self.image, self.image_hash, self.vector, self.thumbnail = image, image_hash, vector, thumbnail

    def write(self, product_id: str, metadata: dict[str, Any]) -> ProductWrite:
        return ProductWrite(product_id, self.image, self.image_hash, metadata, self.vector, self.thumbnail)


class TextShop:
    """The task's store: kept products with titles and labels, held-out ones bare, titled and labelled."""

    def __init__(self, task: TaskSpec, data: DatasetEmbeddings, suite: Suite):
        options = task.options
        self.title_column = str(options.get("text_column", "title"))
        self.type_column = str(options.get("type_column", "article_type"))
        self.colour_column = str(options.get("colour_column", "base_colour"))
        self.labels = [str(c) for c in options.get("label_columns", [self.type_column, self.colour_column])]
        for needed in {self.title_column, self.type_column, self.colour_column, *self.labels}:
            if not any(needed in m for m in data.metadata[:200]):
                raise SuiteError(f"task {task.name!r}: the data set has no column {needed!r}")
        self.development = options.get("development", False) is True  # a bool: the suite refuses anything else
        # "none" (default): the taggers read the store's embedding and the garment colour only.  The
        # taggers' own default adds EfficientNet-Lite2 on the thumbnails: on the development split it
        # moved no figure beyond its noise (README, Text search) and takes twice as long to build.
        self.tagger_image_model = str(options.get("tagger_image_model", "none"))
        self.truth = {i: m for i, m in zip(data.ids, data.metadata)}
        types = [str(m.get(self.type_column, "")) for m in data.metadata]
        held = _split(data.ids, types, float(options.get("holdout", 0.3)), suite.seed)
        self.members = list(data.ids)
        if self.development:
            self.members = [i for i in data.ids if i not in held]
            held = _split(self.members, [str(self.truth[i].get(self.type_column, "")) for i in self.members], 0.2, suite.seed + 100)
        self.held = sorted(held)
        kind = "dev" if self.development else "test"
        self.directory = data.engine.directory.parent / f"text--{re.sub(r'[^A-Za-z0-9]+', '-', task.name)[:40]}--{kind}--{data.engine.encoder.name}"
        self.data = data

    def open(self, log: Callable[[str], None]) -> Engine:
        marker = self.directory / "text-task.json"
        recipe = {"version": BUILD_VERSION, "members": len(self.members), "held": len(self.held), "labels": self.labels,
                  "tagger_image_model": self.tagger_image_model}
        engine = Engine.open(self.directory, settings=self.data.engine.settings.replace(store=str(self.directory), index="flat"),
                             encoder=self.data.engine.encoder)
        try:
            if not marker.exists() or json.loads(marker.read_text()) != recipe:
                self._write(engine, log)
                marker.write_text(json.dumps(recipe))
        except BaseException:
            engine.close()
            raise
        return engine

    def _write(self, engine: Engine, log: Callable[[str], None]) -> None:
        source, held = self.data.engine, set(self.held)
        log(f"text task: writing {len(self.members)} products ({len(held)} held out, three copies each)")
        position = {item: i for i, item in enumerate(self.data.ids)}
        for start in range(0, len(self.members), 500):
            writes = []
            for item in self.members[start:start + 500]:
                i = position[item]
                meta = self.data.metadata[i]
                product = source.store.get(item)
                copy = _Copy(self.data.images[i], self.data.hashes[i], self.data.vectors[i], source.store.thumbnail(product.rowid) if product else None)
                if item in held:
                    writes += [copy.write(item, {"split": "heldout"}),
                               copy.write(PREFIXES["titled"] + item, {"split": "titled", self.title_column: meta.get(self.title_column)}),
                               copy.write(PREFIXES["labelled"] + item, {"split": "labelled", **{c: meta.get(c) for c in self.labels}})]
                else:
                    writes.append(copy.write(item, {"split": "train", self.title_column: meta.get(self.title_column), **{c: meta.get(c) for c in self.labels}}))
            engine.searcher.serving.write(writes)
        engine.searcher.serving.maintain(save=True)
        log(f"text task: training taggers on the kept products (store embedding, colour, image model {self.tagger_image_model})")
        engine.train_taggers(TrainOptions(columns=self.labels, image_model=self.tagger_image_model, where=["split=train"]))
        engine.tag()
        log("text task: training the text bridge on the kept products' titles")
        engine.text.train(BridgeOptions(where=("split=train",)))

    def original(self, product_id: str) -> str:
        for prefix in ("t:", "l:"):
            if product_id.startswith(prefix):
                return product_id[len(prefix):]
        return product_id


def run_text_search(task: TaskSpec, data: DatasetEmbeddings, index: ConfigIndex, suite: Suite) -> TaskResult:
    from ..text import text_extra_installed

    if not text_extra_installed():
        raise SuiteError(f"task {task.name!r} needs the text extra: pip install 'lookalike[text]'")
    shop = TextShop(task, data, suite)
    per_query: dict[str, list[float]] = {}
    baseline: dict[str, float] = {}
    with shop.open(lambda m: None) as engine:
        title_only = _title_ranker(engine, shop)
        _colour_type(engine, shop, int(task.options.get("min_pair", 10)), per_query, baseline, title_only, suite.seed)
        _free_text(engine, shop, int(task.options.get("free_text", 500)), per_query, baseline, title_only, suite.seed)
        for split, column in (("heldout", f"tag.{shop.colour_column}"), ("labelled", shop.colour_column)):
            _changes(engine, shop, int(task.options.get("changes", 300)), int(task.options.get("min_pair", 10)), split, column, per_query, suite.seed)
        bridge = engine.text.status()["bridge_info"] or {}
    notes = [f"{len(shop.held)} held-out products ({'development split: a fifth of the kept share' if shop.development else 'never trained on'}); "
             f"text bridge {bridge.get('name')}: {bridge.get('pairs')} (title, photo) pairs, validation {bridge.get('validation')}"]
    return TaskResult(summarise(per_query, suite), baseline, {"bridge": bridge}, notes)


def _title_ranker(engine: Engine, shop: TextShop) -> Callable[[str], list[str]]:
    """The title-only baseline: MiniLM cosine between the words and the held-out titles."""
    gallery = engine.text.gallery()
    products = [engine.store.get(PREFIXES["titled"] + i) for i in shop.held]
    rows = np.array([p.rowid if p is not None else 0 for p in products])
    sentences = engine.text._sentences()

    def rank(text: str) -> list[str]:
        scores = gallery.title_vectors(rows) @ sentences.encode([text])[0]
        return [shop.held[j] for j in np.argsort(-scores)[:10]]

    return rank


def _pairs(shop: TextShop, min_pair: int) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for i in shop.held:
        key = (str(shop.truth[i].get(shop.type_column)), str(shop.truth[i].get(shop.colour_column)))
        counts[key] = counts.get(key, 0) + 1
    return {k: n for k, n in counts.items() if n >= min_pair}


def _colour_type(engine: Engine, shop: TextShop, min_pair: int, per_query: dict[str, list[float]], baseline: dict[str, float],
                 title_only: Callable[[str], list[str]], seed: int) -> None:
    rng = np.random.default_rng(seed + 1)
    random_type, random_both = [], []
    for kind, colour in sorted(_pairs(shop, min_pair)):
        words = f"{colour} {kind}".lower()
        rankings = {"untitled": [shop.original(h.id) for h in engine.search_text(words, k=10, where="split=heldout")],
                    "titled": [shop.original(h.id) for h in engine.search_text(words, k=10, where="split=titled")],
                    "title-only": title_only(words)}
        for name, ids in rankings.items():
            per_query.setdefault(f"colour+type P@10 type ({name})", []).append(_share(shop, ids, kind))
            per_query.setdefault(f"colour+type P@10 type+colour ({name})", []).append(_share(shop, ids, kind, colour))
        sample = list(rng.choice(shop.held, 10, replace=False))
        random_type.append(_share(shop, sample, kind))
        random_both.append(_share(shop, sample, kind, colour))
    for name in ("untitled", "titled", "title-only"):
        baseline[f"colour+type P@10 type ({name})"] = float(np.mean(random_type)) if random_type else float("nan")
        baseline[f"colour+type P@10 type+colour ({name})"] = float(np.mean(random_both)) if random_both else float("nan")


def _share(shop: TextShop, ids: list[str], kind: str | None, colour: str | None = None) -> float:
    """Share of ``ids`` of type ``kind`` and colour ``colour`` (None: either)."""
    if not ids:
        return 0.0
    return float(np.mean([(kind is None or str(shop.truth[i].get(shop.type_column)) == kind)
                          and (colour is None or str(shop.truth[i].get(shop.colour_column)) == colour) for i in ids]))


def _free_text(engine: Engine, shop: TextShop, sample: int, per_query: dict[str, list[float]], baseline: dict[str, float],
               title_only: Callable[[str], list[str]], seed: int) -> None:
    rng = np.random.default_rng(seed + 2)
    pool = min(POOL, len(shop.held))
    pooled = f"title query finds its product in top 10 among {pool:,} (untitled)"
    for item in rng.choice(shop.held, min(sample, len(shop.held)), replace=False):
        title = str(shop.truth[item].get(shop.title_column) or "")
        if not title:
            continue
        untitled = [shop.original(h.id) for h in engine.search_text(title, k=POOL, where="split=heldout")]
        rankings = {"untitled": untitled[:10], "titled": [shop.original(h.id) for h in engine.search_text(title, k=10, where="split=titled")],
                    "title-only": title_only(title)}
        for name, ids in rankings.items():
            per_query.setdefault(f"title query finds its product in top 10 ({name})", []).append(float(item in ids))
        # the same ranking read within a random gallery of a fixed size, so that figures from sets of
        # different sizes (development, held-out, another shop) can be compared
        others = [h for h in shop.held if h != item]
        gallery = set(rng.choice(others, pool - 1, replace=False).tolist()) | {item}
        before = [i for i in untitled[: untitled.index(item)] if i in gallery] if item in untitled else None
        per_query.setdefault(pooled, []).append(float(before is not None and len(before) < 10))
    for name in ("untitled", "titled", "title-only"):
        baseline[f"title query finds its product in top 10 ({name})"] = min(1.0, 10 / len(shop.held))
    baseline[pooled] = min(1.0, 10 / pool)


def _style_words(shop: TextShop, item: str, colours: set[str]) -> set[str]:
    return {w for w in WORD.findall(str(shop.truth[item].get(shop.title_column, "")).lower()) if w not in colours and len(w) > 2}


def _changes(engine: Engine, shop: TextShop, n: int, min_pair: int, split: str, column: str, per_query: dict[str, list[float]], seed: int) -> None:
    colours = {w for m in shop.truth.values() for w in WORD.findall(str(m.get(shop.colour_column, "")).lower())}
    pairs = _pairs(shop, min_pair)
    rng = np.random.default_rng(seed + 3)
    source_of = "predicted tags" if split == "heldout" else "shop labels"
    asked = 0
    for item in rng.permutation(shop.held):
        if asked >= n:
            break
        kind, own = str(shop.truth[item].get(shop.type_column)), str(shop.truth[item].get(shop.colour_column))
        options = sorted(c for (t, c) in pairs if t == kind and c != own)
        if not options:
            continue
        target = str(rng.choice(options))
        try:
            changed = engine.similar(PREFIXES[split] + item, k=10, where=f"split={split}", change={shop.colour_column: target})
        except ValueError:  # the value exists nowhere in this split's evidence
            continue
        plain = engine.similar(PREFIXES[split] + item, k=10, where=[f"split={split}", f"{column}={target}"])
        asked += 1
        per_query.setdefault(f"change colour: the source's own type as the results keep it ({source_of})", []).append(
            float(str((changed[0].evidence or {}).get("source_type")) == kind) if changed else 0.0)
        mine = _style_words(shop, item, colours)
        for name, hits in (("change", changed), ("filtered", plain)):
            ids = [shop.original(h.id) for h in hits]
            per_query.setdefault(f"{name} colour: P@10 colour+type ({source_of})", []).append(_share(shop, ids, kind, target))
            if name == "change":  # which of the two it misses: the source's type, or the asked colour
                per_query.setdefault(f"change colour: P@10 type ({source_of})", []).append(_share(shop, ids, kind))
                per_query.setdefault(f"change colour: P@10 colour ({source_of})", []).append(_share(shop, ids, None, target))
            overlap = [len(mine & _style_words(shop, i, colours)) / max(1, len(mine | _style_words(shop, i, colours))) for i in ids]
            per_query.setdefault(f"{name} colour: title-word overlap ({source_of})", []).append(float(np.mean(overlap)) if overlap else 0.0)

