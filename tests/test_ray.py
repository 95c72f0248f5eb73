"""Ingest and re-index on Ray (the ``ray`` extra): the same vectors as local threads, a worker
killed mid-run loses nothing, and the CLI's --distributor options reach it.  One local Ray with
two CPUs serves the module (starting Ray costs seconds); its overhead is a benchmark's business
(benchmarks/distributed.py), not a test's."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lookalike import Engine
from lookalike.ingest import ThreadDistributor

from .conftest import DEMO_CSV

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the ray extra is not installed (pip install 'lookalike[ray]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """A local Ray head started by ``ray start`` in a process group of its own, joined by address.

    Why not ``ray.init()`` here: after the rest of the suite has run in this process (gRPC clients,
    servers, many threads), a head node started from inside it never came up ("timed out during
    startup") although it starts in a fresh process; a separate head also matches how a user runs a
    cluster.  The group is killed afterwards, leaving any other Ray on the machine alone."""
    import ray

    port, log = free_port(), tmp_path_factory.mktemp("ray") / "head.log"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    auth_mode = os.environ.get("RAY_AUTH_MODE")
    log_file = log.open("w")
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
                            env=env, start_new_session=True, stdout=log_file, stderr=subprocess.STDOUT)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                ray.init(address=f"127.0.0.1:{port}", log_to_driver=False, configure_logging=False)
                break
            except Exception:  # the head is still coming up
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the Ray head did not start: {log.read_text()[-2000:]}") from None
                time.sleep(1)
        # The crashing worker below is defined in this test module, which Ray's workers cannot import: ship it by value.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        yield ray
    finally:
        ray.shutdown()
        if auth_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = auth_mode
        os.killpg(head.pid, signal.SIGTERM)
        try:  # `ray start --block` did not exit on SIGTERM within 30 s in any CI log: a short grace, then kill
            head.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        log_file.close()
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # where `ray start` points later bare inits
        if current.exists() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()


def vectors_by_id(store: Path, **settings: Any) -> dict[str, np.ndarray]:
    with Engine.open(store, **settings) as engine:
        return {i: engine.index.vector(engine.store.get(i).rowid) for i in sorted(engine.store.all_ids())}


class CrashingWorker:
    """Maps as the real worker does, but the first incarnation that reaches its ``after``-th
    partition kills its own process (as a lost node would), once per marker file."""

    def __init__(self, inner: Any, marker: str, after: int):
        self.inner, self.marker, self.after, self.seen = inner, marker, after, 0

    def __call__(self, partition: Any) -> Any:
        self.seen += 1
        if self.seen == self.after and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return self.inner(partition)

    def close(self) -> None:
        self.inner.close()


class CrashingFactory:
    def __init__(self, factory: Any, marker: str, after: int):
        self.factory, self.marker, self.after = factory, marker, after

    def __call__(self) -> CrashingWorker:
        return CrashingWorker(self.factory(), self.marker, self.after)


def test_ray_ingest_gives_the_vectors_local_threads_give(ray_session, demo_store, tmp_path):
    from lookalike.ingest.ray_distributor import RayDistributor

    with Engine.open(tmp_path / "store") as engine:
        report = engine.ingest(DEMO_CSV, distributor=RayDistributor(workers=2), batch_size=32)
        assert report.added == 305 and not report.skipped
    ray_vectors, local_vectors = vectors_by_id(tmp_path / "store"), vectors_by_id(demo_store)
    assert ray_vectors.keys() == local_vectors.keys()
    worst = max(float(np.abs(ray_vectors[i] - local_vectors[i]).max()) for i in ray_vectors)
    assert worst < 1e-5  # the same model on the same pixels (batches of another size round differently, by ~1e-7)


def test_a_worker_killed_mid_run_loses_nothing(ray_session, tmp_path):
    from lookalike.ingest.ray_distributor import RayDistributor

    marker = tmp_path / "killed"

    class Killing(RayDistributor):
        def map(self, factory, partitions):
            return super().map(CrashingFactory(factory, str(marker), after=4), partitions)

    with Engine.open(tmp_path / "ray", encoder="fake") as engine:
        report = engine.ingest(DEMO_CSV, distributor=Killing(workers=1), batch_size=16)
    assert marker.exists(), "no worker was killed: the test tested nothing"
    assert report.added == 305 and not report.skipped and report.status == "completed"
    with Engine.open(tmp_path / "local", encoder="fake") as engine:
        engine.ingest(DEMO_CSV, distributor=ThreadDistributor(2), batch_size=16)
    killed, local = vectors_by_id(tmp_path / "ray"), vectors_by_id(tmp_path / "local")
    assert killed.keys() == local.keys() and all(np.array_equal(killed[i], local[i]) for i in killed)


def test_bad_rows_are_reported_and_a_rerun_resumes_on_ray_as_locally(ray_session, tmp_path):
    """Skip reports and resume come from the driver, whichever distributor maps."""
    from lookalike.ingest.ray_distributor import RayDistributor

    rows = DEMO_CSV.read_text().splitlines()
    (tmp_path / "not-a-photo.jpg").write_text("this is text")
    catalogue = tmp_path / "catalogue.csv"
    catalogue.write_text("\n".join([*(r.replace("images/", f"{DEMO_CSV.parent}/images/") if i else r for i, r in enumerate(rows[:41])),
                                     f"broken,{tmp_path / 'not-a-photo.jpg'},Odd,false,x,CC0-1.0"]) + "\n")
    with Engine.open(tmp_path / "store", encoder="fake") as engine:
        first = engine.ingest(catalogue, distributor=RayDistributor(workers=1), batch_size=8)
        again = engine.ingest(catalogue, distributor=RayDistributor(workers=1), batch_size=8)
    assert first.added == 40 and [s.item for s in first.skipped] == ["broken"] and first.skip_report and "broken" in Path(first.skip_report).read_text()
    assert again.added == 0 and again.unchanged == 40 and len(again.skipped) == 1


def test_reindex_runs_on_ray_too(ray_session, tmp_path):
    from lookalike.ingest.ray_distributor import RayDistributor

    with Engine.open(tmp_path / "store", encoder="fake") as engine:
        engine.ingest(DEMO_CSV, batch_size=32)
        outcome = engine.reindex("fake-wide", distributor=RayDistributor(workers=1))
        assert outcome["switched"] and outcome["products"] == 305 and engine.encoder.name == "fake-wide"
    shutil.copytree(tmp_path / "store", tmp_path / "copy")
    with Engine.open(tmp_path / "local", encoder="fake") as engine:
        engine.ingest(DEMO_CSV, batch_size=32)
        engine.reindex("fake-wide", distributor=ThreadDistributor(2))
    on_ray, local = vectors_by_id(tmp_path / "copy"), vectors_by_id(tmp_path / "local")
    assert on_ray.keys() == local.keys() and all(np.array_equal(on_ray[i], local[i]) for i in on_ray)


def test_tag_predict_on_ray_writes_the_tags_local_tagging_writes(ray_session, demo_store, tmp_path):
    """The label-free tagger set (text rules, zero-shot groups, colour) on one actor: the same tags."""
    tags = {}
    for where, settings in [("local", {}), ("ray", {"distributor": "ray", "distributor_workers": 1})]:
        shutil.copytree(demo_store, tmp_path / where)
        with Engine.open(tmp_path / where, **settings) as engine:
            assert engine.tag() == 305
            tags[where] = {i: engine.get(i).tags for i in sorted(engine.store.all_ids())}
    strip = lambda t: {i: {k: (v["value"], round(v["confidence"], 4)) for k, v in d.items()} for i, d in t.items()}  # noqa: E731
    assert strip(tags["ray"]) == strip(tags["local"]) and all(tags["local"].values())


def test_the_cli_ingests_on_a_local_ray_it_starts_itself(tmp_path):
    """`--distributor ray` without an address starts Ray for the run and stops it after."""
    env = dict(os.environ)
    command = [sys.executable, "-m", "lookalike"]
    rows = DEMO_CSV.read_text().splitlines()[:31]
    catalogue = tmp_path / "thirty.csv"
    catalogue.write_text("\n".join(r.replace("images/", f"{DEMO_CSV.parent}/images/") if i else r for i, r in enumerate(rows)) + "\n")
    done = subprocess.run([*command, "--store", str(tmp_path / "store"), "ingest", str(catalogue), "--distributor", "ray", "--workers", "1", "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"added": 30' in done.stdout
    refused = subprocess.run([*command, "--store", str(tmp_path / "store"), "ingest", str(DEMO_CSV), "--distributor", "spark"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode != 0 and "unknown distributor 'spark'; choose one of threads, processes, serial, ray" in refused.stderr
