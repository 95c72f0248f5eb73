"""The ``learned_codes`` task: off-the-shelf vs fine-tuned embeddings vs compact codes, on
products the training never saw.

The task trains, inside the evaluation, a fine-tuned head on the data set (a seeded share of
each class held out, plus every product of a duplicate pair) and codebooks for each code size,
then measures every representation on the held-out products only:

rows     in-shop same article type (mAP, NN accuracy) · same article type and colour ·
         street crops → catalogue (P@10) · exact product: duplicate listings and synthetic
         street-like views (R@1)
columns  off-the-shelf float · fine-tuned float · learned codes at each size with SDC and ADC
         (and ADC + exact re-ranking) · FAISS PQ and OPQ trained after the fact · sign-binarised
         Hamming codes — each with bytes per product and query latency.

Latency is one query against the held-out gallery tiled to ``latency_items`` products
(median of repeated single-thread runs), so figures compare at a realistic catalogue size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable

import numpy as np

from ..common.metrics import bootstrap, ranking_metrics
from ..common.views import ALTERATIONS, alter
from .suite import Suite, SuiteError, TaskSpec
from .tasks import ConfigIndex, DatasetEmbeddings, TaskResult, _groups_from_pairs, street_crops, street_photo_keys, street_positives

RERANK_DEPTH = 100


Scorer = Callable[[np.ndarray], np.ndarray]  # query vectors (nq, d) -> (nq, n gallery) scores


@dataclass
class Representation:
    """One column: how it embeds backbone vectors, and a scorer over any selection of gallery rows
    (the held-out gallery itself, or the gallery repeated to a large size to time queries)."""

    name: str
    bytes_per_item: float
    embed: Callable[[np.ndarray], np.ndarray]          # backbone vectors (n, D) -> this representation's float vectors
    scorer: Callable[[np.ndarray], Scorer]             # gallery row indices -> scorer over those rows
    coded: bool = False                                # compact codes: views are lost by design, no change rows

    def latency_ms(self, queries: np.ndarray, items: int, gallery_size: int, repeats: int = 20) -> float:
        """Median single-thread time of one query against ``items`` gallery rows (the gallery repeated),
        scoring and selecting the top 10."""
        from threadpoolctl import threadpool_limits

        score = self.scorer(np.resize(np.arange(gallery_size), items))
        with threadpool_limits(1):
            score(queries[:1])
            times = []
            for i in range(repeats):
                start = time.perf_counter()
                np.argpartition(-score(queries[i % len(queries) : i % len(queries) + 1])[0], 10)[:10]
                times.append((time.perf_counter() - start) * 1000)
        return float(np.median(times))


def _rerank(coarse: np.ndarray, queries: np.ndarray, vectors: np.ndarray, depth: int) -> np.ndarray:
    """Exact scores for each query's ``depth`` best coarse candidates, ranked above the rest."""
    out = coarse - 1e3
    for row in range(coarse.shape[0]):
        top = np.argpartition(-coarse[row], min(depth, coarse.shape[1] - 1))[:depth]
        out[row, top] = vectors[top] @ queries[row]
    return out


def run_learned_codes(task: TaskSpec, data: DatasetEmbeddings, index: ConfigIndex, suite: Suite) -> TaskResult:
    from ..common.untyped import faiss
    from ..models.artefacts import EmbeddingHead
    from ..training import EmbeddingOptions, QuantizerOptions
    from ..vectors.quantizer import sign_codes

    engine = data.engine
    if task.options.get("backbones") not in (None, [engine.encoder.name]):
        # gallery and queries are the configuration's stored vectors: refuse before minutes of training
        raise SuiteError(f"task {task.name!r}: the model must be trained on the configuration's encoder alone")
    positives = list(task.options.get("positives") or ["article_type"])
    colour = task.options.get("colour")
    bits_list = [int(b) for b in task.options.get("bits", [32, 48, 64])]
    # duplicate listings, grouped like the `pairs` task does (same id/relation columns)
    groups = _groups_from_pairs(task, suite, set(data.ids))[0] if task.options.get("pairs") else []
    keep_out = sorted(set().union(*groups))
    options = EmbeddingOptions(positives=positives, holdout=float(task.options.get("holdout", 0.3)), seed=suite.seed,
                               steps=int(task.options.get("steps", 1500)), views=int(task.options.get("views", 4)),
                               loss=str(task.options.get("loss", "proxy-anchor")), keep_out=keep_out,
                               backbones=task.options.get("backbones"), street=street_training(task, suite))
    reported: set[str] = set()
    if task.options.get("development"):
        options, reported = _development_options(engine, options)
    model = engine.train_embedding(options, save=False)
    held = set(model.holdout) - reported
    gallery = [i for i, item in enumerate(data.ids) if item in held]
    if len(gallery) < 10:
        raise SuiteError(f"task {task.name!r}: only {len(gallery)} held-out products; raise 'holdout'")
    g_ids = [data.ids[i] for i in gallery]
    g_meta = [data.metadata[i] for i in gallery]
    base_vectors = data.vectors[gallery]
    tuned = model.head(base_vectors)

    # queries: street crops and synthetic views, embedded by the backbone once
    street = street_crops(task, suite) if task.options.get("boxes") else None
    street_base = engine.encoder.encode(street.crops) if street and street.crops else np.zeros((0, base_vectors.shape[1]), np.float32)
    view_positions, view_kinds, view_pictures = _synthetic_views(task, suite, engine, data, gallery)
    view_base = engine.encoder.encode(view_pictures) if view_pictures else np.zeros((0, base_vectors.shape[1]), np.float32)

    # representations: each embeds backbone vectors its own way, then scores against its gallery
    train_float = _training_vectors(model)
    tuned_embed = model.head
    columns = [_float_column("off-the-shelf float", lambda b: b, base_vectors),
               _float_column(f"fine-tuned float ({options.loss} loss)", tuned_embed, tuned)]
    for share in task.options.get("backbone_shares") or []:  # the same head, a share of each similarity kept from the backbone
        mixed = EmbeddingHead(model.head.layers, model.head.conv, float(share))
        columns.append(_float_column(f"fine-tuned float, backbone share {float(share):g}", mixed, mixed(base_vectors)))
    gate = _gate_options(task)
    if gate:  # the tuned ranking, with the backbone's near-duplicates of each query lifted to the top
        columns.append(_gated_column(model.head, tuned, base_vectors, *gate))
    for depth in _first_depths(task):  # the tuned ranking, with the backbone's nearest product first when the tuned top `depth` has it
        columns.append(_backbone_first_column(model.head, tuned, base_vectors, depth))
    unfrozen_depth = _first_depth(task, "unfrozen_first_depth")
    if unfrozen_depth:  # the same training with the last convolution unfrozen, alone and with the exact-first rule
        columns += _unfrozen_columns(engine, replace(options, unfreeze_head=True), data.ids, gallery, base_vectors,
                                     [(street_base, street.crops if street else []), (view_base, view_pictures)], unfrozen_depth)
    if options.street is not None:  # the same training without street positives, for the comparison
        plain = engine.train_embedding(replace(options, street=None), save=False).head
        columns.append(_float_column(f"fine-tuned float ({options.loss} loss), no street positives", plain, plain(base_vectors)))
    for loss in task.options.get("compare_losses") or []:
        if loss == options.loss:
            continue
        other = engine.train_embedding(replace(options, loss=str(loss)), save=False).head
        columns.append(_float_column(f"fine-tuned float ({loss} loss)", other, other(base_vectors)))
    top_bits = max(bits_list)
    for bits in bits_list:
        coded = engine.train_quantizer(QuantizerOptions(model=model, bits=bits, seed=suite.seed, steps=int(task.options.get("quantizer_steps", 1000))), save=False)
        columns += _code_columns(coded, base_vectors, rerank=bits == top_bits)
    # baselines trained after the fact on the fine-tuned float vectors of the training products
    for label, factory in ((f"FAISS PQ {top_bits}-bit", f"PQ{top_bits // 8}x8"), (f"FAISS OPQ {top_bits}-bit", f"OPQ{top_bits // 8},PQ{top_bits // 8}x8")):
        pq = faiss.index_factory(tuned.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        _quiet_clustering(pq)
        pq.train(np.ascontiguousarray(train_float))
        columns.append(Representation(label, top_bits / 8, tuned_embed, partial(_pq_scorer, pq, tuned), coded=True))
    projection = _pca_projection(train_float, 64)
    g_bits = sign_codes(tuned, projection)
    columns.append(Representation("Hamming 64-bit (sign of PCA)", 8, tuned_embed, partial(_hamming_scorer, g_bits, projection), coded=True))

    # rows
    table: dict[str, dict[str, float]] = {}
    per_query: dict[str, list[float]] = {}
    labels_type = _labels(g_meta, positives)
    labels_colour = _labels(g_meta, positives + [colour]) if colour else None
    latency_items = int(task.options.get("latency_items", 100_000))
    by_alteration = {kind: [i for i, k in enumerate(view_kinds) if k == kind] for kind in sorted(set(view_kinds))}
    shelf_found: list[float] | None = None  # the off-the-shelf column's views (the first column)
    for column in columns:
        embed, score = column.embed, column.scorer(np.arange(len(gallery)))
        cells: dict[str, float] = {}
        scores = score(embed(base_vectors)).astype(np.float64)
        np.fill_diagonal(scores, -np.inf)
        cells.update(_in_shop(scores, labels_type, "same type"))
        if labels_colour is not None:
            cells.update(_in_shop(scores, labels_colour, "same type+colour"))
        if street and len(street_base):
            street_values = np.array([str(m.get(task.options.get("column", positives[0])) or "").strip().lower() for m in g_meta])
            s_scores = score(embed(street_base))
            p10 = [ranking_metrics(s_scores[i], np.isin(street_values, list(street.wanted[label])), (10,))["p@10"] for i, label in enumerate(street.labels)]
            cells["street P@10"] = float(np.mean(p10))
            per_query.setdefault(f"street P@10 | {column.name}", []).extend(p10)
        if groups:
            cells["duplicates R@1"] = _duplicate_recall(scores, groups, g_ids)
        if len(view_positions):
            v_scores = score(embed(view_base))
            found = [_recall_at_1(v_scores[i], np.arange(len(gallery)) == pos) for i, pos in enumerate(view_positions)]
            cells["views R@1"] = float(np.mean(found))
            per_query[f"views R@1 | {column.name}"] = found
            for alteration, mine in by_alteration.items():  # the target holds for every alteration, not only on average
                cells[f"views R@1: {alteration}"] = float(np.mean([found[i] for i in mine]))
                if shelf_found is not None and not column.coded:  # paired: the same views, so the interval is the change's own
                    per_query[f"views R@1 change vs off the shelf: {alteration} | {column.name}"] = [found[i] - shelf_found[i] for i in mine]
            if shelf_found is None:
                shelf_found = found
        cells["bytes/product"] = column.bytes_per_item
        cells[f"latency ms at {latency_items // 1000}K"] = column.latency_ms(embed(base_vectors[:32]), latency_items, len(gallery))
        table[column.name] = cells
    rows = list(next(iter(table.values())).keys())
    summary = {f"{row} | {name}": {"mean": value, "ci_low": float("nan"), "ci_high": float("nan"), "n": len(gallery)}
               for name, cells in table.items() for row, value in cells.items() if row in ("same type mAP", "same type NN", "street P@10", "views R@1")}
    for key, values in per_query.items():
        summary[key] = bootstrap(values, suite.seed, suite.bootstrap).to_dict()
    measured = (f"measured on {len(gallery)} products of the development split (a second seeded share of the training products; "
                f"the {len(reported)} held-out products, duplicate pairs included, neither trained nor measured on)" if reported else
                f"measured on {len(gallery)} held-out products ({len(keep_out)} of them forced out of training because they are in a duplicate pair)")
    notes = [f"trained on {model.info['training_data']['train_products']} products, {measured}",
             f"latency: single-thread median per query over the held-out gallery repeated to {latency_items:,} products",
             f"training validation: {model.info['validation']}"]
    return TaskResult(summary, {}, notes=notes, plots={"codes_table": {"rows": rows, "columns": [c.name for c in columns], "cells": table},
                                                        "model": {k: model.info[k] for k in ("backbones", "positives", "parameters", "training_data", "validation")},
                                                        "split": {"measured": g_ids, "development": bool(reported), "kept_out": sorted(reported)}})


def street_training(task: TaskSpec, suite: Suite) -> Any:
    """With ``street_training: true``, street crops of the task's boxes become cross-domain
    positives, except those in the photos the task measures on (``street_photos``)."""
    if not task.options.get("street_training"):
        return None
    if not task.options.get("boxes") or not task.options.get("street_photos"):
        raise SuiteError(f"task {task.name!r}: street_training needs 'boxes' and 'street_photos' (the photos measured on, never trained on)")
    return street_positives(task, suite, street_photo_keys(task, suite) or (), float(task.options.get("street_weight", 1.0)))


def _code_columns(coded, base_vectors: np.ndarray, rerank: bool) -> list[Representation]:
    """SDC and ADC columns of one learned code size (and ADC + exact re-ranking when asked).
    Queries go through the head trained jointly with the codebooks."""
    quantizer, head = coded.quantizer, coded.head
    g_float = head(base_vectors)
    codes = quantizer.encode(g_float)
    bits = quantizer.bits
    def sdc(rows: np.ndarray) -> Scorer:
        selected = codes[rows]
        return lambda q: quantizer.sdc_scores(quantizer.encode(q), selected)

    def adc(rows: np.ndarray) -> Scorer:
        selected = codes[rows]
        return lambda q: quantizer.adc_scores(q, selected)

    def adc_reranked(rows: np.ndarray) -> Scorer:
        selected, exact = codes[rows], g_float[rows]
        return lambda q: _rerank(quantizer.adc_scores(q, selected), q, exact, RERANK_DEPTH)

    columns = [Representation(f"{bits}-bit SDC", quantizer.bytes_per_code, head, sdc, coded=True),
               Representation(f"{bits}-bit ADC", quantizer.bytes_per_code, head, adc, coded=True)]
    if rerank:
        columns.append(Representation(f"{bits}-bit ADC + re-rank {RERANK_DEPTH}", quantizer.bytes_per_code + g_float.shape[1] * 4, head, adc_reranked, coded=True))
    return columns


def _float_column(name: str, embed: Callable[[np.ndarray], np.ndarray], gallery: np.ndarray) -> Representation:
    def scorer(rows: np.ndarray) -> Scorer:
        selected = np.ascontiguousarray(gallery[rows])
        return lambda q: q @ selected.T

    return Representation(name, gallery.shape[1] * 4, embed, scorer)


def _gate_options(task: TaskSpec) -> tuple[float, float, float] | None:
    """(margin, weight, floor) of ``near_duplicate_gate``, refused naming the task when out of range."""
    gate = task.options.get("near_duplicate_gate")
    if not gate:
        return None
    try:
        if not isinstance(gate, dict) or set(gate) - {"margin", "weight", "floor"}:
            raise ValueError("expected {margin, weight, floor}")
        margin, weight, floor = (float(gate.get(k, d)) for k, d in (("margin", 0.02), ("weight", 1.0), ("floor", 0.85)))
        if not (0 < margin <= 1 and 0 <= weight <= 100 and -1 <= floor <= 1):
            raise ValueError("margin must be in (0, 1], weight in [0, 100], floor in [-1, 1]")
    except (TypeError, ValueError) as exc:
        raise SuiteError(f"task {task.name!r}: near_duplicate_gate {gate!r}: {exc}") from exc
    return margin, weight, floor


def _gated_column(head: Callable[[np.ndarray], np.ndarray], tuned: np.ndarray, backbone: np.ndarray, margin: float,
                  weight: float, floor: float) -> Representation:
    """Tuned cosine plus ``weight`` times how far the backbone cosine rises into the top ``margin``
    of the query's own best backbone cosine, and above ``floor`` (re-processed copies of one photo
    sit above 0.85 with Lite0; a street crop and a packshot rarely do): a photo of the same product
    stays first, as off the shelf, while everything else keeps the tuned order.  Needs both
    vectors of every product."""
    def scorer(rows: np.ndarray) -> Scorer:
        t_rows, b_rows = np.ascontiguousarray(tuned[rows]), np.ascontiguousarray(backbone[rows])

        def score(queries: np.ndarray) -> np.ndarray:
            near = queries @ b_rows.T
            gate = np.maximum(near.max(axis=1, keepdims=True) - margin, floor)
            lift = np.maximum(0.0, near - gate) / margin
            return head(queries) @ t_rows.T + weight * lift
        return score

    return Representation(f"fine-tuned float + backbone near-duplicate lift (margin {margin:g})",
                          (tuned.shape[1] + backbone.shape[1]) * 4, lambda b: b, scorer)


def _pq_scorer(trained: Any, vectors: np.ndarray, rows: np.ndarray) -> Scorer:
    return _faiss_scorer(trained, vectors[rows])


def _hamming_scorer(codes: np.ndarray, projection: np.ndarray, rows: np.ndarray) -> Scorer:
    from ..vectors.quantizer import hamming_distances, sign_codes

    selected = codes[rows]
    return lambda q: -hamming_distances(sign_codes(q, projection), selected).astype(np.float32)


def _training_vectors(model) -> np.ndarray:
    """Fine-tuned vectors of every cached view of the training products (what the after-the-fact
    baselines are trained on; the learned codebooks saw the same views)."""
    data = model.training_set
    features = data.features[~data.holdout]
    return model.head(features.reshape(-1, features.shape[2]).astype(np.float32))


def _quiet_clustering(index) -> None:
    """Small catalogues have fewer than FAISS's advised 39 points per centroid; it still trains, so skip the warning."""
    inner = _downcast(index)
    if hasattr(inner, "pq"):
        inner.pq.cp.min_points_per_centroid = 1


def _downcast(index):
    from ..common.untyped import faiss

    if isinstance(index, faiss.IndexPreTransform):
        return faiss.downcast_index(index.index)
    return faiss.downcast_index(index)


def _faiss_scorer(trained, vectors: np.ndarray) -> Scorer:
    """A copy of a trained (empty) FAISS index holding ``vectors``; scores every item per query."""
    from ..common.untyped import faiss

    index = faiss.clone_index(trained)
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def score(queries: np.ndarray) -> np.ndarray:
        n = index.ntotal
        depth = n if n <= 10_000 else 100  # the whole ranking for metrics; the top 100 when timing a large gallery
        sims, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), depth)
        out = np.full((len(queries), n), -np.inf, dtype=np.float32)
        np.put_along_axis(out, ids, sims, axis=1)
        return out

    return score


def _pca_projection(vectors: np.ndarray, bits: int) -> np.ndarray:
    centred = vectors - vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[:bits].T.astype(np.float32)


def _labels(metadata: list[dict[str, Any]], columns: list[str]) -> np.ndarray:
    return np.array([" / ".join(str(m.get(c) or "").strip().lower() for c in columns) for m in metadata])


def _in_shop(scores: np.ndarray, labels: np.ndarray, prefix: str) -> dict[str, float]:
    aps, nn = [], []
    for i in range(len(labels)):
        relevant = labels == labels[i]
        relevant[i] = False
        if not relevant.any():
            continue
        row = np.delete(scores[i], i)
        m = ranking_metrics(row, np.delete(relevant, i), (1,))
        aps.append(m["ap"])
        nn.append(m["nn_accuracy"])
    return {f"{prefix} mAP": float(np.mean(aps)), f"{prefix} NN": float(np.mean(nn))}


def _development_options(engine, options) -> tuple[Any, set[str]]:
    """``development: true``: the products the task reports on (its seeded held-out share and the
    duplicate pairs) are kept out of training and out of the measure, and a second seeded share
    of the rest (the seed + 1) is measured instead.  Settings such as an exact-first depth are
    chosen there, so the held-out figures are not tuned on.  The split alone costs one step of
    training: it is the one ``train_embedding`` makes."""
    reported = set(engine.train_embedding(replace(options, steps=1, street=None), save=False).holdout)
    return replace(options, keep_out=sorted(set(options.keep_out) | reported), seed=options.seed + 1), reported


def _first_depths(task: TaskSpec) -> list[int]:
    """``backbone_first_depth``: one depth or a list of them (a column each, to compare depths)."""
    depths = task.options.get("backbone_first_depth", 0)
    if isinstance(depths, list):
        if not depths or len(depths) > 8:
            raise SuiteError(f"task {task.name!r}: backbone_first_depth lists 1 to 8 depths, got {len(depths)}")
        checked = [_check_depth(task, "backbone_first_depth", d) for d in depths]
        if 0 in checked:
            raise SuiteError(f"task {task.name!r}: backbone_first_depth 0 in a list of depths (a depth is 1 to 1,000)")
        return checked
    depth = _first_depth(task)
    return [depth] if depth else []


def _first_depth(task: TaskSpec, option: str = "backbone_first_depth") -> int:
    """``backbone_first_depth`` (or ``unfrozen_first_depth``; 0: no such column), refused naming
    the task when not a whole number from 1 to 1,000."""
    return _check_depth(task, option, task.options.get(option, 0))


def _check_depth(task: TaskSpec, option: str, depth: Any) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= 1000:
        raise SuiteError(f"task {task.name!r}: {option} {depth!r} is not a whole number from 1 to 1,000 (0 or absent: no column)")
    return depth


def _unfrozen_columns(engine, options, ids: list[str], gallery: list[int], gallery_base: np.ndarray,
                      queries: list[tuple[np.ndarray, list[Any]]], depth: int) -> list[Representation]:
    """An unfrozen head reads feature maps, which no other column computes: its vectors of the
    gallery (the training cache's clean photos) and of every query picture (through the maps
    encoder) are computed once here and found again by each photo's backbone vector, so the
    columns score the very same queries as the others.  Served, the rule compares the vectors
    the pretrained last convolution makes of the same maps, which equal the backbone's own
    (:meth:`lookalike.models.artefacts.EmbeddingHead.off_the_shelf`)."""
    from ..models.registry import FEATURE_EXTRACTOR, IMAGE_EMBEDDER, get_encoder

    # its own split can differ where a photo gives no feature map: the measured gallery is kept out whatever it says
    model = engine.train_embedding(replace(options, keep_out=sorted(set(options.keep_out) | {ids[i] for i in gallery})), save=False)
    maps_encoder = get_encoder(model.backbones[0], engine.settings, kinds=(IMAGE_EMBEDDER, FEATURE_EXTRACTOR))
    row_of = {item: i for i, item in enumerate(model.training_set.ids)}
    missing = [ids[i] for i in gallery if ids[i] not in row_of]
    if missing:
        raise SuiteError(f"unfrozen head: no feature map for {len(missing)} held-out product(s), e.g. {missing[0]!r}")
    tuned_gallery = model.head(model.training_set.features[[row_of[ids[i]] for i in gallery], 0].astype(np.float32))
    table = {row.tobytes(): vector for row, vector in zip(np.asarray(gallery_base, np.float32), tuned_gallery)}
    for base, pictures in queries:  # (backbone vectors, the pictures they came from)
        if len(base):
            table.update({row.tobytes(): vector for row, vector in zip(np.asarray(base, np.float32), model.head(maps_encoder.encode(pictures)))})

    def head(backbone: np.ndarray) -> np.ndarray:
        return np.stack([table[row.tobytes()] for row in np.asarray(backbone, np.float32)])

    plain = _float_column(f"fine-tuned float ({options.loss} loss), unfrozen last convolution", head, tuned_gallery)
    first = _backbone_first_column(head, tuned_gallery, gallery_base, depth)
    first.name = f"the same unfrozen head, the nearest off the shelf among its top {depth} first"
    return [plain, first]


def _backbone_first_column(head: Callable[[np.ndarray], np.ndarray], tuned: np.ndarray, backbone: np.ndarray, depth: int) -> Representation:
    """What a fine-tuned model's photo search serves (:class:`lookalike.search.ExactFirst`): the
    tuned ranking, except that among its top ``depth`` the product whose backbone vector is
    nearest the query's goes first.  An altered photo of a catalogue product is nearest its own
    photo off the shelf far more often than after fine-tuning (which learns the type, not the
    photo), and is usually still in the tuned top few dozen; a photo of another product moves one
    near neighbour within the top ``depth``, so category-level figures barely move."""
    def scorer(rows: np.ndarray) -> Scorer:
        t_rows, b_rows = np.ascontiguousarray(tuned[rows]), np.ascontiguousarray(backbone[rows])

        def score(queries: np.ndarray) -> np.ndarray:
            scores = head(queries) @ t_rows.T
            last = min(depth, scores.shape[1]) - 1
            top = np.argpartition(-scores, last, axis=1)[:, : last + 1]  # the tuned top ``depth``, any order
            near = np.einsum("qd,qkd->qk", queries, b_rows[top])  # their backbone cosines to the query
            picked = top[np.arange(len(top)), near.argmax(axis=1)]
            scores[np.arange(len(scores)), picked] = scores.max(axis=1) + 1.0
            return scores
        return score

    return Representation(f"fine-tuned float, the nearest off the shelf among the tuned top {depth} first",
                          (tuned.shape[1] + backbone.shape[1]) * 4, lambda b: b, scorer)


def _recall_at_1(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Is a relevant item first? Tie-aware: codes often give several items the same score, and the
    twin shares first place.  With several twins, any of them first counts as found."""
    finite = np.isfinite(scores)
    return ranking_metrics(scores[finite], relevant[finite], (1,))["found@1"]


def _duplicate_recall(scores: np.ndarray, groups: list[set[str]], ids: list[str]) -> float:
    """Each listing of a duplicate group queries the gallery: is one of its twins first?"""
    position = {item: i for i, item in enumerate(ids)}
    hits = []
    for group in groups:
        members = [position[m] for m in group if m in position]
        for q in members:
            relevant = np.zeros(len(ids), dtype=bool)
            relevant[[m for m in members if m != q]] = True
            if relevant.any():
                hits.append(_recall_at_1(scores[q], relevant))
    return float(np.mean(hits)) if hits else float("nan")


def _synthetic_views(task: TaskSpec, suite: Suite, engine, data: DatasetEmbeddings, gallery: list[int]) -> tuple[list[int], list[str], list[Any]]:
    """One seeded alteration of a sample of held-out products; returns (gallery position, alteration, picture)."""
    from ..images import ImageError, load_image

    sample = int(task.options.get("view_sample", 200))
    if sample <= 0:
        return [], [], []
    rng = np.random.default_rng(suite.seed)
    chosen = np.sort(rng.choice(len(gallery), min(sample, len(gallery)), replace=False))
    names = list(ALTERATIONS)
    pictures, positions, kinds = [], [], []
    for j, pos in enumerate(chosen):
        try:
            picture = load_image(data.images[gallery[pos]], engine.limits)
        except (ImageError, TypeError):
            continue
        pictures.append(alter(picture, names[j % len(names)], suite.seed * 100_003 + j))
        positions.append(int(pos))
        kinds.append(names[j % len(names)])
    return positions, kinds, pictures
