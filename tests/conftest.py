"""Shared fixtures: the committed demo catalogue, an ingested demo store, and the shared data set."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from lookalike import Engine
from lookalike.models import register_encoder
from lookalike.models.encoders import FakeEncoder

# A model-free encoder (pixel hash -> vector) so seams are tested in milliseconds; the real
# model stays in the end-to-end tests.
register_encoder("fake", FakeEncoder.factory)
register_encoder("fake-wide", lambda settings=None: FakeEncoder(dim=48, name="fake-wide"))  # a second model to re-index to

# The garments stage of ingest (on by default for users) costs ~15 s per demo ingest; tests that
# are not about it skip it, the CLI and server subprocesses too (they inherit the environment).
# The tests of the stage ask for it (garments=True, --garments), and the default is tested on its own.
os.environ.setdefault("LOOKALIKE_INGEST_GARMENTS", "false")

ROOT = Path(__file__).resolve().parents[1]
DEMO_CSV = ROOT / "examples" / "demo" / "products.csv"
SHARED = Path(os.environ.get("LOOKALIKE_SHARED_DATA", ROOT.parent / "shared" / "data"))

requires_shared = pytest.mark.skipif(
    not (SHARED / "myntra" / "labels.csv").exists(),
    reason=f"needs the shared fashion data set at {SHARED} (set LOOKALIKE_SHARED_DATA); a plain clone does not have it",
)


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory) -> Path:
    """The demo catalogue ingested once per test session (read-only: copy it to change it)."""
    path = tmp_path_factory.mktemp("demo") / "store"
    with Engine.open(path) as engine:
        report = engine.ingest(DEMO_CSV)
        assert report.added == 305 and not report.skipped
    return path


@pytest.fixture
def store_copy(demo_store, tmp_path) -> Path:
    """A private, writable copy of the demo store."""
    target = tmp_path / "store"
    shutil.copytree(demo_store, target)
    return target


@pytest.fixture
def engine(store_copy):
    with Engine.open(store_copy) as engine:
        yield engine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``lookalike serve`` in a subprocess on a loopback port: the real thing users run.

    ``key_scope``: create an API key of that scope first (``self.key``, ``self.auth`` headers);
    None starts a server without keys.  ``public_read`` lets anonymous clients search and read."""

    def __init__(self, store: Path, extra_env: dict[str, str] | None = None, key_scope: str | None = "admin", public_read: bool = True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key, self.auth = "", {}
        if key_scope:
            from lookalike.security import KeyRing

            store.mkdir(parents=True, exist_ok=True)
            _, self.key = KeyRing(store).create("tests", key_scope)
            self.auth = {"Authorization": f"Bearer {self.key}"}
        env = {**os.environ, "LOOKALIKE_PUBLIC_READ": "true" if public_read else "false", **(extra_env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lookalike", "--store", str(store), "serve", "--port", str(self.port)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not start within 60 s")

    def finished_job(self, status_path: str, timeout: float = 60) -> dict:
        """Poll a background job's status route until it stops running; its last status."""
        deadline = time.time() + timeout
        while True:
            job = httpx.get(self.url + status_path, headers=self.auth).json()["job"]
            if (job and not job["running"]) or time.time() > deadline:
                return job
            time.sleep(0.3)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def server(store_copy, tmp_path):
    srv = Server(store_copy, {"LOOKALIKE_INGEST_ROOTS": str(tmp_path)})
    yield srv
    srv.stop()
