#!/usr/bin/env python3
"""How long `lookalike get ID` takes, and how much memory it uses, on a large store.

Builds (once) a store of N products with synthetic 1280-d vectors, then runs `get`, `info`
and `search`-free commands as users do, in fresh processes, reporting wall time and peak RSS.
Pass --python of another checkout to measure a baseline in the same run:

    python benchmarks/cli_startup.py --n 100000
    python benchmarks/cli_startup.py --n 100000 --baseline-python /path/to/old/.venv/bin/python --baseline-src /path/to/old/src
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def build(store: Path, n: int) -> None:
    from lookalike import Engine
    from lookalike.storage import ProductWrite

    if (store / "catalogue.sqlite").exists():
        return
    rng = np.random.default_rng(0)
    with Engine.open(store, ann_threshold=10**9) as engine:  # exact search: the build measures nothing
        for start in range(0, n, 10_000):
            m = min(10_000, n - start)
            vectors = rng.normal(size=(m, 1280)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            engine.searcher.serving.write([ProductWrite(f"p{start + i}", None, None, {"price": float(i % 200)}, vectors[i]) for i in range(m)])


# A small parent per measurement, so each command's peak RSS is its own (RUSAGE_CHILDREN is a running maximum).
_MEASURE = ("import resource, subprocess, sys, time; t = time.perf_counter(); r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "w = time.perf_counter() - t; sys.stderr.write(r.stderr); "
            "print(r.returncode, w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def run(python: str, src: Path, module: str, store: Path, *args: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    result = subprocess.run([sys.executable, "-c", _MEASURE, python, "-m", module, "--store", str(store), *args],
                            env=env, capture_output=True, text=True)
    code, wall, peak_kib = result.stdout.split()
    if code != "0":
        raise SystemExit(result.stderr)
    return {"wall_s": round(float(wall), 3), "peak_rss_mb": round(int(peak_kib) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--store", type=Path, default=ROOT / "benchmarks" / ".stores" / "cli-startup")
    parser.add_argument("--baseline-python")
    parser.add_argument("--baseline-src", type=Path)
    args = parser.parse_args()
    store = args.store.with_name(f"{args.store.name}-{args.n}")
    build(store, args.n)
    results = {"n": args.n}
    if args.baseline_python:  # an older checkout: its command line was the module lookalike.cli
        results["baseline_get"] = run(args.baseline_python, args.baseline_src, "lookalike.cli", store, "get", "p1", "--json")
    results["get"] = run(sys.executable, ROOT / "src", "lookalike", store, "get", "p1", "--json")
    results["info"] = run(sys.executable, ROOT / "src", "lookalike", store, "info", "--json")
    if args.baseline_python:
        results["get_speedup"] = round(results["baseline_get"]["wall_s"] / results["get"]["wall_s"], 1)
    print(json.dumps(results, indent=2))
    out = ROOT / "benchmarks" / "results" / f"cli_startup_{args.n}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
