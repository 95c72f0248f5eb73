"""Run every benchmark in turn (each prints its figures and writes benchmarks/results/*.json)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = [
    ["ingest_throughput.py"],
    ["int8_encoder.py"],
    ["quality_myntra.py"],
    ["vector_search.py", "--n", "1000000"],
    ["http_search.py", "--products", "100000", "--clients", "4"],
    ["learned_codes.py"],
    ["train_speed.py"],
    ["attack_resources.py"],
    ["look_latency.py"],
    ["text_search.py"],
    ["text_latency.py", "--products", "100000"],
    ["export_similar.py", "--products", "100000"],
    ["distributed.py"],  # add --milvus-uri http://127.0.0.1:19530 with a server running (scripts/milvus_server.py)
]

if __name__ == "__main__":
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    failed = 0
    for run in RUNS:
        print(f"== {' '.join(run)}", flush=True)
        failed += subprocess.run([sys.executable, *run], cwd=HERE, env=env).returncode != 0
    sys.exit(1 if failed else 0)
