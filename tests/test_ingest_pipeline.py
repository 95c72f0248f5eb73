"""The ingest pipeline's seams: reader → mapper → writer, and distributors that give the same store."""

from __future__ import annotations

import pickle
import shutil
from dataclasses import dataclass

import numpy as np
import pytest

from lookalike import Engine
from lookalike.images import ImageError, ImageLimits
from lookalike.ingest import MapperFactory, ProcessDistributor, SerialDistributor, ThreadDistributor
from lookalike.ingest.catalogue import read_catalogue
from lookalike.ingest.reader import LOCAL, REMOTE, read_partitions
from lookalike.ingest.report import IngestReport
from lookalike.models import get_encoder
from lookalike.models.encoders import FakeEncoder

from .conftest import DEMO_CSV


def vectors_of(engine: Engine) -> dict[str, np.ndarray]:
    rows = engine.store.get_by_rowids(engine.index.ids().tolist())
    return {p.id: engine.index.vector(r) for r, p in rows.items()}


def test_mapper_factory_crosses_a_process_boundary():
    factory = MapperFactory(get_encoder("efficientnet-lite0"), ImageLimits(), 128)
    again = pickle.loads(pickle.dumps(factory))
    assert again.encoder.identity == factory.encoder.identity and again.encoder._session is None
    error = pickle.loads(pickle.dumps(ImageError("corrupt", "image x is damaged")))
    assert (error.kind, error.message) == ("corrupt", "image x is damaged")


def test_reader_partitions_local_and_url_rows_apart(tmp_path):
    images = sorted((DEMO_CSV.parent / "images").glob("*.jpg"))[:5]
    rows = [f"l{i},{p}" for i, p in enumerate(images)] + [f"u{i},https://example.com/{i}.jpg" for i in range(3)] + ["bad id!,x.jpg"]
    catalogue = tmp_path / "mixed.csv"
    catalogue.write_text("id,image\n" + "\n".join(rows) + "\n")
    report, seen = IngestReport(0, "t"), set()
    parts = list(read_partitions(read_catalogue(catalogue), lambda ids: {}, report, seen, size=2, remote_size=2))
    assert [(p.lane, len(p.jobs)) for p in parts] == [(LOCAL, 2), (LOCAL, 2), (REMOTE, 2), (LOCAL, 1), (REMOTE, 1)]
    assert report.seen == 9 and len(report.skipped) == 1 and seen == {f"l{i}" for i in range(5)} | {f"u{i}" for i in range(3)}


@pytest.mark.parametrize("distributor", [SerialDistributor(), ThreadDistributor(workers=3), ProcessDistributor(workers=2)],
                         ids=["serial", "threads", "processes"])
def test_distributors_ingest_the_same_store_with_the_fake_encoder(tmp_path, distributor):
    with Engine.open(tmp_path / "reference", encoder="fake") as engine:
        engine.ingest(DEMO_CSV, distributor=SerialDistributor())
        reference = vectors_of(engine)
    with Engine.open(tmp_path / "store", encoder="fake") as engine:
        report = engine.ingest(DEMO_CSV, distributor=distributor)
        assert report.added == 305 and not report.skipped and report.done == 305
        got = vectors_of(engine)
        assert engine.stats()["encoder"] == FakeEncoder().identity
    assert got.keys() == reference.keys()
    assert all(np.array_equal(got[k], reference[k]) for k in got)


@pytest.mark.parametrize("distributor", [ThreadDistributor(workers=3), ProcessDistributor(workers=2)], ids=["threads", "processes"])
def test_reindex_runs_on_the_same_distributors_with_the_same_vectors(tmp_path, distributor):
    with Engine.open(tmp_path / "fake-store", encoder="fake") as engine:
        engine.ingest(DEMO_CSV, distributor=SerialDistributor())
    shutil.copytree(tmp_path / "fake-store", tmp_path / "reference")
    with Engine.open(tmp_path / "reference") as engine:
        engine.reindex("fake-wide", distributor=SerialDistributor())
        reference = vectors_of(engine)
    with Engine.open(tmp_path / "fake-store") as engine:
        outcome = engine.reindex("fake-wide", distributor=distributor, batch_size=16)
        assert outcome["switched"] and outcome["from_images"] == 305 and outcome["products"] == 305
        got = vectors_of(engine)
        assert engine.stats()["dim"] == 48 and engine.stats()["kept_vectors"] == {FakeEncoder().identity: 305}
    assert got.keys() == reference.keys() and all(np.array_equal(got[k], reference[k]) for k in got)


def test_a_process_pool_ingests_the_demo_catalogue_with_the_same_vectors_as_serial(tmp_path, demo_store):
    """The real model in two worker processes, each with its own ONNX session."""
    with Engine.open(demo_store) as engine:
        serial = vectors_of(engine)
    with Engine.open(tmp_path / "store") as engine:
        report = engine.ingest(DEMO_CSV, distributor=ProcessDistributor(workers=2))
        assert report.added == 305 and not report.skipped
        pooled = vectors_of(engine)
    assert pooled.keys() == serial.keys()
    assert max(float(np.abs(pooled[k] - serial[k]).max()) for k in serial) < 1e-5


@dataclass
class _Probe:
    """A partition that records how many batch workers its worker saw beside it."""

    lane: str = LOCAL
    seen: int = -1


class _ProbeWorker:
    def __call__(self, partition: _Probe) -> _Probe:
        from lookalike.common.runtime import BATCH_WORKERS

        partition.seen = BATCH_WORKERS.count
        return partition

    def close(self) -> None:
        pass


def test_each_pool_process_counts_the_whole_pool_as_batch_workers():
    """Two processes on two cores: each one's mapper sees two batch workers and runs its batches
    on one thread, as a thread pool's mappers do, instead of two processes each running wide on
    both cores.  A pool of one runs wide."""
    for workers in (2, 1):
        mapped = [p for p in ProcessDistributor(workers).map(_ProbeWorker, [_Probe() for _ in range(4)]) if p is not None]
        assert [p.seen for p in mapped] == [workers] * 4


def test_a_second_run_writes_nothing_and_a_changed_row_only_that(tmp_path):
    catalogue = tmp_path / "c.csv"
    catalogue.write_text(DEMO_CSV.read_text().replace("images/", str(DEMO_CSV.parent / "images") + "/"))
    with Engine.open(tmp_path / "store", encoder="fake") as engine:
        engine.ingest(catalogue)
        generation = engine.store.generation
        again = engine.ingest(catalogue)
        assert again.unchanged == 305 and engine.store.generation == generation  # idempotent: no write at all
        lines = catalogue.read_text().splitlines()
        lines[1] = lines[1].replace(",Blazer,", ",Jacket,")
        catalogue.write_text("\n".join(lines) + "\n")
        third = engine.ingest(catalogue)
        assert third.metadata_updated == 1 and third.unchanged == 304 and engine.store.generation == generation + 1
