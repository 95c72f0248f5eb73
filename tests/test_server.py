"""The HTTP API against a real uvicorn server on a loopback port."""

from __future__ import annotations

import io
import json
import time

import httpx
from PIL import Image

from .conftest import ROOT, Server

PHOTO = ROOT / "examples" / "demo" / "images" / "878ff7a3.jpg"


def upload(data: bytes, name: str = "q.jpg", ctype: str = "image/jpeg"):
    return {"image": (name, data, ctype)}


def test_search_by_photo_with_filters(server):
    r = httpx.post(server.url + "/search", files=upload(PHOTO.read_bytes()), params={"k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["results"][0]["id"] == "878ff7a3" and len(body["results"]) == 5
    thumb = httpx.get(server.url + body["results"][0]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size[0] <= 256
    r = httpx.post(server.url + "/search", files=upload(PHOTO.read_bytes()), params=[("k", "8"), ("where", "category=Shoes|Hat"), ("where", "kids=false")])
    cats = {h["metadata"]["category"] for h in r.json()["results"]}
    assert r.status_code == 200 and cats <= {"Shoes", "Hat"} and len(r.json()["results"]) == 8


def test_similar_get_put_delete(server):
    r = httpx.get(server.url + "/products/878ff7a3/similar", params={"k": 4})
    assert r.status_code == 200 and "878ff7a3" not in [h["id"] for h in r.json()["results"]]
    assert httpx.get(server.url + "/products/878ff7a3").json()["metadata"]["category"] == "Blazer"

    r = httpx.put(server.url + "/products/sku%2F1", headers=server.auth, files=upload(PHOTO.read_bytes()), data={"metadata": json.dumps({"category": "New", "price": 30})})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "sku/1"
    r = httpx.post(server.url + "/search", files=upload(PHOTO.read_bytes()), params=[("k", "1"), ("where", "price<=30")])
    assert r.json()["results"][0]["id"] == "sku/1"  # visible to the very next query
    assert httpx.get(server.url + r.json()["results"][0]["thumbnail_url"]).status_code == 200

    r = httpx.put(server.url + "/products/sku%2F1", headers=server.auth, data={"metadata": json.dumps({"category": "New", "price": 99})})
    assert r.status_code == 200 and r.json()["metadata"]["price"] == 99
    assert httpx.delete(server.url + "/products/sku%2F1", headers=server.auth).status_code == 200
    assert httpx.get(server.url + "/products/sku%2F1").status_code == 404
    assert httpx.delete(server.url + "/products/sku%2F1", headers=server.auth).status_code == 404


def test_errors_have_the_right_status_and_a_message(server):
    def search(files, params=None):
        return httpx.post(server.url + "/search", files=files, params=params or {})

    cases = [
        (search(upload(b"")), 400, "empty"),
        (search(upload(PHOTO.read_bytes()[:300])), 400, "corrupt"),
        (search(upload(b"%PDF-1.4 not an image", "a.pdf", "application/pdf")), 415, "unsupported"),
        (search(upload(b"\xff\xd8\xff" + b"0" * (21 * 1024 * 1024))), 413, "too_large"),
        (search(upload(PHOTO.read_bytes()), {"where": "price<10"}), 422, "bad_filter"),
        (search(upload(PHOTO.read_bytes()), {"where": "category"}), 422, "bad_filter"),
        (httpx.get(server.url + "/products/nope"), 404, "not_found"),
        (httpx.get(server.url + "/products/nope/similar"), 404, "not_found"),
        (httpx.put(server.url + "/products/new", headers=server.auth, data={"metadata": "{}"}), 422, "bad_request"),
        (httpx.put(server.url + "/products/878ff7a3", headers=server.auth, data={"metadata": "[1,2"}), 422, "bad_request"),
    ]
    for response, status, kind in cases:
        assert response.status_code == status, (status, response.text)
        body = response.json()
        assert body["error"] == kind and body["detail"]
    r = search(upload(PHOTO.read_bytes()), {"k": 5000})
    assert r.status_code == 422


def test_openapi_health_stats_and_ingest(server, tmp_path):
    schema = httpx.get(server.url + "/openapi.json").json()
    assert {"/search", "/products/{product_id}/similar", "/products/{product_id}", "/ingest/status"} <= set(schema["paths"])
    assert httpx.get(server.url + "/docs").status_code == 200
    assert httpx.get(server.url + "/health").json()["products"] == 305
    assert httpx.get(server.url + "/stats", headers=server.auth).json()["vectors"] == 305

    bad = tmp_path / "bad.csv"
    bad.write_text(f"id,image\nx1,{tmp_path}/nonexistent.jpg\n")
    r = httpx.post(server.url + "/ingest", headers=server.auth, json={"source": str(bad)})
    assert r.status_code == 202
    for _ in range(100):
        status = httpx.get(server.url + "/ingest/status", headers=server.auth).json()
        if not status["running"] and status["current"] and status["current"]["status"] == "completed":
            break
        time.sleep(0.1)
    assert status["current"]["skipped"] == 1
    skipped = httpx.get(server.url + "/ingest/skipped", headers=server.auth).json()["skipped"]
    assert skipped[0]["item"] == "x1" and "not found" in skipped[0]["reason"]
    r = httpx.post(server.url + "/ingest", headers=server.auth, json={"source": str(tmp_path / "missing.csv")})
    assert r.status_code == 400 and "not found" in r.json()["detail"]


def test_server_refuses_to_start_on_a_store_of_another_encoder(store_copy):
    try:
        Server(store_copy, {"LOOKALIKE_ENCODER": "efficientnet-lite2"})
        raise AssertionError("server started")
    except RuntimeError as exc:
        assert "efficientnet-lite0-int8@" in str(exc)


def test_tag_an_upload_and_read_tags_and_review(store_copy):
    from lookalike import Engine
    from lookalike.tagging import TrainOptions

    with Engine.open(store_copy) as engine:
        engine.train_taggers(TrainOptions(columns=["category"], image_model="none", folds=2))
        engine.tag()
    srv = Server(store_copy)
    try:
        r = httpx.post(srv.url + "/tag", files=upload(PHOTO.read_bytes()), data={"text": "Navy slim fit blazer"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["tagger"] == "taggers-v1" and body["tags"]["category"]["source"] == "image"
        assert body["tags"]["fit"] == {"value": "slim", "confidence": 0.8, "source": "rule", "matched": "slim"}
        r = httpx.post(srv.url + "/tag", files=upload(b"not an image", "x.txt", "text/plain"))
        assert r.status_code in (400, 415) and "detail" in r.json()
        product = httpx.get(srv.url + "/products/878ff7a3").json()
        assert product["metadata"]["category"] == "Blazer" and product["tags"]["category"]["value"]
        r = httpx.post(srv.url + "/search", files=upload(PHOTO.read_bytes()), params=[("k", "5"), ("where", "tag.category=Blazer")])
        assert r.status_code == 200 and all(h["tags"]["category"]["value"] == "Blazer" for h in r.json()["results"])
        review = httpx.get(srv.url + "/tags/review", headers=srv.auth, params={"limit": 5}).json()
        assert review["total"] >= len(review["items"]) and all(i["current"] != i["predicted"] for i in review["items"])
        info = httpx.get(srv.url + "/taggers").json()
        assert info["columns"] == ["category"] and "per_class" in info["columns_report"]["category"]
        assert "/tag" in httpx.get(srv.url + "/openapi.json").json()["paths"]
        page = httpx.get(srv.url + "/product/878ff7a3").text
        assert "Predicted tags" in page and 'data-tag="category"' in page
    finally:
        srv.stop()
