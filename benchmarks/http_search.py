"""HTTP search-by-photo latency at catalogue scale with concurrent clients.

    python benchmarks/http_search.py --products 100000 --clients 4
    python benchmarks/http_search.py --products 1000000 --clients 8 --baseline-src OLD/src
    python benchmarks/http_search.py --products 1000000 --clients 8 --encoders efficientnet-lite0-int8 efficientnet-lite0 --modes whole


Builds a store of N products: real Myntra photos embedded by the real model, topped up with
synthetic products whose vectors are real vectors perturbed per dimension (so queries land
among realistic neighbours).  Starts ``lookalike serve`` on a loopback port and sends real
photos from concurrent clients (bounded request counts), timing each request end to end:
upload, decode, embed, approximate search, metadata lookup, JSON.  The clients share the
server's two cores, so they are kept lean: pre-encoded uploads over ``http.client`` on
keep-alive connections (``--client httpx`` builds each upload with httpx, as every figure
before the late evening of 2026-12-07 did, at about four times the client CPU).  Each load
reports the client's and the server's CPU per request beside the latencies.

Also timed: how long the server takes from start to answering ``/health`` on the built store
(it opens from its snapshot: the vector matrix memory-mapped, the filter columns loaded, only
rows changed since read from SQLite), and, with ``--baseline-src`` naming another checkout's
``src``, the same for that code (e.g. the release before snapshots, which read every row).
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

import httpx
import numpy as np

from _common import SHARED, need_shared, percentiles, report
from lookalike import Engine
from lookalike.storage import ProductWrite


def build_store(path: Path, n_products: int, n_real: int, encoder: str | None = None) -> None:
    rows = list(csv.DictReader((SHARED / "myntra" / "labels.csv").open()))[:n_real]
    catalogue = path.parent / "real.csv"
    with catalogue.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "image_file": str(SHARED / "myntra" / r["image_file"])} for r in rows)
    with Engine.open(path, encoder=encoder) as engine:
        engine.ingest(catalogue)
        real = np.stack([engine.index.vector(r) for r in engine.index.ids()])
        spread = real.std(axis=0)
        rng = np.random.default_rng(0)
        types = [r["article_type"] for r in rows]
        for start in range(0, n_products - n_real, 5000):
            m = min(5000, n_products - n_real - start)
            base = real[rng.integers(0, len(real), m)]
            vectors = base + 0.6 * spread * rng.normal(size=base.shape).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            engine.searcher.serving.write([
                ProductWrite(f"syn-{start + i}", None, None, {"article_type": types[(start + i) % len(types)], "price": float(rng.integers(5, 200))}, vectors[i])
                for i in range(m)
            ])
        engine.searcher.serving.maintain(save=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path, src: str | None = None) -> tuple[subprocess.Popen, str, float]:
    """``lookalike serve`` on a free loopback port; returns it, its URL and the seconds until it answered."""
    port = free_port()
    env = {**os.environ, **({"PYTHONPATH": src} if src else {})}
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "lookalike", "--store", str(store), "serve", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    while time.perf_counter() - started < 1200:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return server, url, round(time.perf_counter() - started, 2)
        except httpx.HTTPError:
            time.sleep(0.1)
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
    server.kill()
    raise SystemExit("the server did not answer within 20 minutes")


def multipart_bodies(photos: list[bytes]) -> tuple[list[bytes], str]:
    """Each photo as a ready multipart/form-data body (field ``image``), and the content type."""
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return [head + photo + tail for photo in photos], f"multipart/form-data; boundary={boundary}"


def load(url: str, photos: list[bytes], clients: int, per_client: int, params: list, client_kind: str = "raw") -> tuple[list[float], int]:
    """``clients`` threads, each sending ``per_client`` searches back to back on one keep-alive
    connection.  ``raw`` posts pre-encoded bodies with ``http.client`` (about 0.4 ms of this
    process's CPU a request); ``httpx`` builds each upload with httpx (about 1.5 ms), CPU that
    the server, on the same two cores, does not get."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def record(elapsed: float, ok: bool) -> None:
        with lock:
            if ok:
                latencies.append(elapsed)
            else:
                errors[0] += 1

    def raw_client(seed: int) -> None:
        bodies, content_type = encoded
        host, port = url.removeprefix("http://").split(":")
        path = "/search?" + urlencode(params)
        rng = np.random.default_rng(seed)
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            for _ in range(per_client):
                body = bodies[rng.integers(0, len(bodies))]
                t = time.perf_counter()
                connection.request("POST", path, body=body, headers={"Content-Type": content_type})
                response = connection.getresponse()
                data = response.read()
                elapsed = (time.perf_counter() - t) * 1000
                record(elapsed, response.status == 200 and len(json.loads(data)["results"]) > 0)
        finally:
            connection.close()

    def httpx_client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(timeout=30) as http:
            for _ in range(per_client):
                photo = photos[rng.integers(0, len(photos))]
                t = time.perf_counter()
                r = http.post(url + "/search", files={"image": ("q.jpg", photo, "image/jpeg")}, params=params)
                elapsed = (time.perf_counter() - t) * 1000
                record(elapsed, r.status_code == 200 and len(r.json()["results"]) > 0)

    encoded = multipart_bodies(photos) if client_kind == "raw" else ([], "")  # once per load, not per request
    target = raw_client if client_kind == "raw" else httpx_client
    threads = [threading.Thread(target=target, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0]


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of another process (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--real", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=100, help="per client")
    parser.add_argument("--baseline-src", type=Path, help="also time server start-up with this checkout's src (the baseline)")
    parser.add_argument("--encoders", nargs="+", default=[None], help="one store per encoder, measured in turn (default: the default encoder)")
    parser.add_argument("--modes", nargs="+", default=["default", "whole", "filtered"], choices=["default", "whole", "filtered"],
                        help="which searches to load the server with (default: main garment; whole: whole=true; filtered: price<50)")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="load generator: pre-encoded uploads over http.client (default), or httpx building each upload")
    args = parser.parse_args()
    need_shared()
    runs = {}
    for encoder in args.encoders:
        runs[encoder or "default"] = measure(args, encoder)
    report(f"http_search_{args.products}", runs if len(runs) > 1 else next(iter(runs.values())))


def measure(args: argparse.Namespace, encoder: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        t = time.perf_counter()
        build_store(store, args.products, args.real, encoder)
        build_s = time.perf_counter() - t
        server, url, ready_s = start_server(store)
        try:
            stats = httpx.get(url + "/stats").json()
            rows = list(csv.DictReader((SHARED / "myntra" / "labels.csv").open()))[-300:]  # photos not in the store
            photos = [(SHARED / "myntra" / r["image_file"]).read_bytes() for r in rows]
            load(url, photos, 1, 10, [("k", "20")], args.client)  # warm-up
            results = {"products": stats["products"], "index": stats["index"], "encoder": stats.get("encoder"), "client": args.client,
                       "store_build_s": round(build_s, 1), "server_ready_s": ready_s}
            # A plain search first glances for a person (shop the look: a photo of one searches its
            # main garment); whole=true skips that, as before shop the look: the baseline of this run.
            for mode, label, clients, params in (("default", "1_client", 1, [("k", "20")]),
                                                 ("whole", "1_client_whole", 1, [("k", "20"), ("whole", "true")]),
                                                 ("default", f"{args.clients}_clients", args.clients, [("k", "20")]),
                                                 ("whole", f"{args.clients}_clients_whole", args.clients, [("k", "20"), ("whole", "true")]),
                                                 ("filtered", f"{args.clients}_clients_filtered", args.clients, [("k", "20"), ("where", "price<50")])):
                if mode not in args.modes:
                    continue
                t, own_cpu, server_cpu = time.perf_counter(), time.process_time(), process_cpu_seconds(server.pid)
                latencies, errors = load(url, photos, clients, args.requests, params, args.client)
                wall, requests = time.perf_counter() - t, max(1, clients * args.requests)
                results[label] = {**percentiles(latencies), "errors": errors, "requests_per_s": round(len(latencies) / wall, 1),
                                  "client_cpu_ms_per_request": round(1000 * (time.process_time() - own_cpu) / requests, 2)}
                server_after = process_cpu_seconds(server.pid)
                if server_cpu is not None and server_after is not None:
                    results[label]["server_cpu_ms_per_request"] = round(1000 * (server_after - server_cpu) / requests, 2)
                print(label, results[label], flush=True)
        finally:
            server.terminate()
            server.wait(60)
        if args.baseline_src:
            baseline, _, baseline_ready_s = start_server(store, str(args.baseline_src))
            baseline.terminate()
            baseline.wait(60)
            results["baseline_server_ready_s"] = baseline_ready_s
            results["ready_speedup"] = round(baseline_ready_s / ready_s, 1)
            print("ready", ready_s, "s; baseline", baseline_ready_s, "s", flush=True)
    return results


if __name__ == "__main__":
    main()
