"""Metadata filters: ``--where "article_type=Shirts" --where "price<50"``.

A clause is ``column OP value`` with OP one of ``= != < <= > >=``; ``=`` and ``!=`` accept
alternatives separated by ``|`` (``colour=Red|Navy Blue``).  Text matches ignore case.
Clauses are ANDed.

Filtering runs in memory on columnar arrays indexed by the store's rowid: text columns are
dictionary-encoded (one int32 code per product), numeric values are float64 (NaN where a
product has none).  One clause over a million products is one vectorised comparison, so a
filter costs well under the time of the vector search it restricts.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..common.snapshots import load_arrays, read_info, remove_unnamed, write_arrays, write_info
from ..storage.store import shown_tags
from ..validation import RESERVED_PREFIX

COLUMNS_INFO = "columns.json"

_CLAUSE = re.compile(r"^\s*(?P<column>[^<>=!]+?)\s*(?P<op><=|>=|!=|=|<|>)\s*(?P<value>.*?)\s*$")
NUMERIC_OPS = ("<", "<=", ">", ">=")


class FilterError(ValueError):
    """A where-clause is malformed or names a column the catalogue does not have."""


@dataclass(frozen=True)
class Clause:
    column: str
    op: str
    values: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.column}{self.op}{'|'.join(self.values)}"


def parse_number(value: Any) -> float | None:
    """A finite float from a number or numeric text ("49.90", "1e3"), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range is no usable bound or price
            return None
        return number if math.isfinite(number) else None
    if isinstance(value, str):
        text = value.strip()
        if not text or text.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
            return None
        try:
            number = float(text)
        except (ValueError, OverflowError):
            return None
        return number if math.isfinite(number) else None
    return None


def parse_clause(text: str) -> Clause:
    match = _CLAUSE.match(text or "")
    if not match:
        raise FilterError(f"cannot parse filter {text!r}: expected COLUMN OP VALUE with OP one of = != < <= > >=")
    column, op, value = match["column"].strip(), match["op"], match["value"]
    if value == "":
        raise FilterError(f"filter {text!r} has no value after {op!r}")
    values = tuple(v.strip() for v in value.split("|")) if op in ("=", "!=") else (value,)
    if op in NUMERIC_OPS and parse_number(value) is None:
        raise FilterError(f"filter {text!r}: {op!r} needs a number, got {value!r}")
    return Clause(column, op, values)


def parse_where(clauses: Iterable[str] | str | None) -> list[Clause]:
    if clauses is None:
        return []
    if isinstance(clauses, str):
        clauses = [clauses]
    return [parse_clause(c) for c in clauses if c is not None and str(c).strip() != ""]


# ---- server-side filtering (database backends) ---------------------------------------------------
# A database backend keeps two JSON fields per product, built by filter_fields: ``text`` (each
# column's value as the in-memory columns compare it: trimmed, lower case) and ``numbers`` (the
# values that read as finite numbers).  clauses_expression writes the same clause over them, in
# the subset of scalar-filter syntax that Milvus Lite and the Milvus server both parse (no JSON
# ``in``, ``exists`` only in parentheses), so a pushed-down filter selects what the mask does.
TEXT_FIELD, NUMBERS_FIELD = "text", "numbers"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _filter_text(value: Any) -> str:
    """A value as server-side filters compare it: as the columns do, control characters as spaces
    (escape sequences other than quote and backslash are not parsed alike by every server)."""
    return _CONTROL.sub(" ", _text(value))


def filter_fields(metadata: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """One product's filterable columns (its metadata and tag columns) as a database backend stores them."""
    text: dict[str, str] = {}
    numbers: dict[str, float] = {}
    for name, value in metadata.items():
        if value is None or isinstance(value, (list, dict)) or (isinstance(value, str) and value.strip() == ""):
            continue
        key = _CONTROL.sub(" ", str(name))
        text[key] = _filter_text(value)
        number = parse_number(value)
        if number is not None:
            numbers[key] = number
    return {TEXT_FIELD: text, NUMBERS_FIELD: numbers}


def _literal(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def clauses_expression(clauses: list[Clause]) -> str:
    """The clauses as one boolean expression over :func:`filter_fields`' two JSON fields, for backends
    that filter server-side (``text["colour"] == "red" or text["colour"] == "navy"``, ``numbers["price"] < 50.0``).
    Keys and values are JSON-quoted, so none can break out of its string."""
    parts = []
    for clause in clauses:
        key = _literal(_CONTROL.sub(" ", clause.column))
        text, numbers = f"{TEXT_FIELD}[{key}]", f"{NUMBERS_FIELD}[{key}]"
        if clause.op in NUMERIC_OPS:
            parts.append(f"{numbers} {clause.op} {parse_number(clause.values[0])!r}")
            continue
        matches = []
        for value in clause.values:
            matches.append(f"{text} == {_literal(_filter_text(value))}")
            number = parse_number(value)
            if number is not None:  # "price=50" also matches a stored 50.0, as the columns do
                matches.append(f"{numbers} == {number!r}")
        either = " or ".join(matches)
        parts.append(f"({either})" if clause.op == "=" else f"((exists {text}) and not ({either}))")
    return " and ".join(parts)


def _text(value: Any) -> str:
    return str(value).strip().lower()


class _Column:
    """One metadata column as dictionary codes (text) plus floats (numeric view)."""

    def __init__(self, capacity: int):
        self.codes = np.full(capacity, -1, dtype=np.int32)
        self.numbers = np.full(capacity, np.nan, dtype=np.float64)
        self.vocab: dict[str, int] = {}
        self.labels: list[str] = []  # first spelling seen for each code, for facets

    def grow(self, capacity: int) -> None:
        old = len(self.codes)
        if capacity <= old:
            return
        self.codes = np.concatenate([self.codes, np.full(capacity - old, -1, np.int32)])
        self.numbers = np.concatenate([self.numbers, np.full(capacity - old, np.nan)])

    def set(self, rowid: int, value: Any) -> None:
        if value is None or (isinstance(value, str) and value.strip() == "") or isinstance(value, (list, dict)):
            self.clear(rowid)
            return
        key = _text(value)
        code = self.vocab.get(key)
        if code is None:
            code = self.vocab[key] = len(self.labels)
            self.labels.append(str(value).strip())
        self.codes[rowid] = code
        number = parse_number(value)
        self.numbers[rowid] = np.nan if number is None else number

    def clear(self, rowid: int) -> None:
        self.codes[rowid] = -1
        self.numbers[rowid] = np.nan

    @classmethod
    def restored(cls, codes: np.ndarray, numbers: np.ndarray, labels: Any, capacity: int) -> _Column:
        """A column from a snapshot's arrays, checked to fit (ValueError when not)."""
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise ValueError("column labels must be a list of strings")
        if codes.dtype != np.int32 or numbers.dtype != np.float64 or codes.shape != (capacity,) or numbers.shape != (capacity,):
            raise ValueError("column arrays do not fit the saved capacity")
        if capacity and (codes.max() >= len(labels) or codes.min() < -1):
            raise ValueError("column codes outside its labels")
        column = cls(0)
        column.codes, column.numbers, column.labels = np.array(codes), np.array(numbers), list(labels)
        column.vocab = {_text(label): code for code, label in enumerate(labels)}
        return column

    def has_numbers(self) -> bool:
        return bool(np.any(~np.isnan(self.numbers)))


class MetadataColumns:
    """Filterable copies of every product's metadata, indexed by rowid.

    Each column costs 12 bytes per product whether a product uses it or not, so the number of
    columns is capped (``max_columns``): keys first seen after the cap are stored with the
    product but are not filterable, and a filter on one says so."""

    def __init__(self, max_columns: int = 128) -> None:
        self.capacity = 0
        self.max_columns = max_columns
        self.columns: dict[str, _Column] = {}
        self.unfiltered: set[str] = set()  # keys seen beyond the cap (bounded in size too)

    def _grow(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        self.capacity = max(needed, int(self.capacity * 1.5) + 1024)
        for column in self.columns.values():
            column.grow(self.capacity)

    def set(self, rowid: int, metadata: Mapping[str, Any]) -> None:
        """Replace everything known about one product."""
        self._grow(rowid + 1)
        for name, column in self.columns.items():
            if name not in metadata:
                column.clear(rowid)
        for name, value in metadata.items():
            found = self.columns.get(name)
            if found is None:
                if len(self.columns) >= self.max_columns:
                    if len(self.unfiltered) < 1000:
                        self.unfiltered.add(name)
                    continue
                found = self.columns[name] = _Column(self.capacity)
            column = found
            column.set(rowid, value)

    def remove(self, rowid: int) -> None:
        if rowid < self.capacity:
            for column in self.columns.values():
                column.clear(rowid)

    def names(self) -> list[str]:
        return sorted(self.columns)

    # ---- the columns snapshot (read at open instead of parsing every product's metadata) -------
    def save(self, directory: Path, generation: int, model: str) -> None:
        """Snapshot the columns, tagged with the store generation they reflect."""
        names = list(self.columns)
        arrays: dict[str, np.ndarray] = {}
        for i, name in enumerate(names):
            arrays[f"codes{i}"], arrays[f"numbers{i}"] = self.columns[name].codes, self.columns[name].numbers
        data = write_arrays(directory, "columns", generation, arrays)
        write_info(directory, COLUMNS_INFO, {
            "generation": int(generation), "model": model, "capacity": self.capacity, "max_columns": self.max_columns,
            "names": names, "labels": [self.columns[name].labels for name in names], "unfiltered": sorted(self.unfiltered),
            "data": data})
        remove_unnamed(directory, ("columns",), COLUMNS_INFO, {data})

    @classmethod
    def restore(cls, directory: Path, model: str, max_columns: int) -> tuple[MetadataColumns, int] | None:
        """The columns a snapshot saved for ``model`` and its generation, or None when there is none
        usable (missing, damaged, another model's or another column cap: then they are rebuilt from the store)."""
        info = read_info(directory, COLUMNS_INFO, model)
        if info is None or info.get("max_columns") != max_columns:
            return None
        try:
            arrays = load_arrays(directory, info["data"])
            columns = cls(max_columns)
            columns.capacity = int(info["capacity"])
            columns.unfiltered = {str(name) for name in info["unfiltered"]}
            for i, (name, labels) in enumerate(zip(info["names"], info["labels"], strict=True)):
                columns.columns[str(name)] = _Column.restored(arrays[f"codes{i}"], arrays[f"numbers{i}"], labels, columns.capacity)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
            return None
        if len(columns.columns) > max_columns:
            return None
        return columns, int(info["generation"])

    def mask(self, clauses: list[Clause]) -> np.ndarray | None:
        """Boolean mask over rowids of products matching every clause (None when there are no clauses)."""
        if not clauses:
            return None
        result = np.ones(self.capacity, dtype=bool)
        for clause in clauses:
            result &= self._clause_mask(clause)
        return result

    def _clause_mask(self, clause: Clause) -> np.ndarray:
        column = self.columns.get(clause.column)
        if column is None:
            if clause.column in self.unfiltered:
                raise FilterError(f"column {clause.column!r} is not filterable: the catalogue has more than {self.max_columns} "
                                  "metadata columns (raise max_filter_columns)")
            known = ", ".join(self.names()) or "none"
            raise FilterError(f"unknown filter column {clause.column!r}; the catalogue has: {known}")
        if clause.op in NUMERIC_OPS:
            if not column.has_numbers():
                raise FilterError(f"filter {clause}: column {clause.column!r} has no numeric values")
            bound = parse_number(clause.values[0])
            if bound is None:
                raise FilterError(f"filter {clause}: {clause.values[0]!r} is not a finite number")
            with np.errstate(invalid="ignore"):
                return {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}[clause.op](column.numbers, bound)
        hit = np.zeros(self.capacity, dtype=bool)
        for value in clause.values:
            code = column.vocab.get(_text(value))
            if code is not None:
                hit |= column.codes == code
            number = parse_number(value)
            if number is not None:  # "price=50" also matches a stored 50.0
                hit |= column.numbers == number
        if clause.op == "!=":
            return ~hit & (column.codes >= 0)
        return hit

    def facet_counts(self, name: str, mask: np.ndarray | None = None, limit: int = 50) -> list[tuple[str, int]]:
        """The most common values of a text column (optionally among ``mask``), for facet lists."""
        column = self.columns.get(name)
        if column is None:
            return []
        codes = column.codes if mask is None else column.codes[: len(mask)][mask[: self.capacity]]
        codes = codes[codes >= 0]
        if len(codes) == 0:
            return []
        counts = np.bincount(codes, minlength=len(column.labels))
        top = np.argsort(-counts, kind="stable")[:limit]
        return [(column.labels[i], int(counts[i])) for i in top if counts[i] > 0]

    def facets(self, max_values: int = 100) -> list[dict[str, Any]]:
        """Columns worth filtering on, for facet lists: few distinct values -> value counts;
        many numeric values -> a range; many distinct texts (titles, ids) or a single value -> none."""
        out: list[dict[str, Any]] = []
        for name in self.names():
            column = self.columns[name]
            present = column.codes >= 0
            distinct = int(np.count_nonzero(np.bincount(column.codes[present], minlength=len(column.labels)))) if present.any() else 0
            if distinct < 2:
                continue
            if distinct <= max_values:
                out.append({"name": name, "kind": "values", "values": self.facet_counts(name, limit=max_values)})
                continue
            numbers = column.numbers[present]
            finite = numbers[~np.isnan(numbers)]
            if len(finite) >= 0.9 * np.count_nonzero(present):
                out.append({"name": name, "kind": "range", "min": float(finite.min()), "max": float(finite.max())})
        return out


TAG_PREFIX = RESERVED_PREFIX  # predicted tags are filterable as tag.<name>, apart from the shop's own columns


def with_tag_columns(metadata: dict[str, Any], tags: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """The shop's metadata plus predicted tags as ``tag.<name>`` columns (kept apart from the shop's labels).
    A stored key that spells a tag column (from before such keys were refused) is not one."""
    if any(k.lower().startswith(TAG_PREFIX) for k in metadata):
        metadata = {k: v for k, v in metadata.items() if not k.lower().startswith(TAG_PREFIX)}
    if not tags:
        return metadata
    return {**metadata, **{f"{TAG_PREFIX}{name}": tag["value"] for name, tag in shown_tags(tags).items()}}
