"""Reading a shop's catalogue: CSV/TSV, JSON Lines, Parquet or a plain folder of images.

Each row becomes a :class:`CatalogueRow` (id, where the image is, every other column as
metadata) or a :class:`RowError` that names the row and the reason.  Rows are yielded
lazily so a million-row file never sits in memory, and a bad row never stops the rest.
"""

from __future__ import annotations

import csv
import datetime
import decimal
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Union

from ..images import is_url
from ..security.paths import PathPolicy, PathRefused
from ..validation import InvalidProductError, MetadataLimits, validate_id, validate_metadata

ID_COLUMN_GUESSES = ("id", "item_id", "product_id", "sku", "article_id")
IMAGE_COLUMN_GUESSES = ("image", "image_path", "image_file", "image_url", "img", "path", "url", "file")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
FORMATS = ("csv", "tsv", "jsonl", "parquet", "folder")

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class CatalogueError(ValueError):
    """The catalogue as a whole cannot be read (missing file, unknown format, no id column)."""


@dataclass
class CatalogueRow:
    id: str
    image: str  # absolute path or http(s) URL
    metadata: dict[str, Any] = field(default_factory=dict)
    line: int = 0


@dataclass
class RowError:
    item: str  # the product id when known, else "row N"
    line: int
    reason: str
    source: str = ""
    kind: str = "row"


CatalogueItem = Union[CatalogueRow, RowError]


def detect_format(source: Path) -> str:
    if source.is_dir():
        return "folder"
    suffix = source.suffix.lower()
    if suffix in (".csv", ".txt"):
        return "csv"
    if suffix == ".tsv":
        return "tsv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise CatalogueError(f"{source}: unknown catalogue format {suffix!r}; use .csv, .tsv, .jsonl, .parquet or a folder of images")


def _pick(columns: list[str], wanted: str | None, guesses: tuple[str, ...], role: str, source: Path, reveal: bool = True) -> str:
    # A file handed over by a remote client may be no catalogue at all: never echo its content.
    listed = f"columns are: {', '.join(columns)}" if reveal else f"the file has {len(columns)} column(s)"
    if wanted:
        if wanted not in columns:
            raise CatalogueError(f"{source}: no {role} column {wanted!r}; {listed}")
        return wanted
    lowered = {c.lower(): c for c in columns}
    for guess in guesses:
        if guess in lowered:
            return lowered[guess]
    option = "--id-column" if role == "id" else "--image-column"
    raise CatalogueError(f"{source}: cannot tell which column is the {role}; name it with {option} ({listed})")


def resolve_image(value: str, base: Path) -> str:
    """An image reference as an absolute path (relative ones are relative to the catalogue file) or a URL."""
    value = value.strip()
    if is_url(value):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
        return value if value != "" else None
    if isinstance(value, float) and value != value:  # NaN from Parquet
        return None
    if isinstance(value, (datetime.date, datetime.time)):  # Parquet dates and times
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


class _RowBuilder:
    """Turns raw records into rows, enforcing ids, images and uniqueness."""

    def __init__(self, source: Path, id_column: str, image_column: str, limits: MetadataLimits):
        self.source, self.id_column, self.image_column, self.limits = source, id_column, image_column, limits
        self.base = source.parent if source.is_file() else source
        self.first_line: dict[str, int] = {}

    def build(self, record: dict[str, Any], line: int) -> CatalogueItem:
        raw_id = _clean(record.get(self.id_column))
        if raw_id is None:
            return RowError(f"row {line}", line, f"no value in id column {self.id_column!r}", kind="row")
        if isinstance(raw_id, float) and raw_id.is_integer():
            raw_id = int(raw_id)  # Parquet/JSON numbers: 10184.0 is the id 10184
        try:
            item_id = validate_id(str(raw_id))
        except InvalidProductError as exc:
            return RowError(f"row {line}", line, str(exc), kind="row")
        if item_id in self.first_line:
            return RowError(item_id, line, f"duplicate id {item_id!r} (first on row {self.first_line[item_id]}); row skipped", kind="row")
        self.first_line[item_id] = line
        image = _clean(record.get(self.image_column))
        if image is None or not isinstance(image, str):
            return RowError(item_id, line, f"no image in column {self.image_column!r}", kind="row")
        metadata = {k: v for k, v in ((k, _clean(v)) for k, v in record.items()) if v is not None and k not in (self.id_column, self.image_column)}
        try:
            metadata = validate_metadata(metadata, self.limits, item="metadata")
        except InvalidProductError as exc:
            return RowError(item_id, line, str(exc), kind="metadata")
        return CatalogueRow(item_id, resolve_image(image, self.base), metadata, line)


def _csv_records(source: Path, delimiter: str) -> tuple[list[str], Iterator[tuple[int, dict[str, Any] | str]]]:
    handle = source.open("r", encoding="utf-8-sig", newline="")
    reader = csv.DictReader(handle, delimiter=delimiter)
    columns = list(reader.fieldnames or [])

    def records() -> Iterator[tuple[int, dict[str, Any] | str]]:
        with handle:
            first = reader.line_num + 1  # physical line where the next record starts
            for record in reader:
                swallowed = _unclosed_quote(record, columns, delimiter)
                if swallowed:
                    yield first, (f"the quote opened in column {swallowed!r} is never closed, so lines {first + 1}-{reader.line_num} "
                                  "were read into it as text; close the quote (this row and the lines it swallowed were skipped)")
                else:
                    record.pop(None, None)  # extra cells beyond the header
                    yield first, record
                first = reader.line_num + 1

    return columns, records()


def _unclosed_quote(record: dict[Any, Any], columns: list[str], delimiter: str) -> str | None:
    """The column whose quoted text ran over lines that look like rows of their own: a quote
    opened and never closed.  Multi-line descriptions in proper quotes do not look like rows."""
    for column, value in record.items():
        if isinstance(value, str) and "\n" in value:
            lines = value.split("\n")[1:]
            if any(line.count(delimiter) >= max(2, len(columns) - 1) for line in lines):
                return str(column)
    return None


def _jsonl_records(source: Path) -> tuple[list[str], Iterator[tuple[int, dict[str, Any] | str]]]:
    columns: list[str] = []
    with source.open("r", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                try:
                    first = json.loads(line)
                    columns = list(first) if isinstance(first, dict) else []
                except json.JSONDecodeError:
                    pass
                break

    def records() -> Iterator[tuple[int, dict[str, Any] | str]]:
        with source.open("r", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, f"invalid JSON ({exc.msg} at column {exc.colno})"
                    continue
                yield number, record if isinstance(record, dict) else "line is not a JSON object"

    return columns, records()


def _parquet_records(source: Path) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(source)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise CatalogueError(f"{source}: not a readable Parquet file ({exc})") from exc
    columns = parquet.schema_arrow.names

    def records() -> Iterator[tuple[int, dict[str, Any]]]:
        number = 0
        for batch in parquet.iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                number += 1
                yield number, record

    return columns, records()


def _folder_rows(source: Path) -> Iterator[CatalogueItem]:
    """Every image under a folder; the id is the path without suffix, the sub-folder becomes ``folder``.
    Two files that differ only in suffix (shoe.jpg, shoe.png) would share an id: the second is skipped."""
    line = 0
    first: dict[str, str] = {}
    for path in sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        line += 1
        relative = path.relative_to(source)
        item_id = relative.with_suffix("").as_posix()
        try:
            validate_id(item_id)
        except InvalidProductError as exc:
            yield RowError(str(relative), line, f"{exc}; rename the file", source=str(relative), kind="row")
            continue
        if item_id in first:
            yield RowError(item_id, line, f"duplicate id {item_id!r}: {relative.name} and {first[item_id]} differ only in suffix; "
                                          "rename one (skipped)", source=str(relative), kind="row")
            continue
        first[item_id] = relative.name
        metadata: dict[str, Any] = {"file": relative.name}
        if len(relative.parts) > 1:
            metadata["folder"] = relative.parent.as_posix()
        yield CatalogueRow(item_id, str(path.resolve()), metadata, line)


def read_catalogue(
    source: str | Path,
    id_column: str | None = None,
    image_column: str | None = None,
    format: str | None = None,
    limits: MetadataLimits = MetadataLimits(),
    paths: PathPolicy = PathPolicy(),
) -> Iterator[CatalogueItem]:
    """Yield each row of a catalogue as a :class:`CatalogueRow` or a :class:`RowError`.

    Raises :class:`CatalogueError` up front when the file itself is unusable, so nothing is
    half-ingested because of a typo in a path or a column name.  ``paths`` confines where a
    remote client's catalogue may be (the CLI's default allows any path); a confined reader
    never quotes the file's content in its errors.
    """
    try:
        path = paths.check(source, "catalogue path")
    except PathRefused as exc:
        raise CatalogueError(str(exc)) from exc
    reveal = paths.roots is None
    if not path.exists():
        raise CatalogueError(f"catalogue not found: {path}")
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise CatalogueError(f"unknown catalogue format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "folder":
        if not path.is_dir():
            raise CatalogueError(f"{path} is not a folder")
        return _folder_rows(path)
    try:
        if fmt in ("csv", "tsv"):
            columns, records = _csv_records(path, "\t" if fmt == "tsv" else ",")
        elif fmt == "jsonl":
            columns, records = _jsonl_records(path)
        else:
            columns, records = _parquet_records(path)
    except UnicodeDecodeError as exc:
        raise CatalogueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if not columns:
        raise CatalogueError(f"{path}: no columns found (is the file empty?)")
    builder = _RowBuilder(path, _pick(columns, id_column, ID_COLUMN_GUESSES, "id", path, reveal),
                          _pick(columns, image_column, IMAGE_COLUMN_GUESSES, "image", path, reveal), limits)
    return _rows(builder, records)


def _rows(builder: _RowBuilder, records: Iterator[tuple[int, Any]]) -> Iterator[CatalogueItem]:
    try:
        for number, record in records:
            if isinstance(record, str):
                yield RowError(f"row {number}", number, record, kind="row")
            else:
                yield builder.build(record, number)
    except UnicodeDecodeError as exc:
        raise CatalogueError(f"{builder.source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except csv.Error as exc:
        raise CatalogueError(f"{builder.source}: malformed CSV ({exc})") from exc


def count_rows(source: str | Path) -> int | None:
    """A cheap row count for progress bars (None when unknown)."""
    path = Path(source)
    try:
        fmt = detect_format(path)
        if fmt == "folder":
            return sum(1 for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        with path.open("rb") as handle:
            lines = sum(1 for line in handle if line.strip())
        return max(0, lines - 1) if fmt in ("csv", "tsv") else lines
    except (OSError, CatalogueError):
        return None
    except Exception:
        return None
