"""Similar-items export: rules, formats, incremental updates checked against full recomputes,
a run killed mid-way resumed, and bad arguments refused with the reason."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from lookalike.export import ExportError, SimilarExport
from lookalike.export import similar as similar_module
from lookalike.search import FilterError

from .conftest import DEMO_CSV
from .test_cli import run

IMAGES = DEMO_CSV.parent / "images"


def lists(path) -> dict[str, list[tuple[str, float]]]:
    table = pq.read_table(path) if path.suffix == ".parquet" else pcsv.read_csv(path)
    out: dict[str, list[tuple[str, float]]] = {}
    for row in table.to_pylist():
        out.setdefault(row["product_id"], []).append((row["similar_id"], row["score"]))
    return out


def same_lists(a: dict, b: dict) -> bool:
    """Equal ids in equal order, scores equal to within the files' precision."""
    return a.keys() == b.keys() and all([i for i, _ in a[p]] == [i for i, _ in b[p]] and
                                        all(abs(x - y) < 1e-4 for (_, x), (_, y) in zip(a[p], b[p])) for p in a)


def test_rules_hold_for_every_list(engine, tmp_path):
    engine.upsert("twin-of-878ff7a3", IMAGES / "878ff7a3.jpg", {"category": "Blazer", "kids": "false"})  # a duplicate listing
    report = engine.exports.similar(tmp_path / "similar.parquet", k=6, same="kids", cap="category=2")
    assert report.mode == "full" and report.products == 306 and report.rows == 306 * 6 and not report.short_lists
    found = lists(tmp_path / "similar.parquet")
    products = {i: engine.get(i).metadata for i in found}
    for product, items in found.items():
        ids = [i for i, _ in items]
        assert product not in ids and len(set(ids)) == 6
        assert all(products[i]["kids"] == products[product]["kids"] for i in ids)
        categories = [products[i]["category"] for i in ids]
        assert max(categories.count(c) for c in categories) <= 2
        assert [s for _, s in items] == sorted((s for _, s in items), reverse=True)
    assert "twin-of-878ff7a3" not in [i for i, _ in found["878ff7a3"]] and "878ff7a3" not in [i for i, _ in found["twin-of-878ff7a3"]]
    online = [h.id for h in engine.similar("9733514d", k=6)]
    plain = engine.exports.similar(tmp_path / "plain.csv", k=6, exclude_duplicates=False)
    assert plain.rows == 306 * 6 and [i for i, _ in lists(tmp_path / "plain.csv")["9733514d"]] == online  # no rules: the online answer


def test_formats_hold_the_same_lists(engine, tmp_path):
    engine.exports.similar(tmp_path / "s.parquet", k=3)
    engine.exports.similar(tmp_path / "s.csv", k=3)
    engine.exports.similar(tmp_path / "s.jsonl", k=3)
    from_jsonl = {}
    for line in (tmp_path / "s.jsonl").read_text().splitlines():
        entry = json.loads(line)
        from_jsonl[entry["id"]] = [(s["id"], s["score"]) for s in entry["similar"]]
    parquet = lists(tmp_path / "s.parquet")
    assert same_lists(parquet, lists(tmp_path / "s.csv")) and same_lists(parquet, from_jsonl) and len(from_jsonl) == 305


def test_an_incremental_export_equals_a_full_recompute(engine, tmp_path):
    target = tmp_path / "similar.parquet"
    first = engine.exports.similar(target, k=5, where="kids=false")
    assert first.mode == "full" and first.recomputed == 305
    again = engine.exports.similar(target, k=5, where="kids=false")
    assert again.mode == "incremental" and again.recomputed == 0
    # a new product (a mirrored photo: close to its original), a deleted one, and one that leaves the allowed set
    from PIL import Image, ImageOps

    ImageOps.mirror(Image.open(IMAGES / "9733514d.jpg")).save(tmp_path / "mirrored.jpg")
    engine.upsert("new-mirrored", tmp_path / "mirrored.jpg", {"category": "Blazer", "kids": "false"})
    old = lists(target)
    gone = old["878ff7a3"][0][0]
    engine.delete_many([gone])
    moved = old["18741138"][0][0]
    engine.upsert(moved, metadata={**engine.get(moved).metadata, "kids": "true"})
    update = engine.exports.similar(target, k=5, where="kids=false")
    full = engine.exports.similar(tmp_path / "full.parquet", k=5, where="kids=false", incremental=False)
    assert update.mode == "incremental" and 0 < update.recomputed < 100 and update.products == full.products == 305
    assert same_lists(lists(target), lists(tmp_path / "full.parquet"))
    new = lists(target)
    assert "new-mirrored" in [i for i, _ in new["9733514d"]] and all(gone not in [i for i, _ in v] for v in new.values())
    assert all(moved not in [i for i, _ in v] for v in new.values())  # no longer allowed: kids=true


KILLED_RUN = """
import os, sys
from lookalike import Engine
from lookalike.export import SimilarRules, similar
similar.CHUNK = 16
with Engine.open(sys.argv[1]) as engine:
    def progress(stage, done, total):
        if done >= 96:
            os._exit(7)  # killed mid-run, after a few chunks were saved
    engine.exports.run(sys.argv[2], SimilarRules.parse(k=6), progress=progress)
"""


def test_a_killed_export_resumes_and_the_last_good_file_stays_readable(engine, store_copy, tmp_path, monkeypatch):
    target = tmp_path / "similar.parquet"
    engine.exports.similar(target, k=5)
    before = lists(target)
    engine.close()
    script = tmp_path / "killed.py"
    script.write_text(KILLED_RUN)
    killed = subprocess.run([sys.executable, str(script), str(store_copy), str(target)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == 7, killed.stderr[-2000:]
    assert lists(target) == before  # the k=5 table, untouched and readable
    parts = list((tmp_path / ".similar.parquet.lookalike" / "parts").glob("part-*.npz"))
    assert 3 <= len(parts) < 305 // 16 + 1
    from lookalike import Engine

    monkeypatch.setattr(similar_module, "CHUNK", 16)
    with Engine.open(store_copy) as again:
        resumed = again.exports.similar(target, k=6)
        again.exports.similar(tmp_path / "fresh.parquet", k=6, incremental=False)
    assert resumed.mode == "resumed" and "resumed" in resumed.notes[0] and resumed.products == 305
    assert same_lists(lists(target), lists(tmp_path / "fresh.parquet")) and all(len(v) == 6 for v in lists(target).values())
    assert not (tmp_path / ".similar.parquet.lookalike" / "parts").exists()


def test_a_damaged_work_folder_means_a_full_export_not_a_failure(engine, tmp_path):
    target = tmp_path / "similar.csv"
    engine.exports.similar(target, k=4)
    work = tmp_path / ".similar.csv.lookalike"
    (work / "lists.npz").write_bytes(b"not numpy at all")
    (work / "run.json").write_text("{broken")
    again = engine.exports.similar(target, k=4)
    assert again.mode == "full" and again.recomputed == 305
    (work / "state.json").write_text(json.dumps({"version": 1, "rules": "x", "generation": "NaN"}))
    assert engine.exports.similar(target, k=4).mode == "full"
    state = json.loads((work / "state.json").read_text())
    (work / "state.json").write_text(json.dumps({**state, "generation": "NaN"}))  # its own rules, but no usable generation
    assert engine.exports.similar(target, k=4).mode == "full"


@pytest.mark.parametrize("arguments, message", [
    ({"k": 0}, "k must be an integer from 1 to 100"), ({"k": 101}, "k must be"), ({"k": True}, "k must be"),
    ({"cap": "brand"}, "cap must be column=N"), ({"cap": "category=0"}, "cap must be"), ({"cap": "category=99", "k": 5}, "cap must be"),
    ({"same": "gender"}, "'gender' is not a column of this catalogue; columns: category"),
    ({"cap": "brand=2"}, "'brand' is not a column"), ({"same": ["kids"] * 21}, "at most 20"), ({"where": "x" * 600}, "at most 20"),
])
def test_bad_arguments_are_refused_with_the_reason(engine, tmp_path, arguments, message):
    with pytest.raises(ExportError, match=message):
        engine.exports.similar(tmp_path / "s.parquet", **arguments)
    assert not (tmp_path / "s.parquet").exists()


def test_bad_filters_and_outputs_are_refused(engine, tmp_path):
    with pytest.raises(FilterError):
        engine.exports.similar(tmp_path / "s.parquet", where="price>>3")
    with pytest.raises(ExportError, match="must end in .parquet, .csv, .jsonl"):
        engine.exports.similar(tmp_path / "s.txt")
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(ExportError, match="is a folder"):
        engine.exports.similar(tmp_path / "folder.csv")
    assert isinstance(engine.exports, SimilarExport)


def test_cli_export_similar(store_copy, tmp_path):
    result = run("export", "similar", "--out", str(tmp_path / "s.csv"), "-k", "3", "--same", "kids", "--cap", "category=2", "--json", store=store_copy)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["mode"] == "full" and report["rows"] == 305 * 3
    again = run("export", "similar", "--out", str(tmp_path / "s.csv"), "-k", "3", "--same", "kids", "--cap", "category=2", store=store_copy)
    assert again.returncode == 0 and "incremental: 305 products" in again.stdout and "0 lists computed" in again.stdout
    bad = run("export", "similar", "--out", str(tmp_path / "s.csv"), "--cap", "brand=2", store=store_copy)
    assert bad.returncode == 1 and "'brand' is not a column" in bad.stderr


def test_with_an_ann_index_the_batched_lists_agree_with_similar(store_copy, tmp_path):
    """Above ann_threshold the export asks the IVF index for whole batches at once; its lists
    match the online ``similar`` call (one query at a time)."""
    from lookalike import Engine

    with Engine.open(store_copy, ann_threshold=100, index="auto") as engine:
        engine.searcher.serving.maintain(save=False)
        assert "IVF" in engine.index.describe()
        engine.exports.similar(tmp_path / "s.parquet", k=8, exclude_duplicates=False)
        found = lists(tmp_path / "s.parquet")
        sample = sorted(found)[::15]
        overlap = [len({i for i, _ in found[p]} & {h.id for h in engine.similar(p, k=8)}) / 8 for p in sample]
    assert len(found) == 305 and sum(overlap) / len(overlap) >= 0.95


def test_http_export_job_download_and_hostile_names(server, store_copy):

    import httpx

    body = {"name": "similar.csv", "k": 4, "same": ["kids"], "cap": "category=2"}
    assert httpx.post(server.url + "/exports/similar", json=body).status_code in (401, 403)  # writes need a key
    started = httpx.post(server.url + "/exports/similar", json=body, headers=server.auth)
    assert started.status_code == 202, started.text
    assert started.json()["download_url"] == "/exports/similar.csv"
    job = server.finished_job("/export/status")
    assert job["error"] is None and job["outcome"]["mode"] == "full" and job["outcome"]["rows"] == 305 * 4 and job["outcome"]["path"] is None
    assert job["done"] == job["total"] == 305
    assert httpx.get(server.url + "/exports/similar.csv").status_code in (401, 403)  # downloads are for the operator
    download = httpx.get(server.url + "/exports/similar.csv", headers=server.auth)
    assert download.status_code == 200 and download.text.startswith('"product_id","rank","similar_id","score"')
    assert len(download.text.strip().splitlines()) == 305 * 4 + 1
    for name in ["../similar.csv", "a/b.csv", ".hidden.csv", "x.txt", "x" * 65 + ".csv", "similar.csv\n", "con sole.csv"]:
        refused = httpx.post(server.url + "/exports/similar", json={**body, "name": name}, headers=server.auth)
        assert refused.status_code == 422, (name, refused.text)
    for bad in [{"k": 0}, {"k": 101}, {"cap": "brand=2"}, {"same": ["nope"]}, {"where": ["price>>1"]}, {"where": ["x"] * 21}, {"cap": "category"}]:
        refused = httpx.post(server.url + "/exports/similar", json={**body, **bad}, headers=server.auth)
        assert refused.status_code == 422, (bad, refused.text)
    assert httpx.get(server.url + "/exports/..%2Fmeta.json", headers=server.auth).status_code in (404, 422)
    assert httpx.get(server.url + "/exports/missing.csv", headers=server.auth).status_code == 404
    assert not list(store_copy.parent.glob("*.csv"))  # nothing written outside the store's exports folder
    schema = httpx.get(server.url + "/openapi.json").json()
    assert "/exports/similar" in schema["paths"] and "/exports/{name}" in schema["paths"]
