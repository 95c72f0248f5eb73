"""Catalogue readers: formats, column names, and rows that must be reported, not crash the run."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike.ingest.catalogue import CatalogueError, CatalogueRow, RowError, read_catalogue

from .conftest import DEMO_CSV, SHARED, requires_shared


def rows(source, **kw):
    return list(read_catalogue(source, **kw))


def test_demo_csv_reads_every_row_with_metadata():
    items = rows(DEMO_CSV)
    assert len(items) == 305 and all(isinstance(i, CatalogueRow) for i in items)
    first = items[0]
    assert first.image.startswith(str(DEMO_CSV.parent)) and first.metadata["category"]
    assert "id" not in first.metadata and "image" not in first.metadata


@requires_shared
def test_myntra_labels_ingest_as_they_are():
    items = rows(SHARED / "myntra" / "labels.csv")
    assert len(items) == 6621
    row = items[0]
    assert row.id == "10000" and row.image.endswith("images/10000.jpg")
    assert row.metadata["article_type"] == "Skirts" and row.metadata["title"]


def test_explicit_columns_and_bad_names(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("sku_code,picture,price\nA1,a.jpg,10\n")
    with pytest.raises(CatalogueError, match="cannot tell which column is the id"):
        rows(path)
    with pytest.raises(CatalogueError, match="no id column 'nope'"):
        rows(path, id_column="nope", image_column="picture")
    (item,) = rows(path, id_column="sku_code", image_column="picture")
    assert item.id == "A1" and item.image == str((tmp_path / "a.jpg").resolve()) and item.metadata == {"price": "10"}


def test_bad_rows_are_reported_with_row_numbers(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("id,image,title\n1,a.jpg,ok\n,b.jpg,no id\n1,c.jpg,dup\n3,,no image\n4,https://shop.example/x.jpg,url\n")
    items = rows(path)
    assert [type(i).__name__ for i in items] == ["CatalogueRow", "RowError", "RowError", "RowError", "CatalogueRow"]
    assert items[1].item == "row 3" and "no value in id column" in items[1].reason
    assert "duplicate id '1' (first on row 2)" in items[2].reason
    assert items[3].item == "3" and "no image" in items[3].reason
    assert items[4].image == "https://shop.example/x.jpg"


def test_jsonl_with_a_broken_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": 1, "image": "a.jpg", "price": 9.5, "tags": ["x"]}) + "\n{broken\n\n" + json.dumps([1, 2]) + "\n")
    items = rows(path)
    assert isinstance(items[0], CatalogueRow) and items[0].id == "1" and items[0].metadata["price"] == 9.5
    assert isinstance(items[1], RowError) and "invalid JSON" in items[1].reason
    assert isinstance(items[2], RowError) and "not a JSON object" in items[2].reason


def test_parquet(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"product_id": ["a", "b"], "image_url": ["x.jpg", "y.jpg"], "price": [1.5, None]}), path)
    items = rows(path)
    assert [i.id for i in items] == ["a", "b"] and items[0].metadata == {"price": 1.5} and items[1].metadata == {}


def test_folder_of_images(tmp_path):
    (tmp_path / "dresses").mkdir()
    (tmp_path / "dresses" / "red.jpg").write_bytes(b"x")
    (tmp_path / "top.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    items = rows(tmp_path)
    assert sorted(i.id for i in items) == ["dresses/red", "top"]
    assert next(i for i in items if i.id == "dresses/red").metadata["folder"] == "dresses"


def test_unusable_sources(tmp_path):
    with pytest.raises(CatalogueError, match="not found"):
        rows(tmp_path / "missing.csv")
    (tmp_path / "c.xlsx").write_text("x")
    with pytest.raises(CatalogueError, match="unknown catalogue format"):
        rows(tmp_path / "c.xlsx")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(CatalogueError, match="no columns"):
        rows(tmp_path / "empty.csv")
    (tmp_path / "latin.csv").write_bytes("id,image\n1,caf\xe9.jpg\n".encode("latin-1"))
    with pytest.raises(CatalogueError, match="not UTF-8"):
        rows(tmp_path / "latin.csv")
