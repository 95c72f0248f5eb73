"""The command line as users run it: a real subprocess, real exit codes, --json for scripts."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from .conftest import DEMO_CSV, ROOT

PHOTO = ROOT / "examples" / "demo" / "images" / "878ff7a3.jpg"
COMMANDS = ["ingest", "search", "similar", "get", "upsert", "delete", "info", "serve", "version", "tag", "tag train", "tag predict",
            "tag image", "tag review", "tag info", "train", "train embedding", "train quantizer", "train list", "models", "models quantize", "models import", "reindex", "eval", "export",
            "export similar"]


def run(*args: str, store=None) -> subprocess.CompletedProcess:
    prefix = ["--store", str(store)] if store else []
    return subprocess.run([sys.executable, "-m", "lookalike", *prefix, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_everywhere(command):
    result = run(*(command.split() if command else []), "--help")
    assert result.returncode == 0 and "Usage" in result.stdout


def test_ingest_search_similar_update_delete(tmp_path):
    store = tmp_path / "store"
    result = run("ingest", str(DEMO_CSV), "--json", store=store)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["added"] == 305
    # stdout is the JSON alone; progress still reaches stderr as plain lines (not a terminal here)
    assert "ingest: 305/305 (100 %)" in result.stderr and "rows/s" in result.stderr

    result = run("search", str(PHOTO), "-k", "5", "--where", "category=Blazer", "--json", store=store)
    hits = json.loads(result.stdout)
    assert hits[0]["id"] == "878ff7a3" and {h["metadata"]["category"] for h in hits} == {"Blazer"}

    result = run("similar", "878ff7a3", "-k", "3", "--json", store=store)
    assert len(json.loads(result.stdout)) == 3

    result = run("upsert", "new-1", "--image", str(PHOTO), "--meta", "category=Test", "--meta", "price=12", store=store)
    assert result.returncode == 0, result.stderr
    result = run("search", str(PHOTO), "-k", "1", "-w", "price<20", "--json", store=store)
    assert json.loads(result.stdout)[0]["id"] == "new-1"

    result = run("delete", "new-1", store=store)
    assert result.returncode == 0 and "deleted 1" in result.stdout
    result = run("get", "new-1", store=store)
    assert result.returncode == 1 and "no product with id 'new-1'" in result.stderr

    info = json.loads(run("info", "--json", store=store).stdout)
    assert info["products"] == 305 and info["encoder"].startswith("efficientnet-lite0-int8@")


def test_errors_are_one_clear_line(tmp_path, demo_store):
    result = run("search", str(tmp_path / "missing.jpg"), store=demo_store)
    assert result.returncode == 1 and "file not found" in result.stderr and "Traceback" not in result.stderr
    result = run("search", str(PHOTO), "-w", "price<cheap", store=demo_store)
    assert result.returncode == 1 and "needs a number" in result.stderr
    result = run("ingest", str(tmp_path / "nope.csv"), store=tmp_path / "s")
    assert result.returncode == 1 and "catalogue not found" in result.stderr
    result = run("search", str(PHOTO), "-k", "0", store=demo_store)
    assert result.returncode == 2  # usage error from the option's range


def test_settings_from_environment_and_file(tmp_path, demo_store):
    env_result = subprocess.run([sys.executable, "-m", "lookalike", "info", "--json"], capture_output=True, text=True,
                                env={**__import__("os").environ, "LOOKALIKE_STORE": str(demo_store)})
    assert json.loads(env_result.stdout)["products"] == 305
    config = tmp_path / "lookalike.toml"
    config.write_text(f'store = "{demo_store}"\n')
    result = run("--config", str(config), "info", "--json")
    assert json.loads(result.stdout)["products"] == 305
    config.write_text('stroe = "x"\n')
    result = run("--config", str(config), "info")
    assert result.returncode == 1 and "unknown setting(s) stroe" in result.stderr


def test_tag_train_review_info_and_image(store_copy, tmp_path):
    result = run("tag", "info", store=store_copy)
    assert result.returncode == 1 and "no trained taggers" in result.stderr
    result = run("tag", "train", "--column", "nope", store=store_copy)
    assert result.returncode == 1 and "no column 'nope'" in result.stderr and "category" in result.stderr
    result = run("tag", "train", "--column", "category", "--image-model", "none", "--folds", "2", "--json", store=store_copy)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["name"] == "taggers-v1" and body["tagged"] == 305 and body["columns"] == ["category"]
    assert body["report"]["columns"]["category"]["all_evidence"]["accuracy"] > 0.4
    csv_path = tmp_path / "review.csv"
    result = run("tag", "review", "--csv", str(csv_path), store=store_copy)
    assert result.returncode == 0 and "flagged for review" in result.stdout
    assert csv_path.read_text().startswith("id,column,current,predicted,confidence")
    result = run("tag", "image", str(PHOTO), "--text", "striped cotton blazer", "--json", store=store_copy)
    assert result.returncode == 0, result.stderr
    tags = json.loads(result.stdout)
    assert tags["category"]["source"] == "image" and tags["pattern"]["value"] == "striped"
    result = run("get", "878ff7a3", "--json", store=store_copy)
    assert json.loads(result.stdout)["tags"]["category"]["value"]
    result = run("tag", "predict", "--threshold", "0.999", store=store_copy)  # most predictions unsure: the user is told how many
    assert result.returncode == 0 and "tagged 305 products" in result.stdout
    unsure = re.search(r"below the threshold .*: category (\d+) of 305", result.stdout)
    assert unsure and 0 < int(unsure.group(1)) <= 305
    shown = json.loads(run("get", "878ff7a3", "--json", store=store_copy).stdout)["tags"].get("category")
    assert shown is None or shown["confidence"] >= 0.999  # an unsure prediction is not shown as a tag


def test_progress_off_a_terminal_is_a_few_plain_lines():
    """A script or log gets a stage's first line, one every LINE_EVERY seconds, and its last:
    never silence for minutes, never a line per item."""
    import io

    from rich.console import Console

    from lookalike.interfaces.cli.common import LineProgress

    sink = io.StringIO()
    with LineProgress(Console(file=sink, width=200), every=3600, unit="photos") as progress:
        task = progress.add_task("features", total=1000)
        for done in range(1, 1001):
            progress.update(task, completed=done)
        other = progress.add_task("fit")
        progress.update(other, completed=7)
        progress.update(other, completed=9)  # unfinished, no total: said once more on exit
    lines = sink.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["features: 1/1000 (0 %)", "features: 1000/1000 (100 %)", "fit: 7", "fit: 9"]
    # no rate or time left guessed from a stage's first split second; the last line has the rate
    assert "photos/s" in lines[1] and "/s" not in lines[0] and "left" not in lines[1]
