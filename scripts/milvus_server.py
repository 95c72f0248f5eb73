"""Run a real Milvus server (standalone, from PyPI's ``milvus`` package) for the test suite: CI
starts it so the vector-backend contract also runs against a server, not only Milvus Lite.

    python -m venv /tmp/milvus-venv && /tmp/milvus-venv/bin/pip install milvus==2.3.5
    /tmp/milvus-venv/bin/python scripts/milvus_server.py --port 19530 --data /tmp/milvus-data &
    LOOKALIKE_TEST_MILVUS_URI=http://127.0.0.1:19530 make test     # or let the tests start it:
    LOOKALIKE_TEST_MILVUS_SERVER_PYTHON=/tmp/milvus-venv/bin/python make test

It runs in its own environment (the package is only the server, with its own etcd); the suite
talks to it with pymilvus like any Milvus deployment.  Stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from milvus import default_server  # the `milvus` package of the server's own venv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=19530)
    parser.add_argument("--data", default="/tmp/lookalike-milvus-data", help="the server's data folder (etcd, logs, segments)")
    args = parser.parse_args()
    default_server.set_base_dir(args.data)
    default_server.listen_port = args.port
    started = time.perf_counter()
    default_server.start()
    print(f"milvus listening on 127.0.0.1:{args.port} after {time.perf_counter() - started:.1f} s", flush=True)

    def stop(*_: object) -> None:
        default_server.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
