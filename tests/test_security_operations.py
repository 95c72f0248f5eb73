"""Operations under stress: a second process writing under a running server, signals, a full
disk, a read-only store, and images built to fool the decoder.  Issue 11: high 7 and the
medium and low items that are not about the HTTP surface."""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from lookalike import Engine
from lookalike.images import ImageError, ImageLimits, PixelBudget, decode
from lookalike.storage import ReadOnlyStoreError, StoreFullError

from .conftest import DEMO_CSV, Server

IMAGES = DEMO_CSV.parent / "images"
PHOTO = IMAGES / "878ff7a3.jpg"


def cli(store, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lookalike", "--store", str(store), *args], capture_output=True, text=True, timeout=180)


def twins_catalogue(tmp_path, count: int):
    """New products whose photos are catalogue photos: each must find its twin first."""
    photos = sorted(IMAGES.glob("*.jpg"))[:count]
    path = tmp_path / "twins.csv"
    path.write_text("id,image,category\n" + "".join(f"x-{p.stem},{p},Twin\n" for p in photos))
    return photos, path


def search_ids(url: str, photo, k: int = 2, headers: dict | None = None) -> list[str]:
    r = httpx.post(url + "/search", files={"image": ("q.jpg", photo.read_bytes(), "image/jpeg")}, params={"k": k}, headers=headers)
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["results"]]


def test_a_running_server_sees_another_process_writing(store_copy, tmp_path):
    env = {"LOOKALIKE_ANN_THRESHOLD": "100"}  # an IVF index with a snapshot, as for a large catalogue
    srv = Server(store_copy, env)
    try:
        photos, catalogue = twins_catalogue(tmp_path, 20)
        ingest = cli(store_copy, "ingest", str(catalogue))
        assert ingest.returncode == 0, ingest.stderr
        assert httpx.get(srv.url + "/health").json()["products"] == 325
        for photo in photos[:8]:
            assert f"x-{photo.stem}" in search_ids(srv.url, photo)
        similar = httpx.get(f"{srv.url}/products/x-{photos[0].stem}/similar", params={"k": 3})
        assert similar.status_code == 200 and similar.json()["results"][0]["id"] == photos[0].stem
        gone = [f"x-{p.stem}" for p in photos[:5]]
        assert cli(store_copy, "delete", *gone).returncode == 0
        for photo in photos[:5]:
            ids = search_ids(srv.url, photo, k=5)
            assert len(ids) == 5 and not set(ids) & set(gone)
        tagged = httpx.post(srv.url + "/search", files={"image": ("q.jpg", PHOTO.read_bytes(), "image/jpeg")},
                            params=[("k", "50"), ("where", "category=Twin")]).json()["results"]
        assert len(tagged) == 15  # filters know the other process's metadata too
    finally:
        srv.stop()
    # After the server's shutdown, its snapshot plus the database still find everything.
    with Engine.open(store_copy, ann_threshold=100) as engine:
        for photo in photos[5:12]:
            assert f"x-{photo.stem}" in [h.id for h in engine.search(photo, k=2)]


def test_a_snapshot_never_claims_writes_it_has_not_seen(store_copy, tmp_path):
    """Another process writes; the server is stopped before it looks: the snapshot it saves is
    tagged with what it had, so a fresh process catches up the rest from the database."""
    srv = Server(store_copy, {"LOOKALIKE_ANN_THRESHOLD": "100"})
    r = httpx.put(srv.url + "/products/mine", headers=srv.auth, files={"image": ("q.jpg", PHOTO.read_bytes(), "image/jpeg")})
    assert r.status_code == 200
    photos, catalogue = twins_catalogue(tmp_path, 12)
    assert cli(store_copy, "ingest", str(catalogue)).returncode == 0
    srv.proc.send_signal(signal.SIGINT)
    srv.proc.wait(30)
    found = json.loads(cli(store_copy, "search", str(photos[7]), "-k", "2", "--json").stdout)
    assert f"x-{photos[7].stem}" in [h["id"] for h in found]


def test_sigterm_closes_the_engine(store_copy, tmp_path):
    srv = Server(store_copy, {"LOOKALIKE_ANN_THRESHOLD": "100"})
    db = sqlite3.connect(store_copy / "catalogue.sqlite")
    db.execute("INSERT INTO runs(source, status, started_at) VALUES ('left-over', 'running', 0)")
    db.commit()
    db.close()
    r = httpx.put(srv.url + "/products/term-1", headers=srv.auth, files={"image": ("q.jpg", PHOTO.read_bytes(), "image/jpeg")})
    assert r.status_code == 200
    srv.proc.send_signal(signal.SIGTERM)
    srv.proc.wait(30)
    db = sqlite3.connect(store_copy / "catalogue.sqlite")
    generation = int(db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
    statuses = [r[0] for r in db.execute("SELECT status FROM runs")]
    db.close()
    assert "running" not in statuses
    snapshot = json.loads(next((store_copy / "index").glob("*.json")).read_text())
    assert snapshot["generation"] == generation  # saved on the way out, covering the last write


def test_disk_full_is_said_and_leaves_the_store_consistent(engine):
    before = len(engine)
    engine.store._db.execute("PRAGMA max_page_count = " + str(engine.store._db.execute("PRAGMA page_count").fetchone()[0]))
    with pytest.raises(StoreFullError, match="disk full"):
        engine.upsert("big-1", image=PHOTO, metadata={"title": "x" * 9000})
    assert len(engine) == before and engine.store.get("big-1") is None
    assert engine.search(PHOTO, k=1)[0].id == "878ff7a3"
    engine.store._db.execute("PRAGMA max_page_count = 1073741823")
    assert engine.upsert("big-1", image=PHOTO).id == "big-1"  # writable again once there is room


def test_a_read_only_store_can_be_searched_not_changed(store_copy, monkeypatch):
    import lookalike.storage.store as store_module

    with Engine.open(store_copy):
        pass  # leave a clean (checkpointed) database, as a read-only mount would hold
    monkeypatch.setattr(store_module, "_is_read_only", lambda directory, path: True)
    with Engine.open(store_copy) as engine:
        assert engine.search(PHOTO, k=1)[0].id == "878ff7a3" and engine.stats()["read_only"]
        with pytest.raises(ReadOnlyStoreError, match="read-only"):
            engine.upsert("new", image=PHOTO)
        with pytest.raises(ReadOnlyStoreError):
            engine.delete("878ff7a3")


def test_cli_says_what_is_wrong_with_the_store_path(tmp_path):
    not_a_store = tmp_path / "file.txt"
    not_a_store.write_text("hello")
    result = cli(not_a_store, "info")
    assert result.returncode == 1 and "is a file, not a store directory" in result.stderr and "Traceback" not in result.stderr


# ---- images built to fool the decoder --------------------------------------------------------

def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_bomb_and_damaged_image_messages_cite_our_limit_and_no_addresses():
    with pytest.raises(ImageError) as info:
        decode(_png_header_only(30_000, 30_000), ImageLimits(max_pixels=40_000_000))
    assert info.value.kind == "too_many_pixels" and "40000000" in info.value.message and "89478485" not in info.value.message
    with pytest.raises(ImageError) as info:
        decode(b"\xff\xd8\xff" + b"\x00" * 64)
    assert "0x" not in info.value.message and " at 0x" not in str(info.value)


def test_a_jpeg_whose_header_lies_about_its_size_is_refused():
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", 6300, 6300)  # height, width
    with pytest.raises(ImageError) as info:
        decode(bytes(data))
    assert info.value.kind == "corrupt" and "truncated" in info.value.message
    # A genuine photo of the same kind still decodes.
    assert decode(PHOTO.read_bytes()).size[0] > 0


@pytest.mark.parametrize("mode,values", [("F", np.linspace(0.0, 1.0, 64 * 64, dtype=np.float32)),
                                         ("I", np.linspace(0, 1000, 64 * 64).astype(np.int32)),
                                         ("F", np.linspace(-5.0, 300.0, 64 * 64, dtype=np.float32))])
def test_float_and_32_bit_tiffs_are_not_black(mode, values):
    buffer = io.BytesIO()
    Image.fromarray(values.reshape(64, 64), mode).save(buffer, "TIFF")
    pixels = np.asarray(decode(buffer.getvalue()))
    assert pixels.mean() > 100 and pixels.max() >= 250 and pixels.min() <= 5


def test_concurrent_decodes_share_a_pixel_budget():
    budget = PixelBudget(100)
    inside, peak = [0], [0]
    lock = threading.Lock()

    def work() -> None:
        with budget.take(60):
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 1 and budget.free == 100
    with budget.take(10_000):  # larger than the whole budget: takes all of it, does not deadlock
        assert budget.free == 0


def _can_bind_mount_read_only(tmp_path) -> bool:
    import shutil as sh

    if sh.which("unshare") is None:
        return False
    (tmp_path / "probe-src").mkdir()
    (tmp_path / "probe-dst").mkdir()
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro {tmp_path / 'probe-src'} {tmp_path / 'probe-dst'} && "
                            f"mount -o remount,ro,bind {tmp_path / 'probe-dst'} && ! touch {tmp_path / 'probe-dst' / 'x'}"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def test_a_store_on_a_real_read_only_mount_with_writes_still_in_its_wal(demo_store, tmp_path):
    """A copy taken while a writer had it open (the last delete only in the write-ahead log),
    mounted read-only: it opens, shows that delete, searches, and refuses writes with a message."""
    if not _can_bind_mount_read_only(tmp_path):
        pytest.skip("needs `unshare -m` and bind mounts (root in a private mount namespace)")
    import shutil as sh

    live = tmp_path / "live"
    sh.copytree(demo_store, live)
    writer = sqlite3.connect(live / "catalogue.sqlite")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("DELETE FROM products WHERE id = '878ff7a3'")
    writer.commit()
    source, mount = tmp_path / "source", tmp_path / "mount"
    mount.mkdir()
    sh.copytree(live, source / "store")  # while the writer is still open: the WAL is not checkpointed
    writer.close()
    assert (source / "store" / "catalogue.sqlite-wal").stat().st_size > 0
    lookalike = f"{sys.executable} -m lookalike --store {mount / 'store'}"
    script = (f"mount --bind -o ro {source} {mount} && mount -o remount,ro,bind {mount} && "
              f"{lookalike} info --json && {lookalike} search {IMAGES / '0b0457d9.jpg'} -k 1 --json && "
              f"! {lookalike} get 878ff7a3 && ! {lookalike} delete 0b0457d9")
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"products": 304' in result.stdout and '"read_only": true' in result.stdout
    assert '"id": "0b0457d9"' in result.stdout
    assert "no product with id '878ff7a3'" in result.stderr and "is read-only; it can be searched but not changed" in result.stderr


def test_large_images_are_shrunk_for_use_and_keep_their_orientation():
    """Decoding for the model (draft_size) box-reduces very large images inside the decode budget,
    after turning them upright by their EXIF orientation."""
    image = Image.new("RGB", (6000, 2000), (200, 30, 30))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    buffer = io.BytesIO()
    image.save(buffer, "PNG", exif=exif.tobytes())
    decoded = decode(buffer.getvalue(), draft_size=224)
    assert decoded.size == (400, 1200) and decoded.getpixel((10, 10)) == (200, 30, 30)
    assert decode(buffer.getvalue()).size == (2000, 6000)  # without draft_size: full size
