"""Keys and scopes, confinement of server-side paths, URL fetching, request limits: against real
servers on loopback.  Issue 11: critical 2, 3 and 4, high 6, medium items of the HTTP surface."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest

from lookalike import Engine
from lookalike.images import ImageError, ImageLimits, fetch_url
from lookalike.security.urls import Downloader, UrlRefused

from .conftest import DEMO_CSV, ROOT, Server
from .helpers_net import http_server

IMAGES = DEMO_CSV.parent / "images"
PHOTO = IMAGES / "878ff7a3.jpg"


def upload(data: bytes = b"") -> dict:
    return {"image": ("q.jpg", data or PHOTO.read_bytes(), "image/jpeg")}


def cli(store, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "lookalike", "--store", str(store), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def wait_ingest(server, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = httpx.get(server.url + "/ingest/status", headers=server.auth).json()
        if not status["running"] and status["current"] and status["current"]["status"] != "running":
            return status["current"]
        time.sleep(0.1)
    raise AssertionError("ingest did not finish")


# ---- keys and scopes ---------------------------------------------------------------------------

def test_keys_scopes_and_revocation(store_copy):
    keys = {}
    for scope in ("read", "write", "admin"):
        created = cli(store_copy, "keys", "create", "--scope", scope, "--name", f"{scope}-client", "--json")
        assert created.returncode == 0, created.stderr
        keys[scope] = json.loads(created.stdout)
    stored = (store_copy / "keys.sqlite").read_bytes()
    assert all(k["key"].split("_", 2)[2].encode() not in stored for k in keys.values())  # only hashes are kept
    srv = Server(store_copy, key_scope=None, public_read=False)
    try:
        def headers(scope: str) -> dict:
            return {"Authorization": f"Bearer {keys[scope]['key']}"}

        anonymous = httpx.get(srv.url + "/products/878ff7a3")
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
        assert httpx.get(srv.url + "/products/878ff7a3", headers={"Authorization": "Bearer lk_nope_nope"}).status_code == 401
        assert httpx.get(srv.url + "/health").status_code == 200  # liveness stays open
        assert httpx.get(srv.url + "/products/878ff7a3", headers=headers("read")).status_code == 200
        assert httpx.post(srv.url + "/search", files=upload(), headers=headers("read")).status_code == 200
        data = {"metadata": json.dumps({"category": "Hat"})}
        refused = httpx.put(srv.url + "/products/new-1", files=upload(), data=data, headers=headers("read"))
        assert refused.status_code == 403 and "scope" in refused.json()["detail"]
        assert httpx.put(srv.url + "/products/new-1", files=upload(), data=data, headers=headers("write")).status_code == 200
        assert httpx.get(srv.url + "/stats", headers=headers("write")).status_code == 403
        assert httpx.get(srv.url + "/stats", headers=headers("admin")).status_code == 200
        assert httpx.delete(srv.url + "/products/new-1").status_code == 401
        # Revoked on the command line: refused by the running server at once.
        assert cli(store_copy, "keys", "revoke", keys["write"]["key_id"]).returncode == 0
        assert httpx.delete(srv.url + "/products/new-1", headers=headers("write")).status_code == 401
        listed = json.loads(cli(store_copy, "keys", "list", "--json").stdout)
        assert {k["name"]: k["revoked"] for k in listed} == {"read-client": False, "write-client": True, "admin-client": False}
        # The web pages ask for a key too.
        page = httpx.get(srv.url + "/admin", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        login = httpx.post(srv.url + "/login", data={"key": keys["admin"]["key"], "next": "//evil.example/"}, follow_redirects=False)
        assert login.status_code == 303 and login.headers["location"] == "/"  # no open redirect
        cookie = login.cookies
        assert "samesite=strict" in login.headers["set-cookie"].lower() and "httponly" in login.headers["set-cookie"].lower()
        assert httpx.get(srv.url + "/admin", cookies=cookie).status_code == 200
        # A cookie alone never authorises a write (it would ride along on a cross-site request).
        assert httpx.delete(srv.url + "/products/878ff7a3", cookies=cookie).status_code == 401
    finally:
        srv.stop()


def test_without_keys_reads_are_open_on_loopback_and_writes_refused(store_copy):
    srv = Server(store_copy, key_scope=None, public_read=False)
    try:
        assert httpx.get(srv.url + "/products/878ff7a3").status_code == 200
        assert httpx.get(srv.url + "/stats").status_code == 200 and httpx.get(srv.url + "/admin").status_code == 200
        r = httpx.put(srv.url + "/products/878ff7a3", data={"metadata": "{}"})
        assert r.status_code == 401 and "lookalike keys create" in r.json()["detail"]
        assert httpx.post(srv.url + "/ingest", json={"source": "/etc"}).status_code == 401
    finally:
        srv.stop()


def test_serving_beyond_loopback_without_a_key_refuses_to_start(store_copy):
    result = subprocess.run([sys.executable, "-m", "lookalike", "--store", str(store_copy), "serve", "--host", "0.0.0.0", "--port", "1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "no API key is configured" in result.stderr


def test_host_header_and_security_headers(server):
    assert httpx.get(server.url + "/health", headers={"Host": "attacker.example"}).status_code == 400  # DNS rebinding
    assert httpx.get(server.url + "/health", headers={"Host": "localhost:8000"}).status_code == 200
    r = httpx.get(server.url + "/")
    for header in ("x-content-type-options", "x-frame-options", "content-security-policy", "referrer-policy"):
        assert header in r.headers, header
    assert r.headers["x-content-type-options"] == "nosniff"


# ---- server-side paths -------------------------------------------------------------------------

def test_ingest_reads_only_inside_ingest_roots(store_copy, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.csv"
    secret.write_text("TOPSECRET-LINE-1\nTOPSECRET-LINE-2\n")
    (allowed / "link.csv").symlink_to(secret)
    (allowed / "notes.txt").write_text("PRIVATE-FIRST-LINE,with,commas\nPRIVATE-SECOND\n")
    (allowed / "escape.csv").write_text(f"id,image\nleak,{outside / 'photo.jpg'}\nok,{allowed / 'p.jpg'}\n")
    (outside / "photo.jpg").write_bytes(PHOTO.read_bytes())
    (allowed / "p.jpg").write_bytes(PHOTO.read_bytes())
    srv = Server(store_copy, {"LOOKALIKE_INGEST_ROOTS": str(allowed)})
    try:
        def ingest(source: str, **extra) -> httpx.Response:
            return httpx.post(srv.url + "/ingest", headers=srv.auth, json={"source": source, **extra})

        answers = [ingest(p) for p in ("/root", "/etc/passwd", "/no/such/file.csv", str(secret), str(allowed / "link.csv"),
                                       str(allowed / ".." / "outside" / "secret.csv"))]
        assert {a.status_code for a in answers} == {400}
        assert len({a.json()["detail"].split(":")[-1] for a in answers}) == 1  # one answer for all: no oracle
        text = ingest(str(allowed / "notes.txt"))
        assert text.status_code == 400 and "PRIVATE" not in text.text
        assert ingest(str(allowed / "escape.csv")).status_code == 202
        run = wait_ingest(srv)
        assert run["added"] == 1 and run["skipped"] == 1
        skipped = httpx.get(srv.url + "/ingest/skipped", headers=srv.auth).json()["skipped"]
        assert skipped[0]["item"] == "leak" and "outside" in skipped[0]["reason"]
        assert httpx.get(srv.url + "/products/leak/thumbnail").status_code == 404
    finally:
        srv.stop()


def test_prune_needs_admin_and_cannot_wipe_the_catalogue(store_copy, tmp_path):
    one_row = tmp_path / "one.csv"
    one_row.write_text(f"id,image\n878ff7a3,{PHOTO}\n")
    srv = Server(store_copy, {"LOOKALIKE_INGEST_ROOTS": f"{tmp_path},{ROOT / 'examples'}"}, key_scope="write")
    try:
        r = httpx.post(srv.url + "/ingest", headers=srv.auth, json={"source": str(one_row), "prune": True})
        assert r.status_code == 403 and "admin" in r.json()["detail"]
    finally:
        srv.stop()
    srv = Server(store_copy, {"LOOKALIKE_INGEST_ROOTS": f"{tmp_path},{ROOT / 'examples'}"})
    try:
        assert httpx.post(srv.url + "/ingest", headers=srv.auth, json={"source": str(one_row), "prune": True}).status_code == 202
        run = wait_ingest(srv)
        assert run["deleted"] == 0 and "prune refused" in run["prune_refused"]
        assert httpx.get(srv.url + "/health").json()["products"] == 305
    finally:
        srv.stop()


def test_uploaded_catalogue_is_ingested_and_its_local_paths_refused(store_copy, tmp_path):
    with http_server(IMAGES) as base:
        names = sorted(p.name for p in IMAGES.glob("*.jpg"))[:3]
        body = "id,image_url,title\n" + "".join(f"u-{n[:-4]},{base}/{n},Uploaded\n" for n in names) + f"local,{PHOTO},Local\n"
        srv = Server(store_copy, {"LOOKALIKE_ALLOW_PRIVATE_URLS": "true"})  # the image host is on loopback in this test
        try:
            r = httpx.post(srv.url + "/ingest/upload", headers=srv.auth, files={"catalogue": ("mine.csv", body.encode(), "text/csv")})
            assert r.status_code == 202, r.text
            run = wait_ingest(srv)
            assert run["added"] == 3 and run["skipped"] == 1 and run["source"] == "upload:mine.csv"
            skipped = httpx.get(srv.url + "/ingest/skipped", headers=srv.auth).json()["skipped"]
            assert skipped[0]["item"] == "local" and "outside the server's ingest roots" in skipped[0]["reason"]
            bad = httpx.post(srv.url + "/ingest/upload", headers=srv.auth, files={"catalogue": ("x.exe", b"MZ", "application/octet-stream")})
            assert bad.status_code == 422
            assert not list((store_copy / "uploads").glob("*"))  # uploads are removed after their run
        finally:
            srv.stop()


# ---- URLs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/x.jpg", "http://localhost:{port}/x.jpg", "http://2130706433:{port}/x.jpg",
                                 "http://0x7f.1:{port}/x.jpg", "http://[::1]:{port}/x.jpg", "http://evil.example@127.0.0.1:{port}/x.jpg",
                                 "http://user:pass@127.0.0.1:{port}/x.jpg", "http://169.254.169.254/latest/meta-data/",
                                 "http://10.0.0.1:{port}/", "http://[::ffff:127.0.0.1]:{port}/", "http://0.0.0.0:{port}/"])
def test_urls_to_loopback_and_private_networks_are_refused(url):
    with http_server(IMAGES) as base:
        port = base.rsplit(":", 1)[1]
        started = time.monotonic()
        with pytest.raises(ImageError) as info:
            fetch_url(url.format(port=port), ImageLimits())
        assert info.value.kind == "blocked_url" and "pass" not in str(info.value)
        assert time.monotonic() - started < 2  # refused before connecting


def test_redirects_are_checked_at_every_hop():
    """The first host is allowed (127.0.0.1 counts as public here); it redirects to 127.0.0.2,
    written as a decimal number, which is refused."""
    with http_server(IMAGES, host="127.0.0.2") as target, http_server(redirect_to=target.replace("127.0.0.2", "2130706434") + "/878ff7a3.jpg") as hop:
        downloader = Downloader(10_000_000, allow_private=False)
        import lookalike.security.urls as urls

        original = urls._blocked
        urls._blocked = lambda address: address != "127.0.0.1"  # type: ignore[assignment]
        try:
            with pytest.raises(UrlRefused, match="127.0.0.2|2130706434"):
                downloader.fetch(hop + "/start")
        finally:
            urls._blocked = original  # type: ignore[assignment]
            downloader.close()


def test_a_trickling_host_is_cut_off_at_the_deadline():
    with http_server(trickle_every=0.3) as base:
        downloader = Downloader(10_000_000, timeout=2.0, allow_private=True)
        started = time.monotonic()
        with pytest.raises(Exception, match="longer than 2 s"):
            downloader.fetch(base + "/slow.jpg")
        assert time.monotonic() - started < 3.5
        downloader.close()


def test_slow_downloads_cannot_starve_the_api(store_copy):
    srv = Server(store_copy, {"LOOKALIKE_ALLOW_PRIVATE_URLS": "true", "LOOKALIKE_MAX_DOWNLOADS": "2", "LOOKALIKE_URL_TIMEOUT": "6"})
    try:
        with http_server(trickle_every=0.5) as base:
            answers: list[int] = []

            def slow_put(i: int) -> None:
                r = httpx.put(f"{srv.url}/products/slow-{i}", headers=srv.auth, data={"image_url": f"{base}/s{i}.jpg"}, timeout=30)
                answers.append(r.status_code)

            threads = [threading.Thread(target=slow_put, args=(i,)) for i in range(12)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            for _ in range(5):  # while they trickle, everyone else is served at once
                started = time.monotonic()
                assert httpx.get(srv.url + "/health", timeout=5).status_code == 200
                assert httpx.get(srv.url + "/products/878ff7a3", timeout=5).status_code == 200
                assert time.monotonic() - started < 1.0
            for t in threads:
                t.join(30)
            assert answers.count(503) >= 8 and set(answers) <= {400, 503}, answers
    finally:
        srv.stop()


def test_slow_url_rows_do_not_hold_back_local_rows(tmp_path):
    with http_server(trickle_every=0.5) as base:
        local = sorted(IMAGES.glob("*.jpg"))[:5]
        rows = [f"slow-{i},{base}/s{i}.jpg" for i in range(2)] + [f"{p.stem},{p}" for p in local]
        catalogue = tmp_path / "mixed.csv"
        catalogue.write_text("id,image\n" + "\n".join(rows) + "\n")
        store = tmp_path / "store"
        with Engine.open(store, allow_private_urls=True, url_timeout=8) as engine:
            result: dict = {}
            worker = threading.Thread(target=lambda: result.update(report=engine.ingest(catalogue)))
            worker.start()
            deadline = time.time() + 6
            committed = 0
            while time.time() < deadline and committed < 5:
                time.sleep(0.2)
                db = sqlite3.connect(store / "catalogue.sqlite")
                committed = db.execute("SELECT COUNT(*) FROM products").fetchone()[0]
                db.close()
            assert committed == 5 and worker.is_alive()  # the local photos are in while the URLs still trickle
            worker.join(30)
            assert result["report"].added == 5 and {s.item for s in result["report"].skipped} == {"slow-0", "slow-1"}


def test_stored_urls_carry_no_credentials(tmp_path):
    with http_server(IMAGES) as base:
        url = base.replace("http://", "http://shop:hunter2@") + "/878ff7a3.jpg"
        with Engine.open(tmp_path / "store", allow_private_urls=True) as engine:
            product = engine.upsert("p1", image=url)
            assert product.image == base + "/878ff7a3.jpg"


# ---- request limits ----------------------------------------------------------------------------

def test_a_huge_chunked_upload_is_refused_while_streaming(server):
    """300 MB sent chunked (no Content-Length): refused with 413 at the limit, connection closed."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST /search HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
                 "Content-Type: multipart/form-data; boundary=XX\r\n\r\n".encode())
    preamble = b'--XX\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    sock.sendall(f"{len(preamble):x}\r\n".encode() + preamble + b"\r\n")
    answer: list[bytes] = []

    def read() -> None:
        try:
            while data := sock.recv(65536):
                answer.append(data)
        except OSError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    chunk, sent = b"\xff" * (1024 * 1024), 0
    try:
        while sent < 300 * 1024 * 1024 and not answer:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
    except OSError:
        pass  # the server closed the connection
    reader.join(10)
    sock.close()
    assert sent < 40 * 1024 * 1024, f"{sent} bytes were taken"
    assert b"".join(answer).startswith(b"HTTP/1.1 413"), b"".join(answer)[:80]
    assert b"connection: close" in b"".join(answer).lower()


def test_out_of_range_numbers_and_openapi_errors(server):
    assert httpx.get(server.url + "/products", params={"offset": 2**63}).status_code == 422
    assert httpx.get(server.url + "/ingest/skipped", headers=server.auth, params={"run_id": 2**63}).status_code == 422
    with httpx.Client() as client:  # the connection survives errors
        assert client.get(server.url + "/products", params={"offset": 2**63}).json()["error"] == "bad_request"
        assert client.get(server.url + "/health").status_code == 200
    schema = httpx.get(server.url + "/openapi.json").json()
    put = schema["paths"]["/products/{product_id}"]["put"]
    assert {"400", "401", "403", "413", "415", "422"} <= set(put["responses"])
    assert "ErrorOut" in json.dumps(put["responses"]["413"])
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_an_unexpected_error_is_a_json_500_with_an_incident_id():
    """The last-resort answer: no traceback, no address, and the connection is not reset."""
    import asyncio

    from lookalike.security.http import HttpGuard

    async def broken_app(scope, receive, send):
        raise RuntimeError("secret detail at 0x7f00deadbeef")

    async def call() -> httpx.Response:
        guard = HttpGuard(broken_app, allowed_hosts=None, body_limit=1000)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://test") as client:
            return await client.get("/anything")

    response = asyncio.run(call())
    assert response.status_code == 500 and response.json()["error"] == "internal"
    assert "secret" not in response.text and "logged as" in response.json()["detail"]
    assert response.headers.get("connection") != "close" and response.headers["x-content-type-options"] == "nosniff"


def test_catalogue_upload_refuses_oversize_no_key_and_hostile_names(store_copy):
    srv = Server(store_copy, {"LOOKALIKE_MAX_CATALOGUE_BYTES": "2000"})
    try:
        def send(name: str, body: bytes, headers: dict | None = None) -> httpx.Response:
            return httpx.post(srv.url + "/ingest/upload", headers=srv.auth if headers is None else headers,
                              files={"catalogue": (name, body, "text/csv")})

        row = f"a,{PHOTO}\n".encode()
        assert send("big.csv", b"id,image\n" + row * 200).status_code == 413
        assert send("c.csv", b"id,image\n" + row, headers={}).status_code == 401
        _, read_key = __import__("lookalike.security", fromlist=["KeyRing"]).KeyRing(store_copy).create("reader", "read")
        assert send("c.csv", b"id,image\n" + row, headers={"Authorization": f"Bearer {read_key}"}).status_code == 403
        hostile = send("../../etc/cron.d/x.csv", b"id,image\n" + row)
        assert hostile.status_code == 202  # the name is reduced to its last part; the file lands in the store's uploads
        assert not (store_copy.parent / "etc").exists()
        assert send("notes.exe", b"MZ").status_code == 422
        assert send("empty.csv", b"").status_code == 400
    finally:
        srv.stop()


def test_keys_cli_refuses_bad_scopes_and_names(store_copy):
    bad = cli(store_copy, "keys", "create", "--scope", "root", "--name", "x")
    assert bad.returncode == 1 and "unknown scope 'root'" in bad.stderr
    blank = cli(store_copy, "keys", "create", "--scope", "read", "--name", " ")
    assert blank.returncode == 1 and "1-100 printable characters" in blank.stderr
    missing = cli(store_copy, "keys", "revoke", "nope")
    assert missing.returncode == 1 and "no API key with id 'nope'" in missing.stderr
