"""Duplicate listings across the catalogue: the same item listed under several ids.

No n² matrix (imagededup's users hit an overnight stall at 127K images):

1. **identical photos** — listings whose image bytes hash the same are one group, no checks;
2. **candidates** — each product's ``k`` nearest neighbours by the serving embedding (batched
   vector searches) with cosine ≥ ``min_cosine`` (0.8; crops, re-exposed copies), and its two nearest
   by a 12×16 lightness layout signature (half-size and re-encoded copies, which the embedding
   can place below 0.85): this bounds the work, it decides nothing;
3. **verification** — each candidate pair's stored thumbnails are aligned and compared
   (:mod:`.compare`) and a learned rule (:mod:`.rule`) decides; pairs a person marked "not
   duplicates" are never proposed again;
4. **groups** — accepted pairs joined transitively; in each group the listing that looks
   original (the others are crops of it, then the largest photo, then the oldest listing).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from ..common.folders import replace_atomically
from ..common.progress import Progress
from ..search.view import CatalogueView
from ..vectors import VectorFilter, auto_nlist
from .compare import WIDEST, PairEvidence, PhotoPrint, compare_photos
from .rule import DuplicateRule

log = logging.getLogger("lookalike.duplicates")

NOT_DUPLICATE = "not_duplicate"
Candidate = tuple[int, int, float, bool]  # rowids (lower first), embedding cosine, search over scales
MAX_K = 20
BATCH = 1024           # queries per batched vector search
TASK_PAIRS = 1000      # pairs compared by one worker task (at most; its photos printed once per task)
IN_FLIGHT_PER_WORKER = 3  # tasks queued per worker process (their thumbnails held in memory)
PROCESS_MIN_PAIRS = 2000  # fewer pairs than this are compared in this process: starting workers costs about a second
SIGNATURE_SIZE = (12, 16)
SIGNATURE_BATCH = 5000
SIGNATURE_NEIGHBOURS = 2
SIGNATURE_FLOOR = 0.99  # layout cosine from which a pair is checked: half-size and JPEG copies sit at ≥ 0.998
SIGNATURE_EXACT_MAX = 20_000  # layouts compared all against all below this many photos, through an inverted file above
SIGNATURE_PROBES = 16   # lists an inverted-file layout search probes
CROP_COSINE = 0.88     # a pair this close in the embedding may be a crop: searched over scales (Myntra crops: 1st percentile 0.885)
CROP_RANK = 2          # ... and so may a product's nearest two neighbours, however far (crops of phone photos fall to 0.83)
CROP_SCALE = 1.03      # B's width over A's beyond which B shows A's content larger: B is the crop


class DuplicateError(ValueError):
    """Bad duplicate-search arguments; the message says which and why."""


@dataclass(frozen=True)
class DuplicateOptions:
    k: int = 5
    min_cosine: float = 0.8
    where: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.k <= MAX_K:
            raise DuplicateError(f"k={self.k}: neighbours checked per product must be 1..{MAX_K}")
        if not 0.5 <= self.min_cosine <= 1.0:
            raise DuplicateError(f"min_cosine={self.min_cosine}: must be within 0.5..1 (lower finds nothing more, only costs time)")


@dataclass
class PairFinding:
    first: str
    second: str
    cosine: float
    probability: float
    identical: bool = False
    evidence: dict[str, Any] = field(default_factory=dict)
    apart: bool = False  # the evidence says two variants (DuplicateRule.colours_differ): never grouped, even through others

    def to_dict(self) -> dict[str, Any]:
        return {"first": self.first, "second": self.second, "cosine": round(self.cosine, 6), "probability": round(self.probability, 4),
                "identical": self.identical, "evidence": self.evidence, "apart": self.apart}


@dataclass
class DuplicateGroup:
    group: int
    members: list[str]
    original: str
    pairs: list[PairFinding]

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "members": self.members, "original": self.original, "pairs": [p.to_dict() for p in self.pairs]}


@dataclass
class DuplicateReport:
    groups: list[DuplicateGroup]
    products: int
    candidates: int
    verified: int
    identical_pairs: int
    marked_skipped: int
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"products": self.products, "candidates": self.candidates, "verified": self.verified, "identical_pairs": self.identical_pairs,
                "marked_skipped": self.marked_skipped, "groups": [g.to_dict() for g in self.groups], "seconds": round(self.seconds, 2),
                "listings_in_groups": sum(len(g.members) for g in self.groups)}

    def write_csv(self, path: str | Path) -> int:
        """One row per listing in a group; written atomically."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["group", "product_id", "original", "group_size", "best_probability", "identical"])
        rows = 0
        for group in self.groups:
            for member in group.members:
                touching = [p for p in group.pairs if member in (p.first, p.second)]
                writer.writerow([group.group, member, member == group.original, len(group.members),
                                 round(max((p.probability for p in touching), default=0.0), 4), any(p.identical for p in touching)])
                rows += 1
        replace_atomically(Path(path), lambda temporary: temporary.write_text(buffer.getvalue(), encoding="utf-8"))
        return rows


@dataclass
class Survey:
    products: dict[str, Any]        # id -> Product, the listings looked at
    findings: list[PairFinding]     # identical pairs first, then every verified candidate pair
    candidates: int
    identical: int
    skipped: int                    # pairs a person marked "not duplicates"


LATEST_REPORT, LATEST_CSV = "latest.json", "latest.csv"


def save_latest(report: DuplicateReport, folder: Path) -> dict[str, Any]:
    """Keep a finished search's report (JSON and CSV) for the API and the web page; returns its summary."""
    folder.mkdir(parents=True, exist_ok=True)
    document = report.to_dict()
    replace_atomically(folder / LATEST_REPORT, lambda temporary: temporary.write_text(json.dumps(document), encoding="utf-8"))
    report.write_csv(folder / LATEST_CSV)
    return {k: v for k, v in document.items() if k != "groups"} | {"groups": len(report.groups)}


def load_latest(folder: Path) -> dict[str, Any] | None:
    """The last saved report, or None (never run, or unreadable: run it again)."""
    try:
        document = json.loads((folder / LATEST_REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) and isinstance(document.get("groups"), list) else None


class DuplicateFinder:
    """Finds duplicate listings (see the module docstring) and remembers people's verdicts."""

    def __init__(self, view: Callable[[], CatalogueView], rule: DuplicateRule | None = None, threads: int = 2):
        self._view, self._rule, self.threads = view, rule, max(1, threads)

    @property
    def rule(self) -> DuplicateRule:
        if self._rule is None:
            self._rule = DuplicateRule.load()
        return self._rule

    def find(self, options: DuplicateOptions = DuplicateOptions(), progress: Progress | None = None, rule: DuplicateRule | None = None) -> DuplicateReport:
        started, view, rule = time.perf_counter(), self._view(), rule or self.rule
        survey = self.survey(options, progress, rule)
        accepted = [f for f in survey.findings if f.identical or f.probability >= rule.threshold]
        # Pairs never to share a group: marked "not duplicates" by a person, or told apart by their colours.
        apart = {_key(f.first, f.second) for f in survey.findings if f.apart}
        apart |= {(m["first"], m["second"]) for m in view.store.pair_marks(NOT_DUPLICATE)}
        groups = _group(accepted, survey.products, view, apart)
        return DuplicateReport(groups, len(survey.products), survey.candidates, len(survey.findings) - survey.identical,
                               survey.identical, survey.skipped, time.perf_counter() - started)

    def survey(self, options: DuplicateOptions = DuplicateOptions(), progress: Progress | None = None,
               rule: DuplicateRule | None = None) -> Survey:
        """Every identical pair and every verified candidate pair with its evidence, accepted or
        not: what :meth:`find` decides on, and what ``benchmarks/duplicates.py --fit`` learns from."""
        view, rule = self._view(), rule or self.rule
        rowids = view.matching_rowids(options.where)
        products = view.store.get_by_rowids(rowids.tolist()) if len(rowids) else {}
        ids = {r: p.id for r, p in products.items()}
        hashes = {r: p.image_hash for r, p in products.items()}
        refused = {(m["first"], m["second"]) for m in view.store.pair_marks(NOT_DUPLICATE)}
        identical = _identical_pairs(hashes)
        with _Workers(self.threads) as workers:
            if len(rowids) >= PROCESS_MIN_PAIRS // 2:
                workers.start()  # the workers start up while the candidates are searched
            candidates = [pair for pair in _merged(self._candidates(view, rowids, options, progress), _layout_candidates(view, rowids, progress))
                          if pair[0] in ids and pair[1] in ids and not (hashes[pair[0]] and hashes[pair[0]] == hashes[pair[1]])]
            open_identical = [(a, b) for a, b in identical if _key(ids[a], ids[b]) not in refused]
            open_candidates = [pair for pair in candidates if _key(ids[pair[0]], ids[pair[1]]) not in refused]
            findings = [PairFinding(ids[a], ids[b], 1.0, 1.0, identical=True) for a, b in open_identical]
            findings += self._verify(view, open_candidates, ids, rule, progress, workers)
        skipped = len(identical) - len(open_identical) + len(candidates) - len(open_candidates)
        return Survey({p.id: p for p in products.values()}, findings, len(candidates), len(open_identical), skipped)

    def _candidates(self, view: CatalogueView, rowids: np.ndarray, options: DuplicateOptions,
                    progress: Progress | None) -> list[Candidate]:
        """Pairs (lower rowid first) among each product's k nearest with cosine ≥ ``min_cosine``;
        a pair is searched over scales (a possible crop) when it is close or among the nearest two."""
        backend = view.searcher.serving.backend
        if len(rowids) < 2:
            return []
        allowed = None
        if options.where:  # unfiltered searches take the backend's fast path
            mask = np.zeros(int(rowids.max()) + 1, bool)
            mask[rowids] = True
            allowed = VectorFilter(mask)
        pairs: list[Candidate] = []
        for start in range(0, len(rowids), BATCH):
            batch = rowids[start:start + BATCH]
            queries = np.stack([backend.vector(int(r)) for r in batch])
            for rowid, (found, scores) in zip(batch.tolist(), backend.search_many(queries, options.k + 1, allowed)):
                others = [(other, score) for other, score in zip(found.tolist(), scores.tolist()) if other != rowid]
                for rank, (other, score) in enumerate(others):
                    if score >= options.min_cosine:
                        pairs.append((min(rowid, other), max(rowid, other), float(score), score >= CROP_COSINE or rank < CROP_RANK))
            if progress:
                progress("candidates", min(start + BATCH, len(rowids)), len(rowids))
        return _merged(pairs)

    def _verify(self, view: CatalogueView, pairs: list[Candidate], ids: dict[int, str], rule: DuplicateRule,
                progress: Progress | None, workers: _Workers) -> list[PairFinding]:
        """Compares every pair on its thumbnails.  The comparison is Python-heavy (the GIL would
        serialise threads), so a large batch runs on worker processes, one per configured thread,
        a few tasks in flight per worker.  Pairs go out in tasks of neighbouring pairs
        (:func:`_in_local_order`) so that a photo's print, the costly part of its first comparison,
        is made in one task rather than in many."""
        # the same number of tasks per worker (none idles long at the end), as few as memory allows (a task prints its photos afresh)
        count = self.threads * max(2, -(-len(pairs) // (self.threads * TASK_PAIRS)))
        size = max(1, -(-len(pairs) // count))
        tasks = iter(_tasks(_in_local_order(pairs), size))
        compared: list[tuple[int, int, float, dict[str, Any]]] = []
        done = 0

        def payload(task: list[Candidate]) -> tuple[list[Candidate], dict[int, bytes]]:
            return task, view.store.thumbnails(sorted({r for a, b, _, _ in task for r in (a, b)}))

        def finished(rows: list[tuple[int, int, float, dict[str, Any]]], pairs_done: int) -> None:
            nonlocal done
            compared.extend(rows)
            done += pairs_done
            if progress:
                progress("verify", done, len(pairs))

        if self.threads > 1 and len(pairs) >= PROCESS_MIN_PAIRS:
            left = self._on_workers(workers.start(), tasks, payload, finished)
            tasks = iter(left)  # what the workers could not finish (a pool that broke) is compared here
        for task in tasks:
            finished(compare_batch(*payload(task)), len(task))
        compared.sort(key=lambda row: (row[0], row[1]))
        findings = []
        for a, b, cosine, measured in compared:
            evidence = PairEvidence(**measured)
            findings.append(PairFinding(ids[a], ids[b], cosine, rule.probability(evidence), evidence=evidence.to_dict(),
                                        apart=rule.colours_differ(evidence)))
        return findings

    def _on_workers(self, pool: ProcessPoolExecutor, tasks: Iterator[list[Candidate]],
                    payload: Callable[[list[Candidate]], tuple[list[Candidate], dict[int, bytes]]],
                    finished: Callable[[list[tuple[int, int, float, dict[str, Any]]], int], None]) -> list[list[Candidate]]:
        """Runs the tasks on the pool, a few in flight per worker; returns the tasks left undone if
        the pool broke (a worker killed, or a main module that spawned workers cannot import)."""
        in_flight: dict[Future[list[tuple[int, int, float, dict[str, Any]]]], list[Candidate]] = {}
        try:
            for task in itertools.islice(tasks, IN_FLIGHT_PER_WORKER * self.threads):
                in_flight[pool.submit(compare_batch, *payload(task))] = task
            while in_flight:
                ready, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in ready:
                    rows = future.result()
                    finished(rows, len(in_flight.pop(future)))
                    following = next(tasks, None)
                    if following is not None:
                        in_flight[pool.submit(compare_batch, *payload(following))] = following
        except BrokenProcessPool as exc:
            log.warning("duplicate check: worker processes failed (%s); comparing the remaining pairs in this process", exc)
            return [*in_flight.values(), *tasks]
        return []

    # ---- people's verdicts ----------------------------------------------------------------------
    def mark_not_duplicate(self, product_ids: Iterable[str], who: str) -> int:
        """Every pair among ``product_ids`` is remembered as "not duplicates" (by ``who``)."""
        members = _checked_ids(self._view(), product_ids)
        return self._view().store.mark_pairs(_all_pairs(members), NOT_DUPLICATE, who)

    def forget_marks(self, product_ids: Iterable[str]) -> int:
        members = sorted({str(i) for i in product_ids})
        return self._view().store.mark_pairs(_all_pairs(members), "", "")

    def marks(self) -> list[dict[str, Any]]:
        return self._view().store.pair_marks()


def _signature(jpeg: bytes) -> np.ndarray | None:
    """A photo's layout at 12×16 lightness, centred and normalised: resizing, re-encoding and
    moderate exposure changes leave it all but unchanged (cosine ≥ 0.998 for half-size and JPEG
    q50 copies), where the embedding lets a half-size copy drift to cosine 0.8."""
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            image.draft("L", (64, 64))  # decode at an eighth of the size when the JPEG allows
            grey = np.asarray(image.convert("L").resize(SIGNATURE_SIZE, Image.Resampling.BOX), np.float32).ravel()
    except (OSError, ValueError):
        return None
    grey -= grey.mean()
    return grey / (float(np.linalg.norm(grey)) + 1e-6)


def _layout_candidates(view: CatalogueView, rowids: np.ndarray, progress: Progress | None) -> list[Candidate]:
    """Pairs whose layout signatures are nearly equal (each product's nearest two), with their embedding cosine."""
    kept, signatures = [], []
    for start in range(0, len(rowids), SIGNATURE_BATCH):
        for rowid, jpeg in view.store.thumbnails(rowids[start:start + SIGNATURE_BATCH].tolist()).items():
            signature = _signature(jpeg)
            if signature is not None:
                kept.append(rowid)
                signatures.append(signature)
        if progress:
            progress("layouts", min(start + SIGNATURE_BATCH, len(rowids)), len(rowids))
    if len(kept) < 2:
        return []
    similarity, neighbours = nearest_layouts(np.ascontiguousarray(np.stack(signatures), dtype=np.float32), SIGNATURE_NEIGHBOURS + 1)
    backend, pairs = view.searcher.serving.backend, set()
    for i, (row_similarity, row_neighbours) in enumerate(zip(similarity, neighbours)):
        for score, j in zip(row_similarity.tolist(), row_neighbours.tolist()):
            if j != i and j >= 0 and score >= SIGNATURE_FLOOR:
                pairs.add((min(kept[i], kept[j]), max(kept[i], kept[j])))
    cosines = [(a, b, float(backend.vector(a) @ backend.vector(b))) for a, b in sorted(pairs)]
    return [(a, b, cosine, cosine >= CROP_COSINE) for a, b, cosine in cosines]


def nearest_layouts(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each signature's ``k`` most similar (itself included): exactly below SIGNATURE_EXACT_MAX, else
    through an inverted file, because all pairs grow with the square of the catalogue (about a
    minute and a half of the two cores at 100K).  The pairs wanted are near-identical layouts
    (cosine ≥ SIGNATURE_FLOOR), which fall in the same or a neighbouring list, so a few probed
    lists find them."""
    from ..common.untyped import faiss

    if len(matrix) < SIGNATURE_EXACT_MAX:
        index = faiss.IndexFlatIP(matrix.shape[1])
    else:
        nlist = auto_nlist(len(matrix))
        coarse = faiss.IndexFlatIP(matrix.shape[1])  # held here: the inverted file does not own it
        index = faiss.IndexIVFFlat(coarse, matrix.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(len(matrix), min(len(matrix), 40 * nlist), replace=False)
        index.train(matrix[np.sort(sample)])
        index.nprobe = SIGNATURE_PROBES
    index.add(matrix)
    return index.search(matrix, k)


def _merged(*sources: list[Candidate]) -> list[Candidate]:
    """One entry per pair: its cosine, searched over scales if any source asked for it."""
    merged: dict[tuple[int, int], tuple[float, bool]] = {}
    for source in sources:
        for a, b, cosine, scales in source:
            merged[(a, b)] = (cosine, scales or merged.get((a, b), (0.0, False))[1])
    return [(a, b, cosine, scales) for (a, b), (cosine, scales) in sorted(merged.items())]


class _Workers:
    """Worker processes for the comparisons, started on demand (``start``) and shut down on exit.
    Spawned, not forked: the parent holds threads (FAISS, ONNX Runtime) that a fork would copy
    mid-flight."""

    def __init__(self, count: int):
        self.count = count
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.count, mp_context=multiprocessing.get_context("spawn"))
            for _ in range(self.count):  # each worker imports this module now, not when the first pairs arrive
                self._pool.submit(_ready)
        return self._pool

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


def _ready() -> bool:
    return True


def _in_local_order(pairs: list[Candidate]) -> list[Candidate]:
    """The pairs sorted so that pairs sharing a photo sit close together: photos ordered by
    reverse Cuthill-McKee over the candidate graph (which keeps each photo's neighbours near it in
    the order), each pair placed at its earlier photo."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    if not pairs:
        return []
    nodes = sorted({r for a, b, _, _ in pairs for r in (a, b)})
    position = {rowid: i for i, rowid in enumerate(nodes)}
    rows = np.array([position[a] for a, _, _, _ in pairs])
    columns = np.array([position[b] for _, b, _, _ in pairs])
    graph = coo_matrix((np.ones(len(pairs)), (rows, columns)), shape=(len(nodes), len(nodes))).tocsr()
    order = np.empty(len(nodes), np.int64)
    order[reverse_cuthill_mckee(graph, symmetric_mode=False)] = np.arange(len(nodes))
    return sorted(pairs, key=lambda pair: (min(order[position[pair[0]]], order[position[pair[1]]]), pair[0], pair[1]))


def _tasks(pairs: list[Candidate], size: int) -> list[list[Candidate]]:
    return [pairs[i:i + size] for i in range(0, len(pairs), size)]


def compare_batch(pairs: list[Candidate], jpegs: dict[int, bytes]) -> list[tuple[int, int, float, dict[str, Any]]]:
    """Pairs compared on their thumbnails (each decoded once): (a, b, cosine, evidence fields).
    Top-level and plain-data in and out, so a worker process can run it; a pair with an
    unreadable thumbnail is left out."""
    prints = _prints(jpegs)
    return [(a, b, cosine, asdict(compare_photos(prints[a], prints[b], search_scales=scales)))
            for a, b, cosine, scales in pairs if a in prints and b in prints]


def _key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def _all_pairs(members: list[str]) -> Iterator[tuple[str, str]]:
    for i, first in enumerate(members):
        for second in members[i + 1:]:
            yield first, second


def _checked_ids(view: CatalogueView, product_ids: Iterable[str]) -> list[str]:
    members = sorted({str(i) for i in product_ids})
    if not 2 <= len(members) <= 50:
        raise DuplicateError(f"{len(members)} listings given: mark between 2 and 50 listings at a time")
    missing = [i for i in members if view.store.get(i) is None]
    if missing:
        raise DuplicateError(f"no product with id {', '.join(repr(m[:80]) for m in missing[:5])}")
    return members


def _identical_pairs(hashes: dict[int, str | None]) -> list[tuple[int, int]]:
    by_hash: dict[str, list[int]] = {}
    for rowid, digest in hashes.items():
        if digest:
            by_hash.setdefault(digest, []).append(rowid)
    return [(group[0], other) for group in by_hash.values() if len(group) > 1 for other in sorted(group)[1:]]


def _prints(jpegs: dict[int, bytes]) -> dict[int, PhotoPrint]:
    """Stored thumbnails (every product has one, whatever its source), ready to compare; unreadable ones left out."""
    photos: dict[int, PhotoPrint] = {}
    for rowid, jpeg in jpegs.items():
        try:
            with Image.open(io.BytesIO(jpeg)) as image:
                image.draft("RGB", (WIDEST, WIDEST))  # a JPEG decoded straight at the size the comparison needs: cheaper than decoding and shrinking
                photos[rowid] = PhotoPrint(image)
        except (OSError, ValueError):
            continue
    return photos


def _group(findings: list[PairFinding], products: dict[str, Any], view: CatalogueView,
           apart: set[tuple[str, str]] | None = None) -> list[DuplicateGroup]:
    """Accepted pairs joined into groups, strongest first, never joining two listings that are
    ``apart`` (a person said so, or their colours did) through a chain of others; a pair whose
    join would do that is left out of the groups."""
    parent: dict[str, str] = {}
    barred: dict[str, set[str]] = {}  # per listing: the listings it must never share a group with
    for first, second in apart or ():
        barred.setdefault(first, set()).add(second)
        barred.setdefault(second, set()).add(first)
    inside: dict[str, set[str]] = {}  # per group root: its members

    def root(item: str) -> str:
        parent.setdefault(item, item)
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    joined = []
    for finding in sorted(findings, key=lambda f: (not f.identical, -f.probability)):
        a, b = root(finding.first), root(finding.second)
        if a != b:
            group_a, group_b = inside.setdefault(a, {a}), inside.setdefault(b, {b})
            if len(group_a) > len(group_b):
                a, b, group_a, group_b = b, a, group_b, group_a
            if any(barred.get(item, set()) & group_b for item in group_a):
                continue
            parent[a] = b
            group_b |= inside.pop(a)
        joined.append(finding)
    grouped = {item for finding in joined for item in (finding.first, finding.second)}
    members: dict[str, list[str]] = {}
    for item in grouped:
        members.setdefault(root(item), []).append(item)
    pairs_of: dict[str, list[PairFinding]] = {}
    for finding in joined:  # one pass: a scan of every finding per group is quadratic on a large catalogue
        pairs_of.setdefault(root(finding.first), []).append(finding)
    sizes = _thumbnail_sizes(view, [products[item].rowid for item in grouped])
    groups = []
    for number, (top, listed) in enumerate(sorted(members.items(), key=lambda kv: min(products[i].rowid for i in kv[1])), start=1):
        listed.sort(key=lambda i: products[i].rowid)
        groups.append(DuplicateGroup(number, listed, _original(listed, pairs_of[top], products, sizes), pairs_of[top]))
    return groups


def _original(members: list[str], pairs: list[PairFinding], products: dict[str, Any], sizes: dict[int, int]) -> str:
    """The listing the others look derived from: others are crops of it, then the larger photo, then the oldest."""
    covers = dict.fromkeys(members, 0)
    for pair in pairs:
        scale = float(pair.evidence.get("scale", 1.0))
        if scale < 1 / CROP_SCALE:
            covers[pair.first] += 1   # the second fits inside the first at a smaller width: a crop of it
        elif scale > CROP_SCALE:
            covers[pair.second] += 1
    return max(members, key=lambda m: (covers[m], sizes.get(products[m].rowid, 0), -products[m].rowid))


def _thumbnail_sizes(view: CatalogueView, rowids: list[int]) -> dict[int, int]:
    """Pixels per stored thumbnail (only the JPEG headers are read), in batches."""
    sizes: dict[int, int] = {}
    for start in range(0, len(rowids), SIGNATURE_BATCH):
        sizes.update((rowid, _pixels(jpeg)) for rowid, jpeg in view.store.thumbnails(rowids[start:start + SIGNATURE_BATCH]).items())
    return sizes


def _pixels(jpeg: bytes) -> int:
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            return image.width * image.height
    except (OSError, ValueError):
        return 0
