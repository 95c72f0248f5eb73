"""Hostile values on every way in (HTTP, catalogue rows, Python API), and a store that stays
openable whatever is in it.  Issue 11: critical 1, high 5 and 6, ids, tag spoofing."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys

import httpx
import pytest

from lookalike import Engine
from lookalike.ingest.catalogue import read_catalogue
from lookalike.search.filters import FilterError, MetadataColumns
from lookalike.validation import InvalidProductError, validate_id, validate_metadata

from .conftest import DEMO_CSV, ROOT

PHOTO = ROOT / "examples" / "demo" / "images" / "878ff7a3.jpg"
HUGE = int("9" * 400)


def nested(depth: int) -> dict:
    value: object = "x"
    for _ in range(depth):
        value = {"a": value}
    return {"deep": value}


def put(server, product_id: str, metadata: object = None, raw: str | None = None, with_image: bool = True) -> httpx.Response:
    data = {"metadata": raw if raw is not None else json.dumps(metadata)}
    files = {"image": ("q.jpg", PHOTO.read_bytes(), "image/jpeg")} if with_image else None
    return httpx.put(f"{server.url}/products/{product_id}", headers=server.auth, data=data, files=files, timeout=30)


def cli(store, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lookalike", "--store", str(store), *args], capture_output=True, text=True, timeout=120)


def test_hostile_metadata_over_http_is_refused_and_stores_nothing(server):
    cases = {
        "huge-int": {"price": HUGE},
        "deep-300": nested(300),
        "list-in-list": {"sizes": [["S", "M"]]},
        "many-keys": {f"k{i}": i for i in range(20_000)},
        "tag-spoof": {"tag.article_type": "Shirts"},
        "long-text": {"title": "x" * 20_000},
    }
    for product_id, metadata in cases.items():
        r = put(server, product_id, metadata)
        assert r.status_code in (413, 422), (product_id, r.status_code, r.text[:200])
        assert r.json()["detail"], product_id
        assert httpx.get(f"{server.url}/products/{product_id}").status_code == 404, f"{product_id} was stored"
    deep = "[" * 1000 + "]" * 1000  # beyond the JSON parser's depth
    assert put(server, "deep-1000", raw=json.dumps({"a": 1})[:-1] + ', "b": ' + deep + "}").status_code == 422
    assert put(server, "digits", raw='{"price": ' + "9" * 5000 + "}").status_code == 422
    # Every read still works: nothing hostile reached the store.
    hits = httpx.post(server.url + "/search", files={"image": ("q.jpg", PHOTO.read_bytes(), "image/jpeg")}, params={"k": 10})
    assert hits.status_code == 200 and len(hits.json()["results"]) == 10
    assert httpx.get(server.url + "/products", params={"limit": 500}).status_code == 200


def test_python_api_validates_like_http(engine):
    for bad in ({"price": HUGE}, nested(50), {"tag.colour": "Red"}, {"x": float("nan")}, {"k": {"a": 1}}, [1, 2]):
        with pytest.raises(InvalidProductError):
            engine.upsert("new-1", image=PHOTO, metadata=bad)  # type: ignore[arg-type]
    assert engine.store.get("new-1") is None
    stored = engine.upsert("new-1", image=PHOTO, metadata={"price": 2**62, "sizes": ["S", "M"], "on_sale": True, "note": None})
    assert stored.metadata["price"] == 2**62 and stored.metadata["sizes"] == ["S", "M"]


@pytest.mark.parametrize("bad_id", [" x ", "x ", "", "a//b", "a/../b", "/x", "x/", "0/similar", "x/thumbnail", "x/changes", "a\nb", "a?b", "a#b",
                                    "a%20b", "x" * 201, "a\\b"])
def test_ids_outside_the_alphabet_are_refused(bad_id):
    with pytest.raises(InvalidProductError):
        validate_id(bad_id)


@pytest.mark.parametrize("good_id", ["10184", "sku/1", "SKU-1_b.2", "ÄÖ-Größe", "name with space", "a:b@c+d=e,f(g)'h~"])
def test_ids_inside_the_alphabet_are_kept_as_they_are(good_id):
    assert validate_id(good_id) == good_id


def test_hostile_ids_over_http_are_refused_with_422(server):
    for path in ("%20x%20", "0/similar", "x/thumbnail", "a%2F..%2Fb", "x" * 300):
        r = put(server, path, {"category": "Hat"})
        assert r.status_code == 422, (path, r.status_code)
        assert r.json()["error"] == "bad_request"
    assert httpx.get(server.url + "/products/0").status_code == 404


def test_catalogue_rows_with_hostile_values_are_skipped_and_the_rest_ingested(tmp_path):
    images = DEMO_CSV.parent / "images"
    rows = [{"id": p.stem, "image": str(p), "title": "ok"} for p in sorted(images.glob("*.jpg"))[:40]]
    rows.insert(3, {"id": "deep", "image": str(PHOTO), "spec": nested(300)})
    rows.insert(7, {"id": "big", "image": str(PHOTO), "price": HUGE})
    rows.insert(9, {"id": "spoof", "image": str(PHOTO), "tag.article_type": "Shirts"})
    rows.insert(11, {"id": "bad id/", "image": str(PHOTO)})
    catalogue = tmp_path / "rows.jsonl"
    catalogue.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with Engine.open(tmp_path / "store") as engine:
        report = engine.ingest(catalogue)
        assert report.added == 40
        reasons = {s.item: s.reason for s in report.skipped}
        assert set(reasons) == {"deep", "big", "spoof", "row 12"}, reasons
        assert "spec" in reasons["deep"] and "price" in reasons["big"] and "reserved" in reasons["spoof"]


def test_a_store_with_values_from_a_foreign_writer_still_opens(store_copy):
    """Values written behind lookalike's back (an older version, a hand edit) are served as
    empty and reported; they never make the store unopenable."""
    db = sqlite3.connect(store_copy / "catalogue.sqlite")
    ids = [r[0] for r in db.execute("SELECT id FROM products ORDER BY rowid LIMIT 4")]
    db.execute("UPDATE products SET metadata = ? WHERE id = ?", ('{"price": ' + "9" * 400 + "}", ids[0]))  # overflows float()
    db.execute("UPDATE products SET metadata = ? WHERE id = ?", ('{"price": ' + "9" * 5000 + "}", ids[1]))  # beyond int parsing
    db.execute("UPDATE products SET metadata = ? WHERE id = ?", ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", ids[2]))
    db.execute("UPDATE products SET metadata = ? WHERE id = ?", ('{"tag.category": "Spoofed"}', ids[3]))
    db.commit()
    db.close()
    with Engine.open(store_copy) as engine:  # its snapshot predates the hand edits: they are read on access
        assert len(engine) == 305
        assert engine.get(ids[1]).metadata == {} and engine.get(ids[2]).metadata == {}
        assert engine.stats()["unreadable_rows"] >= 2
    shutil.rmtree(store_copy / "index")  # as documented: hand edits reach the filters once index/ is rebuilt
    with Engine.open(store_copy) as engine:
        assert len(engine) == 305
        assert engine.get(ids[1]).metadata == {} and engine.stats()["unreadable_rows"] >= 2
        assert engine.get(ids[0]).metadata["price"] == int("9" * 400)  # served as stored, just not a filterable number
        assert {h.metadata["category"] for h in engine.search(PHOTO, k=5, where=["category=Blazer"])} == {"Blazer"}
        with pytest.raises(FilterError, match="unknown filter column 'tag.category'"):  # a stored key is no predicted tag
            engine.search(PHOTO, k=300, where=["tag.category=Spoofed"])
    for command in (["info", "--json"], ["get", ids[0]], ["delete", ids[2]]):
        result = cli(store_copy, *command)
        assert result.returncode == 0, (command, result.stderr[-500:])


def test_filter_columns_are_capped():
    columns = MetadataColumns(max_columns=3)
    for rowid in range(5):
        columns.set(rowid, {f"k{rowid}": "v", "shared": rowid})
    assert len(columns.names()) == 3
    with pytest.raises(FilterError, match="not filterable"):
        columns.mask([__import__("lookalike.search.filters", fromlist=["parse_clause"]).parse_clause("k4=v")])


def test_metadata_limits_name_the_key_and_reason():
    with pytest.raises(InvalidProductError, match="'price'.*64 bits"):
        validate_metadata({"price": HUGE})
    with pytest.raises(InvalidProductError, match="'spec'.*nested list|'spec'.*not dict"):
        validate_metadata({"spec": {"a": 1}})
    with pytest.raises(InvalidProductError, match="100"):
        validate_metadata({f"k{i}": 1 for i in range(101)})


def test_folder_ingest_reports_two_files_with_one_id(tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.open(PHOTO).save(folder / "shoe.jpg")
    Image.open(PHOTO).save(folder / "shoe.png")
    Image.open(PHOTO).save(folder / "bag.jpg")
    with Engine.open(tmp_path / "store") as engine:
        report = engine.ingest(folder)
        assert report.added == 2 and len(engine) == 2
        assert [s.item for s in report.skipped] == ["shoe"] and "differ only in suffix" in report.skipped[0].reason


def test_csv_with_an_unclosed_quote_is_reported(tmp_path):
    catalogue = tmp_path / "c.csv"
    catalogue.write_text(f'id,image,title\na,{PHOTO},"Red dress\nb,{PHOTO},Blue shirt\nc,{PHOTO},Hat\n')
    items = list(read_catalogue(catalogue))
    assert len(items) == 1 and "never closed" in items[0].reason and "lines 3-4" in items[0].reason
    fine = tmp_path / "fine.csv"
    fine.write_text(f'id,image,title\na,{PHOTO},"Red dress\nwith a long\ndescription"\nb,{PHOTO},Hat\n')
    assert [getattr(i, "id", None) for i in read_catalogue(fine)] == ["a", "b"]


def test_hide_sharing_is_bounded_and_hostile_names_hide_nothing(server):
    url = f"{server.url}/products/878ff7a3/similar"
    ok = httpx.get(url, params={"k": 5, "hide_sharing": ["category"]})
    assert ok.status_code == 200 and all(h["metadata"]["category"] != "Blazer" for h in ok.json()["results"])
    too_many = httpx.get(url, params={"hide_sharing": [f"c{i}" for i in range(11)]})
    assert too_many.status_code == 422
    too_long = httpx.get(url, params={"hide_sharing": "x" * 5000})
    assert too_long.status_code == 422 and "hide_sharing" in too_long.json()["detail"]
    blank = httpx.get(url, params={"hide_sharing": "   "})
    assert blank.status_code == 422
    for hostile in ("'; DROP TABLE products; --", "../../etc/passwd", "tag.category", "category OR 1=1"):
        r = httpx.get(url, params={"k": 5, "hide_sharing": hostile})
        assert r.status_code == 200 and len(r.json()["results"]) == 5, hostile
    assert httpx.get(f"{server.url}/products/878ff7a3").status_code == 200


def test_a_tagger_file_that_is_missing_or_not_a_tagger_set_is_refused_by_name(store_copy, tmp_path):
    garbage = tmp_path / "taggers.joblib"
    garbage.write_bytes(b"\x80\x04not a pickle at all" * 100)
    for path in (tmp_path / "missing.joblib", garbage):
        result = cli(store_copy, "tag", "predict", "--taggers", str(path))
        assert result.returncode != 0
        assert path.name in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert json.loads(cli(store_copy, "info", "--json").stdout)["products"] == 305


def test_a_flood_of_headers_is_cut_off_and_the_server_keeps_answering(server):
    """Headers have a size limit like every other input: a client that never ends its headers is
    disconnected after 16 KB instead of growing the server by what it sends."""
    import socket

    port = int(server.url.rsplit(":", 1)[1])
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        with pytest.raises(OSError):
            for i in range(20_000):  # 20 MB if nothing stopped it
                conn.sendall(b"X-Junk-%d: %s\r\n" % (i, b"a" * 1000))
                sent += 1000
            conn.recv(1)  # not cut off yet: whatever is answered, the connection must end here
            raise AssertionError(f"the server read {sent} bytes of headers without cutting the connection")
    assert sent < 2_000_000
    assert httpx.get(server.url + "/health").status_code == 200
