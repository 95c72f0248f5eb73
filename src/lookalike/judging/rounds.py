"""Judging rounds: people compare two configurations' results, blind.

No metric says what shoppers like, so, as Datascope's "Dope or Nope" and ShopAI's five-point
ratings did, people look.  A round fixes everything judges see before the first vote: a seeded
sample of catalogue products as queries and, for each, both configurations' top ``k`` (computed
from the vectors the store holds, through each configuration's own index: flat, an IVF factory
string with its nprobe, learned codes).  Judges then get one task at a time:

* ``pair`` — the query and both rows, sides shuffled per task: left better, right better, same;
* ``single`` — the query and one configuration's row (picked at random): dope or nope;
* ``rating`` — the query and one row: 1 (poor) to 5 (very good).

The round is a JSON file in ``STORE/judging/`` written once, atomically; votes go to the store's
``votes`` table, one transaction each.  Names of configurations never reach the judge's page.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..common.folders import replace_atomically
from ..search.view import CatalogueView
from ..vectors.scoring import ConfigIndex  # the evaluation's scorer: flat, IVF or codes, as configured
from .leaderboard import leaderboard

MODES = ("pair", "single", "rating")
CHOICES = {"pair": ("left", "right", "same"), "single": ("dope", "nope"), "rating": ("1", "2", "3", "4", "5")}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
CONFIG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,39}")
INDEX = re.compile(r"flat|[A-Za-z0-9,_]{1,100}")
CONFIG_KEYS = {"name", "model", "encoder", "index", "nprobe", "rerank_factor", "code_search"}
MAX_QUERIES, MAX_K = 500, 24


class JudgingError(ValueError):
    """A round, configuration or vote that cannot be used; the message says which and why."""


class UnknownRound(JudgingError):
    """No round of that name in this store."""


@dataclass(frozen=True)
class JudgeConfig:
    """One configuration under judgement: the vectors of ``model`` (empty: the serving model)
    searched through ``index`` (``flat`` or a FAISS factory string such as ``IVF64,Flat``)."""

    name: str
    model: str = ""
    index: str = "flat"
    nprobe: int = 16
    rerank_factor: int = 0
    code_search: str = "off"

    @classmethod
    def parse(cls, data: Any) -> JudgeConfig:
        if not isinstance(data, dict):
            raise JudgingError("a configuration is a mapping: name, model, index, nprobe, rerank_factor, code_search")
        unknown = sorted(set(map(str, data)) - CONFIG_KEYS)
        if unknown:
            raise JudgingError(f"configuration: unknown key(s) {', '.join(unknown)[:200]}; known: {', '.join(sorted(CONFIG_KEYS))}")
        name = str(data.get("name", ""))
        if not CONFIG_NAME.fullmatch(name):
            raise JudgingError(f"configuration name {name[:60]!r}: 1-40 letters, digits, spaces, '.', '_' or '-'")
        model = str(data.get("model", data.get("encoder", "")) or "")
        index = str(data.get("index", "flat"))
        if not INDEX.fullmatch(index) or index == "auto":
            raise JudgingError(f"configuration {name!r}: index {index[:60]!r} must be 'flat' or a FAISS factory string (IVF64,Flat)")
        code_search = str(data.get("code_search", "off"))
        if code_search not in ("off", "adc", "sdc"):
            raise JudgingError(f"configuration {name!r}: code_search must be off, adc or sdc")
        numbers = {}
        for key, low, high, default in (("nprobe", 1, 4096, 16), ("rerank_factor", 0, 100, 0)):
            value = data.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise JudgingError(f"configuration {name!r}: {key} must be a whole number {low}..{high}")
            numbers[key] = value
        return cls(name, model[:200], index, numbers["nprobe"], numbers["rerank_factor"], code_search)


@dataclass
class Round:
    name: str
    mode: str
    k: int
    configs: list[JudgeConfig]
    queries: list[dict[str, Any]]          # {"id": product id, "lists": [[ids of config 0], [ids of config 1]]}
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "k": self.k, "configs": [asdict(c) for c in self.configs], "queries": self.queries,
                "created": self.created}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Round:
        return cls(data["name"], data["mode"], int(data["k"]), [JudgeConfig(**c) for c in data["configs"]], data["queries"], data["created"])

    def task(self, judge: str, done: set[str], seed: int | None = None) -> dict[str, Any] | None:
        """The next task for a judge: a query they have not judged, sides or row shuffled; None when all are done."""
        left = [q for q in self.queries if q["id"] not in done]
        if not left:
            return None
        rng = random.Random(seed if seed is not None else f"{self.name}:{judge}:{len(done)}:{time.time_ns()}")
        query = rng.choice(left)
        order = [0, 1]
        rng.shuffle(order)
        shown = order if self.mode == "pair" else order[:1]
        return {"query": query["id"], "shown": shown, "rows": [query["lists"][i] for i in shown], "choices": list(CHOICES[self.mode])}


def checked_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise JudgingError(f"round name {name[:80]!r}: 1-64 letters, digits, '-' and '_'")
    return name


class Rounds:
    """The rounds of one store: created from its vectors, kept as files, judged into its votes table."""

    def __init__(self, view: Any):
        self._view = view

    @property
    def folder(self) -> Path:
        return Path(self._view().directory) / "judging"

    def create(self, name: str, configs: list[JudgeConfig], queries: int = 40, k: int = 8, mode: str = "pair",
               where: list[str] | None = None, seed: int = 0) -> Round:
        checked_name(name)
        if mode not in MODES:
            raise JudgingError(f"mode {mode[:40]!r}: one of {', '.join(MODES)}")
        if len(configs) != 2 or configs[0].name == configs[1].name:
            raise JudgingError("a round compares exactly two configurations with different names")
        if not 1 <= queries <= MAX_QUERIES or not 1 <= k <= MAX_K:
            raise JudgingError(f"queries must be 1..{MAX_QUERIES} and k 1..{MAX_K}")
        path = self.folder / f"{name}.json"
        if path.exists():
            raise JudgingError(f"a round named {name!r} exists already: votes stay with the round they were cast in; pick another name")
        view = self._view()
        rowids = view.matching_rowids(where)
        if len(rowids) <= k:
            raise JudgingError(f"{len(rowids)} products match: a round needs more than k={k}")
        picked = sorted(np.random.default_rng(seed).choice(len(rowids), min(queries, len(rowids)), replace=False).tolist())
        lists = [_top_lists(view, rowids, picked, k, config) for config in configs]
        ids = {r: p.id for r, p in view.store.get_by_rowids(rowids.tolist()).items()}
        round_ = Round(name, mode, k, configs, [{"id": ids[int(rowids[p])], "lists": [[ids[int(rowids[j])] for j in ranked[i] if j >= 0] for ranked in lists]}
                                               for i, p in enumerate(picked)])
        self.folder.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, lambda temporary: temporary.write_text(json.dumps(round_.to_dict()), encoding="utf-8"))
        return round_

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.json")) if self.folder.is_dir() else []

    def get(self, name: str) -> Round:
        path = self.folder / f"{checked_name(name)}.json"
        try:
            return Round.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise UnknownRound(f"no judging round named {name!r}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise JudgingError(f"judging round {name!r} cannot be read ({exc})") from exc

    def vote(self, name: str, query: str, shown: list[int], choice: str, judge: str) -> dict[str, Any]:
        """Record one judge's vote on one task; a judge votes once per query."""
        round_ = self.get(name)
        if query not in {q["id"] for q in round_.queries}:
            raise JudgingError(f"query {query[:80]!r} is not in round {name!r}")
        expected = 2 if round_.mode == "pair" else 1
        if len(shown) != expected or sorted(set(shown)) != sorted(shown) or any(s not in (0, 1) for s in shown):
            raise JudgingError(f"shown must list {expected} configuration position(s) (0 or 1)")
        if choice not in CHOICES[round_.mode]:
            raise JudgingError(f"choice {choice[:20]!r}: one of {', '.join(CHOICES[round_.mode])} in a {round_.mode} round")
        who = (judge.strip() or "anonymous")[:100]
        if not self._view().store.add_vote(name, query, json.dumps(shown), choice, who):
            raise JudgingError(f"{who} has already judged query {query[:80]!r} in round {name!r}")
        return {"round": name, "query": query, "choice": choice, "judge": who}

    def votes(self, name: str) -> list[dict[str, Any]]:
        round_ = self.get(name)
        rows = self._view().store.votes(name)
        for row in rows:
            shown = json.loads(row.pop("shown"))
            row["shown"] = [round_.configs[i].name for i in shown]
        return rows

    def standings(self, name: str) -> dict[str, Any]:
        round_ = self.get(name)
        return {"round": name, **leaderboard(round_.mode, [c.name for c in round_.configs], self.votes(name))}

    def judged_by(self, name: str, judge: str) -> set[str]:
        return {v["query"] for v in self._view().store.votes(name) if v["judge"] == judge}


def _top_lists(view: CatalogueView, rowids: np.ndarray, picked: list[int], k: int, config: JudgeConfig) -> np.ndarray:
    """Each picked query's top k among ``rowids`` (positions), itself left out, as ``config`` searches."""
    vectors = _vectors(view, rowids, config.model)
    quantizer = getattr(view.encoder, "quantizer", None) if not config.model else None
    settings = view.settings.replace(index=config.index, nprobe=config.nprobe, rerank_factor=config.rerank_factor,
                                     code_search=config.code_search)
    try:
        index = ConfigIndex.build(SimpleNamespace(ids=list(range(len(rowids))), vectors=vectors), settings,  # type: ignore[arg-type]
                                  quantizer if config.code_search != "off" else None)
    except (RuntimeError, ValueError) as exc:  # FAISS refuses a factory string it cannot build
        raise JudgingError(f"configuration {config.name!r}: index {config.index!r} cannot be built here ({str(exc)[:200]})") from exc
    lists = np.full((len(picked), k), -1, np.int64)
    for row, position in enumerate(picked):  # the configuration's own answer, as a shopper would get it
        found, _ = index.index.search(vectors[position], k + 1)
        ranked = [int(i) for i in found if int(i) != position][:k]
        lists[row, :len(ranked)] = ranked
    return lists


def _vectors(view: CatalogueView, rowids: np.ndarray, model: str) -> np.ndarray:
    if not model or model in (view.encoder.identity, view.encoder.name):
        return np.stack([view.vector(int(r)) for r in rowids]).astype(np.float32)
    kept = view.store.kept_encoders()
    if model not in kept:
        raise JudgingError(f"model {model[:80]!r}: the store holds vectors of {', '.join([view.encoder.identity, *kept])} only "
                           "(re-index to a model to keep its vectors)")
    stored = view.store.model_vectors(model, rowids.tolist())
    missing = len(rowids) - len(stored)
    if missing:
        raise JudgingError(f"model {model!r} has no vectors for {missing} of the {len(rowids)} products; re-index to it first")
    return np.stack([stored[int(r)][1] for r in rowids]).astype(np.float32)


def votes_csv(votes: list[dict[str, Any]]) -> str:
    """Votes as CSV: a people-judged evaluation set (which configuration was preferred for which query)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["query", "judge", "shown", "choice", "at"])
    for vote in votes:
        writer.writerow([vote["query"], vote["judge"], " | ".join(vote["shown"]), vote["choice"], time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(vote["at"]))])
    return buffer.getvalue()
