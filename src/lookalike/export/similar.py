"""Similar items for every product, written to a file: the batch form of ``similar``.

A shop shows "similar items" on every product page from a table it loads into its own site, as
ShopAI did.  This writes that table (Parquet, CSV or JSON Lines) under business rules:

* ``where`` — which products may be recommended (``stock>0``); ``for_where`` — which products get
  a list (default: all);
* ``same`` — columns a result must share with the product (``gender``);
* ``cap`` — at most N results per value of a column (``brand=2``), for diversity;
* ``exclude_duplicates`` — listings of the very same photo (same image hash, or cosine ≥ 0.9999)
  are left out: a shopper gains nothing from seeing the product again under another id.

**Incremental**: next to the output a work folder keeps the lists and the store generation they
were computed at.  The next export with the same rules recomputes only the lists that can have
changed — products written or deleted since, lists that named one of them, and products a new or
changed product now outranks the last of (checked exactly against each list's k-th score) — and
rewrites the file.  **Resumable**: the lists to compute are cut into chunks, each saved as it
finishes; an export killed mid-run resumes from the last saved chunk while the store has not
changed.  Every file is replaced atomically: a kill never leaves a half-written table.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..common.folders import replace_atomically
from ..common.progress import Progress
from ..search.filters import parse_where
from ..search.view import CatalogueView
from ..vectors import VectorFilter

EXPORT_FORMATS = (".parquet", ".csv", ".jsonl")
STATE_VERSION = 1
MAX_K = 100
CHUNK = 2048               # lists computed and saved together (the unit of resuming)
DUPLICATE_COSINE = 0.9999  # at or above: the same photo, re-encoded at most
SPARE_DUPLICATES = 2       # candidates fetched beyond k (and the product itself) for duplicate photos to drop
WORKERS = 2


class ExportError(ValueError):
    """Bad export arguments or a work folder that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class SimilarRules:
    k: int = 12
    where: tuple[str, ...] = ()
    for_where: tuple[str, ...] = ()
    same: tuple[str, ...] = ()
    cap_column: str | None = None
    cap: int = 0
    exclude_duplicates: bool = True

    @classmethod
    def parse(cls, k: int = 12, where: Iterable[str] | str | None = None, for_where: Iterable[str] | str | None = None,
              same: Iterable[str] | str | None = None, cap: str | None = None, exclude_duplicates: bool = True) -> SimilarRules:
        """Rules from user input (``cap`` as ``"brand=2"``), refused with the reason when malformed."""
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise ExportError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        cap_column, cap_n = None, 0
        if cap:
            column, sep, number = str(cap).partition("=")
            if not sep or not column.strip() or not number.strip().isdigit() or not 1 <= int(number) <= k:
                raise ExportError(f"cap must be column=N with N from 1 to k ({k}), e.g. brand=2; got {cap!r}")
            cap_column, cap_n = column.strip(), int(number)
        rules = cls(k, _strings(where, "where"), _strings(for_where, "for"), _strings(same, "same"), cap_column, cap_n, bool(exclude_duplicates))
        for clauses in (rules.where, rules.for_where):
            parse_where(clauses)  # FilterError names the bad clause
        return rules

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _strings(value: Iterable[str] | str | None, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    if len(items) > 20 or not all(isinstance(v, str) and 0 < len(v.strip()) <= 500 for v in items):
        raise ExportError(f"{name}: at most 20 non-empty strings of at most 500 characters")
    return tuple(v.strip() for v in items)


@dataclass
class SimilarExportReport:
    path: str
    mode: str              # "full", "incremental" or "resumed"
    products: int          # products with a list in the file
    recomputed: int        # lists computed in this run
    reused: int            # lists carried over from the last export
    rows: int              # (product, similar item) rows written
    short_lists: int       # products with fewer than k results (rules left too few candidates)
    seconds: float
    generation: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Lists:
    rowids: np.ndarray      # (n,) int64
    neighbours: np.ndarray  # (n, k) int64, -1 where a list is short
    scores: np.ndarray      # (n, k) float32

    @classmethod
    def empty(cls, k: int) -> _Lists:
        return cls(np.zeros(0, np.int64), np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))

    def save(self, path: Path) -> None:
        replace_atomically(path, lambda temporary: np.savez(temporary, rowids=self.rowids, neighbours=self.neighbours, scores=self.scores),
                           suffix=".npz")

    @classmethod
    def load(cls, path: Path) -> _Lists:
        with np.load(path) as data:
            return cls(data["rowids"], data["neighbours"], data["scores"])


class _Catalogue:
    """What the rules need per product, read once: id, image hash and the rule columns' values."""

    def __init__(self, view: CatalogueView, rules: SimilarRules, live: np.ndarray):
        self.capacity = len(live)
        self.ids = np.empty(self.capacity, dtype=object)
        self.hashes = np.empty(self.capacity, dtype=object)
        columns = [*rules.same, *([rules.cap_column] if rules.cap_column else [])]
        self.codes = {c: np.full(self.capacity, -1, np.int64) for c in columns}
        vocab: dict[str, dict[str, int]] = {c: {} for c in columns}
        rowids = np.flatnonzero(live).tolist()
        for start in range(0, len(rowids), 5000):
            for rowid, product in view.store.get_by_rowids(rowids[start:start + 5000]).items():
                self.ids[rowid], self.hashes[rowid] = product.id, product.image_hash
                for column in columns:
                    value = product.metadata.get(column)
                    if value is not None and str(value).strip():
                        self.codes[column][rowid] = vocab[column].setdefault(str(value).strip().lower(), len(vocab[column]))
        self.known = np.zeros(self.capacity, bool)
        self.known[[r for r in rowids if self.ids[r] is not None]] = True


class SimilarExport:
    """Writes every product's similar items under :class:`SimilarRules` (see the module docstring)."""

    def __init__(self, view: Callable[[], CatalogueView]):
        self._view = view
        self._running = threading.Lock()  # one export at a time per engine: they share ``self.view``

    def similar(self, out: str | Path, k: int = 12, where: Iterable[str] | str | None = None, for_where: Iterable[str] | str | None = None,
                same: Iterable[str] | str | None = None, cap: str | None = None, exclude_duplicates: bool = True, incremental: bool = True,
                progress: Progress | None = None) -> SimilarExportReport:
        """Every product's ``k`` most similar products, written to ``out`` (.parquet, .csv or .jsonl);
        only what changed since the last export to ``out`` is recomputed unless ``incremental`` is False."""
        return self.run(out, SimilarRules.parse(k, where, for_where, same, cap, exclude_duplicates), incremental, progress)

    def check(self, rules: SimilarRules) -> None:
        """Refuse rules naming columns the catalogue does not have (ExportError), before any work."""
        self._check_columns(rules, self._view())

    def run(self, out: str | Path, rules: SimilarRules, incremental: bool = True, progress: Progress | None = None) -> SimilarExportReport:
        with self._running:
            self.view = self._view()
            return self._run(Path(out), rules, incremental, progress)

    def _run(self, out: Path, rules: SimilarRules, incremental: bool, progress: Progress | None) -> SimilarExportReport:
        started = time.perf_counter()
        if out.suffix.lower() not in EXPORT_FORMATS:
            raise ExportError(f"{out.name}: the output must end in {', '.join(EXPORT_FORMATS)}")
        if out.is_dir():
            raise ExportError(f"{out}: is a folder; give a file name ending in {', '.join(EXPORT_FORMATS)}")
        out.parent.mkdir(parents=True, exist_ok=True)
        view = self.view
        view.searcher.serving.sync()
        self._check_columns(rules, view)
        generation = view.store.generation
        live = view.live_mask()
        catalogue = _Catalogue(view, rules, live)
        work = out.with_name(f".{out.name}.lookalike")
        work.mkdir(exist_ok=True)
        identity = {"version": STATE_VERSION, "rules": rules.fingerprint(), "encoder": view.encoder.identity}
        previous, since = self._previous(work, identity, rules.k) if incremental else (None, None)
        targets = self._targets(rules, catalogue)
        todo, mode, resumed = self._resume(work, identity, generation)
        notes: list[str] = []
        if todo is None:
            if previous is None or since is None:
                todo, mode = targets, "full"
            else:
                todo, mode = self._to_update(previous, since, targets, catalogue, rules), "incremental"
            self._start_run(work, identity, generation, todo)
        elif resumed:
            notes.append(f"resumed: {resumed} chunks of {CHUNK} lists were already computed")
        computed = self._compute(work, todo, rules, catalogue, progress)
        lists = self._merge(previous, computed, targets, rules.k)
        rows = self._write(out, lists, catalogue)
        lists.save(work / "lists.npz")
        _write_json(work / "state.json", {**identity, "generation": generation, "products": len(lists.rowids), "written_at": time.time()})
        (work / "run.json").unlink(missing_ok=True)
        shutil.rmtree(work / "parts", ignore_errors=True)
        (work / "todo.npy").unlink(missing_ok=True)
        short = int(np.count_nonzero(lists.neighbours[:, -1] < 0)) if len(lists.rowids) else 0
        if short:
            notes.append(f"{short} products have fewer than {rules.k} similar items: the rules leave too few candidates")
        return SimilarExportReport(str(out), mode, len(lists.rowids), len(todo), len(lists.rowids) - int(np.isin(lists.rowids, todo).sum()),
                                   rows, short, round(time.perf_counter() - started, 2), generation, notes)

    # ---- what to compute ---------------------------------------------------------------------
    @staticmethod
    def _check_columns(rules: SimilarRules, view: CatalogueView) -> None:
        known = set(view.column_names())
        for column in [*rules.same, *([rules.cap_column] if rules.cap_column else [])]:
            if column not in known:
                raise ExportError(f"{column!r} is not a column of this catalogue; columns: {', '.join(sorted(known)[:40])}")

    def _targets(self, rules: SimilarRules, catalogue: _Catalogue) -> np.ndarray:
        """Rowids of the products that get a list."""
        rows = self.view.matching_rowids(rules.for_where)
        return rows[catalogue.known[rows]] if len(rows) else rows

    @staticmethod
    def _previous(work: Path, identity: dict[str, Any], k: int) -> tuple[_Lists | None, int | None]:
        state = _read_json(work / "state.json")
        if not state or any(state.get(key) != value for key, value in identity.items()) or not (work / "lists.npz").is_file():
            return None, None
        try:
            lists = _Lists.load(work / "lists.npz")
        except (OSError, ValueError, KeyError):
            return None, None  # unreadable: computed afresh, never trusted
        generation = state.get("generation")
        if lists.neighbours.shape[1:] != (k,) or not isinstance(generation, int) or isinstance(generation, bool):
            return None, None  # a state that does not say when its lists were computed cannot be updated from
        return lists, generation

    def _resume(self, work: Path, identity: dict[str, Any], generation: int) -> tuple[np.ndarray | None, str, int]:
        run = _read_json(work / "run.json")
        if not run or any(run.get(key) != value for key, value in identity.items()) or run.get("generation") != generation:
            shutil.rmtree(work / "parts", ignore_errors=True)  # another run's chunks, or the store moved on since
            return None, "", 0
        try:
            todo = np.load(work / "todo.npy")
        except (OSError, ValueError):
            return None, "", 0
        return todo, "resumed", len(list((work / "parts").glob("part-*.npz")))

    @staticmethod
    def _start_run(work: Path, identity: dict[str, Any], generation: int, todo: np.ndarray) -> None:
        shutil.rmtree(work / "parts", ignore_errors=True)
        (work / "parts").mkdir()
        replace_atomically(work / "todo.npy", lambda temporary: np.save(temporary, todo), suffix=".npy")
        _write_json(work / "run.json", {**identity, "generation": generation, "chunk": CHUNK})

    def _to_update(self, previous: _Lists, since: int, targets: np.ndarray, catalogue: _Catalogue, rules: SimilarRules) -> np.ndarray:
        """The lists that can differ from the last export's (see the module docstring)."""
        store = self.view.store
        written = list(store.iter_vectors(since_gen=since))
        changed = np.concatenate([rowids for rowids, _, _ in written] or [np.zeros(0, np.int64)])
        gone = np.union1d(store.tombstones_since(since), changed)
        update = np.setdiff1d(targets, previous.rowids)                          # products without a list yet
        update = np.union1d(update, np.intersect1d(changed, targets))            # products that changed
        named = np.isin(previous.neighbours, gone).any(axis=1)                  # lists naming a changed or deleted product
        update = np.union1d(update, previous.rowids[named])
        # changed products that are live in this export's snapshot (a write after it started is the next export's)
        incoming = np.concatenate([vectors for _, vectors, _ in written]) if written else np.zeros((0, 0), np.float32)
        live = changed < catalogue.capacity
        live[live] = catalogue.known[changed[live]]
        still = np.isin(previous.rowids, targets)  # listed last time and still to be listed
        if live.any() and still.any():
            kept = _Lists(previous.rowids[still], previous.neighbours[still], previous.scores[still])
            update = np.union1d(update, self._outranked(kept, incoming[live], rules.k))
        return np.intersect1d(update, targets)

    def _outranked(self, previous: _Lists, incoming: np.ndarray, k: int) -> np.ndarray:
        """Products that one of the ``incoming`` (changed products') vectors is now closer to than
        the last item of their list."""
        backend = self.view.searcher.serving.backend
        if len(incoming) > max(1000, len(previous.rowids) // 4):
            return previous.rowids  # so much changed that checking costs more than recomputing
        last = np.where(previous.neighbours[:, k - 1] >= 0, previous.scores[:, k - 1], -np.inf)
        hit = np.zeros(len(previous.rowids), bool)
        for start in range(0, len(previous.rowids), 8192):
            rows = previous.rowids[start:start + 8192]
            vectors = np.stack([backend.vector(int(r)) for r in rows])
            hit[start:start + len(rows)] = (vectors @ incoming.T).max(axis=1) >= last[start:start + len(rows)] - 1e-6
        return previous.rowids[hit]

    # ---- computing lists ---------------------------------------------------------------------
    def _compute(self, work: Path, todo: np.ndarray, rules: SimilarRules, catalogue: _Catalogue, progress: Progress | None) -> _Lists:
        chunks = [todo[i:i + CHUNK] for i in range(0, len(todo), CHUNK)]
        parts = work / "parts"
        parts.mkdir(exist_ok=True)
        lister = _Lister(self.view, rules, catalogue)
        done = sum(len(c) for i, c in enumerate(chunks) if (parts / f"part-{i:06d}.npz").is_file())
        if progress:
            progress("similar lists", done, len(todo))

        def one(index: int) -> int:
            path = parts / f"part-{index:06d}.npz"
            if path.is_file():
                return 0
            rows = chunks[index]
            neighbours, scores = lister.lists_for(rows)
            _Lists(rows, neighbours, scores).save(path)
            return len(rows)

        with ThreadPoolExecutor(WORKERS) as pool:
            for finished in pool.map(one, range(len(chunks))):
                done += finished
                if progress and finished:
                    progress("similar lists", done, len(todo))
        loaded = [_Lists.load(parts / f"part-{i:06d}.npz") for i in range(len(chunks))]
        if not loaded:
            return _Lists.empty(rules.k)
        return _Lists(np.concatenate([p.rowids for p in loaded]), np.concatenate([p.neighbours for p in loaded]), np.concatenate([p.scores for p in loaded]))

    @staticmethod
    def _merge(previous: _Lists | None, computed: _Lists, targets: np.ndarray, k: int) -> _Lists:
        """The new lists, plus the previous ones still valid, for exactly the current targets."""
        keep = previous if previous is not None else _Lists.empty(k)
        carried = np.isin(keep.rowids, targets) & ~np.isin(keep.rowids, computed.rowids)
        rowids = np.concatenate([keep.rowids[carried], computed.rowids])
        order = np.argsort(rowids, kind="stable")
        return _Lists(rowids[order], np.concatenate([keep.neighbours[carried], computed.neighbours])[order],
                      np.concatenate([keep.scores[carried], computed.scores])[order])

    # ---- writing ---------------------------------------------------------------------------------
    def _write(self, out: Path, lists: _Lists, catalogue: _Catalogue) -> int:
        valid = lists.neighbours >= 0
        counts = valid.sum(axis=1)
        ranks = (np.cumsum(valid, axis=1))[valid]
        scores = np.round(lists.scores[valid].astype(np.float64), 5)
        similar_ids = catalogue.ids[lists.neighbours[valid]]

        def jsonl(temporary: Path) -> None:
            with temporary.open("w", encoding="utf-8") as handle:
                position = 0
                for rowid, count in zip(lists.rowids.tolist(), counts.tolist()):
                    items = [{"id": similar_ids[position + i], "score": float(scores[position + i])} for i in range(count)]
                    handle.write(json.dumps({"id": catalogue.ids[rowid], "similar": items}, ensure_ascii=False) + "\n")
                    position += count

        def table(temporary: Path) -> None:
            import pyarrow as pa

            rows = pa.table({"product_id": pa.array(catalogue.ids[np.repeat(lists.rowids, counts)].tolist(), pa.string()),
                             "rank": pa.array(ranks, pa.int16()), "similar_id": pa.array(similar_ids.tolist(), pa.string()),
                             "score": pa.array(scores, pa.float32())})
            if out.suffix.lower() == ".parquet":
                import pyarrow.parquet as pq

                pq.write_table(rows, temporary)
            else:
                import pyarrow.csv as pcsv

                pcsv.write_csv(rows, temporary)

        replace_atomically(out, jsonl if out.suffix.lower() == ".jsonl" else table)
        return int(valid.sum())


class _Lister:
    """One product's list under the rules: nearest allowed products, duplicates and capped values skipped."""

    def __init__(self, view: CatalogueView, rules: SimilarRules, catalogue: _Catalogue):
        self.rules, self.catalogue = rules, catalogue
        self.backend = view.searcher.serving.backend
        allowed = view.matching_rowids(rules.where)
        self.allowed = np.zeros(catalogue.capacity, bool)
        self.allowed[allowed[allowed < catalogue.capacity]] = True
        self.allowed &= catalogue.known
        self._masks: dict[tuple[int, ...], np.ndarray] = {}

    def _mask_for(self, rowid: int) -> np.ndarray:
        key = self._key(rowid)
        mask = self._masks.get(key)
        if mask is None:
            mask = self.allowed.copy()
            for column, code in zip(self.rules.same, key):
                if code >= 0:  # a product without the value is not held to it
                    mask &= self.catalogue.codes[column] == code
            if len(self._masks) < 4096:
                self._masks[key] = mask
        return mask

    def lists_for(self, rowids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lists of many products: batched searches per group of products sharing their
        candidates (same ``same`` values), the product itself dropped from its own results; the
        lists the rules thin out below k are fetched again together, four times deeper."""
        k = self.rules.k
        neighbours, scores = np.full((len(rowids), k), -1, np.int64), np.zeros((len(rowids), k), np.float32)
        groups: dict[tuple[int, ...], list[int]] = {}
        for position, rowid in enumerate(rowids.tolist()):
            groups.setdefault(self._key(rowid), []).append(position)
        for positions in groups.values():
            mask = self._mask_for(int(rowids[positions[0]]))
            available = int(np.count_nonzero(mask))
            fetch = min(available, self._first_fetch())
            while positions and fetch > 0:
                queries = np.stack([self.backend.vector(int(rowids[p])) for p in positions])
                short = []
                for position, (ids, found) in zip(positions, self.backend.search_many(queries, fetch, VectorFilter(mask))):
                    picked = self._pick(int(rowids[position]), ids, found)
                    for i, (neighbour, score) in enumerate(picked):
                        neighbours[position, i], scores[position, i] = neighbour, score
                    if len(picked) < k and len(ids) >= fetch:
                        short.append(position)
                if fetch >= available:
                    break
                positions, fetch = short, min(available, fetch * 4)
        return neighbours, scores

    def _first_fetch(self) -> int:
        """Candidates asked for first: k, the product itself, a few spare for duplicates and, with a
        cap, k more (a capped brand drops some); a list still short is fetched again, deeper."""
        rules = self.rules
        return rules.k + 1 + (SPARE_DUPLICATES if rules.exclude_duplicates else 0) + (rules.k if rules.cap else 0)

    def _key(self, rowid: int) -> tuple[int, ...]:
        return tuple(int(self.catalogue.codes[c][rowid]) for c in self.rules.same)

    def _pick(self, rowid: int, ids: np.ndarray, scores: np.ndarray) -> list[tuple[int, float]]:
        rules, catalogue = self.rules, self.catalogue
        own_hash = catalogue.hashes[rowid]
        per_value: dict[int, int] = {}
        out = []
        for neighbour, score in zip(ids.tolist(), scores.tolist()):
            if neighbour == rowid:
                continue
            if rules.exclude_duplicates and (score >= DUPLICATE_COSINE or (own_hash and catalogue.hashes[neighbour] == own_hash)):
                continue
            if rules.cap_column:
                value = int(catalogue.codes[rules.cap_column][neighbour])
                if value >= 0:
                    if per_value.get(value, 0) >= rules.cap:
                        continue
                    per_value[value] = per_value.get(value, 0) + 1
            out.append((neighbour, score))
            if len(out) == rules.k:
                break
        return out


def _write_json(path: Path, value: dict[str, Any]) -> None:
    replace_atomically(path, lambda temporary: temporary.write_text(json.dumps(value, indent=1), encoding="utf-8"))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


__all__ = ["EXPORT_FORMATS", "ExportError", "SimilarExport", "SimilarExportReport", "SimilarRules"]
