"""What hostile requests cost the server: peak memory for six concurrent 40-megapixel PNGs and for
a 20,000-key metadata PUT, and /health latency while slow image hosts trickle.

Each attack runs against a fresh `lookalike serve` on a copy of the demo store.  The baseline is
the same server with the protection switched off where a setting allows it (the decode budget),
measured in the same run.  Peak memory is the server process's VmHWM from /proc.

    python benchmarks/attack_resources.py
"""

from __future__ import annotations

import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conftest import DEMO_CSV, Server  # noqa: E402
from tests.helpers_net import http_server  # noqa: E402

from _common import report  # noqa: E402


def _status_mb(pid: int, field: str) -> float:
    """A memory figure of a process from /proc/PID/status (VmRSS now, VmHWM the peak), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmHWM")


def rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmRSS")


def big_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6300, 6300), (240, 240, 240)).save(buffer, "PNG")
    return buffer.getvalue()


def demo_store(work: Path) -> Path:
    from lookalike import Engine

    store = work / "demo-store"
    if not store.exists():
        with Engine.open(store) as engine:
            engine.ingest(DEMO_CSV)
    return store


def fresh_copy(store: Path, work: Path, name: str) -> Path:
    target = work / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(store, target)
    return target


def concurrent_bombs(store: Path, env: dict[str, str], png: bytes) -> dict[str, float]:
    srv = Server(store, env)
    try:
        before = rss_mb(srv.proc.pid)
        statuses: list[int] = []

        def send() -> None:
            r = httpx.post(srv.url + "/search", files={"image": ("big.png", png, "image/png")}, timeout=300)
            statuses.append(r.status_code)

        threads = [threading.Thread(target=send) for _ in range(6)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"rss_before_mb": before, "peak_rss_mb": peak_rss_mb(srv.proc.pid), "seconds": time.perf_counter() - started,
                "ok": statuses.count(200)}
    finally:
        srv.stop()


def many_keys(store: Path) -> dict[str, float]:
    srv = Server(store)
    try:
        before = rss_mb(srv.proc.pid)
        metadata = json.dumps({f"k{i}": i for i in range(20_000)})
        r = httpx.put(srv.url + "/products/many-keys", headers=srv.auth, data={"metadata": metadata},
                      files={"image": ("q.jpg", (DEMO_CSV.parent / "images" / "878ff7a3.jpg").read_bytes(), "image/jpeg")})
        return {"status": r.status_code, "body_kb": len(metadata) / 1024, "rss_before_mb": before, "rss_after_mb": rss_mb(srv.proc.pid)}
    finally:
        srv.stop()


def trickling_puts(store: Path, clients: int = 45) -> dict[str, float]:
    srv = Server(store, {"LOOKALIKE_ALLOW_PRIVATE_URLS": "true", "LOOKALIKE_URL_TIMEOUT": "10"})
    try:
        with http_server(trickle_every=2.0) as base:
            answers: list[int] = []

            def slow(i: int) -> None:
                r = httpx.put(f"{srv.url}/products/slow-{i}", headers=srv.auth, data={"image_url": f"{base}/{i}.jpg"}, timeout=60)
                answers.append(r.status_code)

            threads = [threading.Thread(target=slow, args=(i,)) for i in range(clients)]
            for t in threads:
                t.start()
            time.sleep(1)
            latencies = []
            for _ in range(20):
                started = time.perf_counter()
                httpx.get(srv.url + "/health", timeout=30)
                latencies.append((time.perf_counter() - started) * 1000)
                time.sleep(0.2)
            held_started = time.perf_counter()
            for t in threads:
                t.join()
            return {"clients": clients, "health_p50_ms": statistics.median(latencies), "health_max_ms": max(latencies),
                    "slowest_put_s": 1 + 4 + (time.perf_counter() - held_started), "refused_503": answers.count(503),
                    "cut_off_400": answers.count(400)}
    finally:
        srv.stop()


def main() -> None:
    work = Path(os.environ.get("LOOKALIKE_BENCH_DIR", tempfile.mkdtemp(prefix="lookalike-attack-")))
    store = demo_store(work)
    png = big_png()
    print(f"six concurrent {len(png) / 1024:.0f} kB PNGs of 6300x6300 pixels (POST /search):")
    results: dict[str, dict[str, float]] = {}
    results["bombs_without_budget"] = concurrent_bombs(fresh_copy(store, work, "a"), {"LOOKALIKE_MAX_DECODE_PIXELS": str(10**12)}, png)
    results["bombs_with_budget"] = concurrent_bombs(fresh_copy(store, work, "b"), {}, png)
    for name in ("bombs_without_budget", "bombs_with_budget"):
        r = results[name]
        print(f"  {name:22s} RSS {r['rss_before_mb']:.0f} -> peak {r['peak_rss_mb']:.0f} MB, {r['seconds']:.1f} s, {r['ok']:.0f}/6 answered 200")
    growth = [results[n]["peak_rss_mb"] - results[n]["rss_before_mb"] for n in ("bombs_without_budget", "bombs_with_budget")]
    print(f"  peak growth: {growth[0]:.0f} MB without the budget, {growth[1]:.0f} MB with it ({growth[0] / max(growth[1], 1):.1f}x less)")
    results["many_keys"] = many_keys(fresh_copy(store, work, "c"))
    r = results["many_keys"]
    print(f"PUT with 20,000 metadata keys ({r['body_kb']:.0f} kB): HTTP {r['status']:.0f}, RSS {r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} MB")
    results["trickling"] = trickling_puts(fresh_copy(store, work, "d"))
    r = results["trickling"]
    print(f"{r['clients']:.0f} PUTs whose image URL trickles a byte every 2 s: /health p50 {r['health_p50_ms']:.1f} ms, "
          f"max {r['health_max_ms']:.1f} ms; {r['refused_503']:.0f} refused as busy, {r['cut_off_400']:.0f} cut off at the deadline")
    report("attack_resources", {"results": results})


if __name__ == "__main__":
    main()
