"""Street crops as cross-domain positives in `train embedding`: the loss, the data format, a real run."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs PyTorch (pip install torch==2.13.0)")

from typer.testing import CliRunner  # noqa: E402

from lookalike import Engine  # noqa: E402
from lookalike.interfaces.cli import app  # noqa: E402
from lookalike.training import EmbeddingOptions, StreetOptions, TrainingDataError  # noqa: E402
from lookalike.training.losses import set_proxy_loss  # noqa: E402
from lookalike.training.street import StreetCrop, class_sets, read_label_map, read_street_boxes, split_photos  # noqa: E402

from .conftest import ROOT, SHARED, requires_shared  # noqa: E402

STREET = ROOT / "examples" / "street"
HEADER = "image_file,label,x1,y1,x2,y2\n"


# ---- the loss ---------------------------------------------------------------------------------------
def test_set_proxy_loss_matches_hand_computation():
    # proxies along x and y; an embedding at 60° from x: cos = 0.5 to proxy 0, cos(30°) to proxy 1
    proxies = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[np.cos(np.radians(60)), np.sin(np.radians(60))]], dtype=torch.float32)
    a, b = 32 * 0.5, 32 * np.cos(np.radians(30))
    only_first = set_proxy_loss(x, proxies, torch.tensor([[True, False]]))
    assert only_first.item() == pytest.approx(np.log(np.exp(a) + np.exp(b)) - a, rel=1e-5)
    either = set_proxy_loss(x, proxies, torch.tensor([[True, True]]))
    assert either.item() == pytest.approx(0.0, abs=1e-5)  # every proxy is a positive: nothing to push away
    nothing = set_proxy_loss(x, proxies, torch.tensor([[False, False]]))
    assert nothing.item() == 0.0  # a crop with no mapped class teaches nothing


# ---- the data format --------------------------------------------------------------------------------
def test_label_map_from_yaml_or_mapping(tmp_path):
    path = tmp_path / "labels.yaml"
    path.write_text("column: article_type\nlabels:\n  Shoes: [Heels, Casual Shoes]\n  dress: Dresses\n")
    assert read_label_map(str(path)) == ("article_type", {"shoes": {"heels", "casual shoes"}, "dress": {"dresses"}})
    assert read_label_map({"jeans": ["Jeans"]}) == (None, {"jeans": {"jeans"}})
    assert read_label_map(None) == (None, None)
    for bad, reason in (("- a\n- b\n", "expected a mapping"), ("shoes: [{x: 1}]\n", "must map to a value"), ("a: [b\n", "cannot be read")):
        path.write_text(bad)
        with pytest.raises(TrainingDataError, match=reason):
            read_label_map(str(path))
    with pytest.raises(TrainingDataError, match="cannot be read"):
        read_label_map(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("row, reason", [
    ("../outside.jpg,shoes,1,1,20,20", "outside"),
    ("/etc/passwd,shoes,1,1,20,20", "outside"),
    ("a.jpg,shoes,1,1,x,20", "must be numbers"),
    ("a.jpg,shoes,20,1,10,20", "empty or inverted"),
    ("a.jpg,shoes,1,1,nan,20", "empty or inverted"),
    (",shoes,1,1,20,20", "empty or unreadable"),
])
def test_hostile_or_malformed_boxes_are_refused_naming_the_line(tmp_path, row, reason):
    path = tmp_path / "boxes.csv"
    path.write_text(HEADER + "a.jpg,shoes,1,1,20,20\n" + row + "\n")
    with pytest.raises(TrainingDataError, match=f"line 3: .*{reason}|line 3.*{reason}"):
        read_street_boxes(path)


def test_oversized_box_files_and_label_maps_are_refused(tmp_path, monkeypatch):
    import lookalike.training.street as street

    monkeypatch.setattr(street, "MAX_ROWS", 3)
    path = tmp_path / "boxes.csv"
    path.write_text(HEADER + "a.jpg,shoes,1,1,20,20\n" * 4)
    with pytest.raises(TrainingDataError, match="more than 3 rows"):
        read_street_boxes(path)
    path.write_text(HEADER + "a.jpg,shoes,1,1,20,20\n" * 3)
    assert len(read_street_boxes(path)) == 3
    monkeypatch.setattr(street, "MAX_LABELS", 2)
    with pytest.raises(TrainingDataError, match="more than 2 labels"):
        read_label_map({"a": "A", "b": "B", "c": "C"})
    path.write_bytes(b"image_file,label,x1,y1,x2,y2\n\xff\xfe,shoes,1,1,2,2\n")  # not UTF-8
    with pytest.raises(TrainingDataError, match="cannot be read"):
        read_street_boxes(path)


def test_boxes_need_their_columns(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("image_file,label\na.jpg,shoes\n")
    with pytest.raises(TrainingDataError, match="missing column"):
        read_street_boxes(path)


def test_labels_map_to_sets_of_classes_and_unmapped_ones_are_counted():
    crops = [StreetCrop(Path("a"), "a", (0, 0, 9, 9), label, None) for label in ("shoes", "dress", "belt", "heels")]
    classes = ["Dresses", "Heels", "Casual Shoes"]
    values = [c.lower() for c in classes]
    sets, unmapped = class_sets(crops, {"shoes": {"heels", "casual shoes"}, "dress": {"dresses"}, "belt": {"belts"}}, classes, values)
    assert sets.tolist() == [[False, True, True], [True, False, False], [False, False, False], [False, False, False]]
    assert unmapped == {"belt": 1, "heels": 1}
    same, _ = class_sets(crops, None, classes, values)  # no map: a street label is a catalogue value
    assert same[3].tolist() == [False, True, False]


def test_photos_are_held_out_whole_and_the_split_is_seeded():
    keys = [f"p{i // 3}.jpg" for i in range(300)]  # three boxes per photo
    held = split_photos(keys, 0.2, seed=0)
    per_photo = {k: {bool(h) for kk, h in zip(keys, held) if kk == k} for k in set(keys)}
    assert all(len(v) == 1 for v in per_photo.values())
    assert 0.1 < held.mean() < 0.3
    assert (held == split_photos(list(reversed(keys)), 0.2, seed=0)[::-1]).all()
    assert not (held == split_photos(keys, 0.2, seed=1)).all()


# ---- through the CLI on the demo catalogue ----------------------------------------------------------
def _demo_street(tmp_path: Path) -> tuple[Path, Path]:
    """The two committed outfit photos with their hand boxes (repeated with small shifts), mapped to the demo's categories."""
    folder = tmp_path / "street"
    folder.mkdir()
    for name in ("outfit-0122.jpg", "outfit-0108.jpg"):
        shutil.copy(STREET / name, folder / name)
    boxes = [("outfit-0122.jpg", "blouse", (58.2, 58.6, 144.2, 141.1)), ("outfit-0122.jpg", "jeans", (70.8, 142.6, 143.5, 286.4)),
             ("outfit-0122.jpg", "shoes", (97.3, 279.0, 145.8, 310.6)), ("outfit-0108.jpg", "dress", (67.1, 60.7, 141.6, 206.3)),
             ("outfit-0108.jpg", "shoes", (88.6, 274.3, 137.7, 315.0)), ("outfit-0108.jpg", "sunglasses", (99.0, 35.0, 124.7, 44.9))]
    lines = [f"{name},{label},{x1 + d},{y1 + d},{x2 + d},{y2 + d}" for d in (0, 2, 4) for name, label, (x1, y1, x2, y2) in boxes]
    (folder / "boxes.csv").write_text(HEADER + "\n".join(lines) + "\n")
    labels = tmp_path / "labels.yaml"
    labels.write_text("column: category\nlabels:\n  blouse: [Blouse, Top]\n  jeans: Pants\n  shoes: Shoes\n  dress: Dress\n")
    return folder / "boxes.csv", labels


def test_cli_trains_with_street_boxes_and_reports_them(store_copy, tmp_path):
    boxes, labels = _demo_street(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["--store", str(store_copy), "train", "embedding", "--positives", "category", "--views", "2", "--steps", "30",
                                 "--street-boxes", str(boxes), "--street-labels", str(labels), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    street = info["training_data"]["street"]
    assert street["crops"] == 15 and street["photos"] == 2 and street["unmapped_labels"] == {"sunglasses": 3}
    assert info["parameters"]["street"]["boxes"] == str(boxes)
    with Engine.open(store_copy) as engine:  # the model is saved and its parameters read back
        model_options = EmbeddingOptions(**{**info["parameters"], "keep_out": [], "name": None})
        assert isinstance(model_options.street, StreetOptions) and engine.store.count() == 305


def test_cli_refuses_bad_street_input_clearly(store_copy, tmp_path):
    boxes, labels = _demo_street(tmp_path)
    runner = CliRunner()
    base = ["--store", str(store_copy), "train", "embedding", "--positives", "category", "--steps", "5"]
    result = runner.invoke(app, base + ["--street-labels", str(labels)])
    assert result.exit_code != 0 and "--street-labels needs --street-boxes" in result.output
    hostile = tmp_path / "street" / "hostile.csv"
    hostile.write_text(HEADER + "../../etc/passwd,shoes,1,1,20,20\n")
    result = runner.invoke(app, base + ["--street-boxes", str(hostile)])
    assert result.exit_code != 0 and "line 2" in result.output and "outside" in result.output
    wrong_column = tmp_path / "wrong.yaml"
    wrong_column.write_text("column: price\nlabels: {shoes: Shoes}\n")
    result = runner.invoke(app, base + ["--street-boxes", str(boxes), "--street-labels", str(wrong_column)])
    assert result.exit_code != 0 and "not one of the positives" in result.output
    nothing = tmp_path / "nothing.yaml"
    nothing.write_text("labels: {shoes: Sneakers}\n")
    result = runner.invoke(app, base + ["--street-boxes", str(boxes), "--street-labels", str(nothing)])
    assert result.exit_code != 0 and "map onto the catalogue" in result.output


# ---- a real run on the shared street and catalogue photos --------------------------------------------
STREET_MAP = {"shoes": ["Casual Shoes", "Sports Shoes", "Heels", "Flats", "Sandals"], "heels": ["Heels"], "sneakers": ["Casual Shoes", "Sports Shoes"],
              "jeans": ["Jeans"], "pants": ["Jeans", "Trousers"], "skirt": ["Skirts"], "dress": ["Dresses"], "t-shirt": ["Tshirts"],
              "top": ["Tops", "Tshirts"], "blouse": ["Tops", "Shirts"], "shirt": ["Shirts"], "bag": ["Handbags"], "purse": ["Handbags"]}


@requires_shared
def test_street_positives_lift_street_to_shop_on_held_out_street_photos(tmp_path):
    """Myntra types that CCP labels map to (up to 40 products each) and the street boxes of 200 CCP photos;
    validation is on photos and products the model never trained on."""
    rows = list(csv.DictReader((SHARED / "myntra" / "labels.csv").open(encoding="utf-8")))
    rng = random.Random(0)
    sample = []
    for kind in ("Tshirts", "Shirts", "Tops", "Jeans", "Trousers", "Skirts", "Dresses", "Casual Shoes", "Sports Shoes", "Heels", "Flats", "Sandals", "Handbags"):
        of_kind = [r for r in rows if r["article_type"] == kind]
        sample += rng.sample(of_kind, min(40, len(of_kind)))
    source = tmp_path / "sample.csv"
    with source.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["item_id", "image", "article_type"])
        writer.writeheader()
        writer.writerows({"item_id": r["item_id"], "image": str(SHARED / "myntra" / r["image_file"]), "article_type": r["article_type"]} for r in sample)
    boxes = [r for r in csv.DictReader((SHARED / "ccp" / "boxes.csv").open(encoding="utf-8")) if r["label"] in STREET_MAP]
    photos = sorted({r["image_file"] for r in boxes})[:200]
    street = tmp_path / "street"
    (street / "images").mkdir(parents=True)
    for photo in photos:
        shutil.copy(SHARED / "ccp" / photo, street / photo)
    with (street / "boxes.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image_file", "label", "x1", "y1", "x2", "y2"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(r for r in boxes if r["image_file"] in set(photos))
    options = dict(positives=["article_type"], views=2, holdout=0.3, steps=400, batch_classes=8)
    with Engine.open(tmp_path / "store") as engine:
        engine.ingest(source, id_column="item_id", image_column="image")
        plain = engine.train_embedding(EmbeddingOptions(**options, street=StreetOptions(str(street / "boxes.csv"), STREET_MAP, weight=0.0, holdout=0.3)),
                                       save=False)
        crossed = engine.train_embedding(EmbeddingOptions(**options, street=StreetOptions(str(street / "boxes.csv"), STREET_MAP, holdout=0.3)), save=False)
    summary = crossed.info["training_data"]["street"]
    assert summary["holdout_crops"] > 100 and summary["train_crops"] > 300, summary
    before, after = plain.info["validation"]["fine_tuned"], crossed.info["validation"]["fine_tuned"]
    # street crops of unseen photos find their catalogue type far more often; the catalogue ranking holds
    assert after["street_p_at_10"] > before["street_p_at_10"] + 0.1, (before, after)
    assert after["street_p_at_10"] > crossed.info["validation"]["off_the_shelf"]["street_p_at_10"] + 0.1
    assert after["map"] > before["map"] - 0.03, (before, after)


@requires_shared
def test_shipped_ccp_label_map_names_only_real_catalogue_types():
    """configs/ccp-street-labels.yaml (the README's example) maps every street label onto article
    types that exist in the shared Myntra catalogue, and onto the column it names."""
    column, mapping = read_label_map(str(ROOT / "configs" / "ccp-street-labels.yaml"))
    rows = list(csv.DictReader((SHARED / "myntra" / "labels.csv").open(encoding="utf-8")))
    types = {r[column].strip().lower() for r in rows}
    street_labels = {r["label"] for r in csv.DictReader((SHARED / "ccp" / "boxes.csv").open(encoding="utf-8"))}
    assert column == "article_type" and len(mapping) > 30
    assert not {v for values in mapping.values() for v in values} - types
    assert set(mapping) <= street_labels
