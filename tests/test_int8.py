"""The INT8 encoder: calibrated on the store's own photos, checked, served, refused when damaged."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lookalike import Catalog, Engine
from lookalike.models import ModelError, get_encoder, import_model, load_model
from lookalike.models.encoders import EfficientNetLiteEncoder, EncoderError
from lookalike.models.int8 import BuiltinInt8Encoder, Int8Encoder, Int8Options, load_int8, quantize_encoder, sample_photos
from lookalike.models.ranges import CalibrationRanges

from .conftest import DEMO_CSV

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="quantising needs the onnx package: pip install 'lookalike[export]'")
IMAGES = DEMO_CSV.parent / "images"


def run(*args: str, store) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lookalike", "--store", str(store), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def int8_store(demo_store, tmp_path_factory):
    """The demo store with an INT8 encoder calibrated on 60 of its photos (through the CLI)."""
    store = tmp_path_factory.mktemp("int8") / "store"
    shutil.copytree(demo_store, store)
    result = run("models", "quantize", "--photos", "60", "--name", "lite0-int8", "--json", store=store)
    assert result.returncode == 0, result.stderr
    assert "calibrating: 48/48" in result.stderr  # progress on stderr, the description alone on stdout
    return store, json.loads(result.stdout)


def test_quantized_encoder_is_described_and_close_to_float(int8_store):
    store, info = int8_store
    assert info["kind"] == "int8-encoder" and info["base_model"] == "efficientnet-lite0@2" and info["dim"] == 1280
    assert info["calibration"]["photos"] == 48 and "/_conv_head/Conv" in info["calibration"]["float_nodes"]
    check = info["validation"]["against_float"]
    assert check["photos"] == 12 and check["mean_cosine"] > 0.93 and check["min_cosine"] > 0.85  # measured 0.976 / 0.94 on Myntra

    settings = Engine.open(store).settings  # resolve the name the way a store does
    encoder = get_encoder("lite0-int8", settings)
    assert isinstance(encoder, Int8Encoder) and encoder.identity == f"lite0-int8@{info['weights_sha'][:12]}"
    photos = [Image.open(path).convert("RGB") for path in sorted(IMAGES.glob("*.jpg"))[-20:]]
    quantized, exact = encoder.encode(photos), EfficientNetLiteEncoder("efficientnet-lite0", settings).encode(photos)
    assert np.allclose(np.linalg.norm(quantized, axis=1), 1.0, atol=1e-4)
    assert (quantized * exact).sum(axis=1).mean() > 0.93
    # the same photo through INT8 is closer to its own float vector than to any other photo's
    assert ((quantized @ exact.T).argmax(axis=1) == np.arange(len(photos))).mean() >= 0.95


def test_reindex_serves_the_int8_encoder(int8_store, tmp_path):
    source, info = int8_store
    store = tmp_path / "store"
    shutil.copytree(source, store)
    result = run("reindex", "--model", "lite0-int8", "--json", store=store)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == f"lite0-int8@{info['weights_sha'][:12]}"
    photo = IMAGES / "878ff7a3.jpg"
    with Engine.open(store) as engine:
        assert engine.encoder.identity.startswith("lite0-int8@")
        hits = engine.search(photo, k=5)
        assert hits[0].id == "878ff7a3" and hits[0].score > 0.999
        listed = run("models", "list", "--json", store=store)
        assert [m["serving"] for m in json.loads(listed.stdout) if m["name"] == "lite0-int8"] == [True]


def test_bad_options_are_refused_before_anything_is_written(int8_store, tmp_path):
    source, _ = int8_store
    store = tmp_path / "store"
    shutil.copytree(source, store)
    before = sorted(p.name for p in (store / "models").iterdir())
    for args, reason in ((["--photos", "5"], "between 16 and 4096"), (["--photos", "100000"], "between 16 and 4096"),
                         (["--encoder", "fake"], "only the EfficientNet-Lite encoders"), (["--name", "../escape"], "must be 1-80 letters"),
                         (["--name", "lite0-int8"], "already exists")):
        result = run("models", "quantize", *args, store=store)
        assert result.returncode != 0 and reason in result.stderr, (args, result.stderr)
    assert sorted(p.name for p in (store / "models").iterdir()) == before  # no half-written folder left behind
    with pytest.raises(ModelError, match="at least 16 photos"):
        quantize_encoder(store, [Image.new("RGB", (64, 64))] * 3, Int8Options(name="few"))


def test_a_damaged_int8_model_is_refused_and_the_store_still_opens(int8_store, tmp_path):
    source, _ = int8_store
    store = tmp_path / "store"
    shutil.copytree(source, store)
    assert run("reindex", "--model", "lite0-int8", store=store).returncode == 0
    onnx_file = store / "models" / "lite0-int8" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:-100] + b"x" * 100)
    with pytest.raises(EncoderError, match="does not match model.json"):
        get_encoder(str(store / "models" / "lite0-int8"))
    result = run("search", str(IMAGES / "878ff7a3.jpg"), store=store)
    assert result.returncode != 0 and "does not match model.json" in result.stderr
    with Catalog.open(store) as catalog:  # products stay readable: only the model is refused
        assert catalog.get("878ff7a3") is not None
    (store / "models" / "lite0-int8" / "model.json").write_text("{not json")
    with pytest.raises(EncoderError):
        get_encoder(str(store / "models" / "lite0-int8"))


def test_int8_models_import_into_another_store_and_are_no_base_for_training(int8_store, tmp_path):
    source, info = int8_store
    target = import_model(source / "models" / "lite0-int8", tmp_path / "other")
    assert (target / "model.onnx").is_file() and load_int8(target).version == info["weights_sha"][:12]
    assert import_model(source / "models" / "lite0-int8", tmp_path / "other") == target  # the same model again: a no-op
    with pytest.raises(ModelError, match="INT8 encoder"):
        load_model(target)


def test_calibration_sample_skips_unreadable_thumbnails():
    thumbnails = {1: b"not a jpeg", 2: _jpeg(), 3: _jpeg()}
    photos = sample_photos([1, 2, 3], lambda rowids: {r: thumbnails[r] for r in rowids}, 3, seed=0)
    assert len(photos) == 2 and all(p.mode == "RGB" for p in photos)


def _jpeg() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_a_head_trains_on_the_int8_backbone_of_a_store_serving_it(int8_store, tmp_path):
    """A store served by the INT8 encoder fine-tunes on it: its stored vectors are view 0, the
    augmented views run through the INT8 graph, and the model serves over that backbone."""
    pytest.importorskip("torch", reason="training needs PyTorch (pip install torch==2.13.0)")
    from lookalike.models.encoders import FineTunedEncoder
    from lookalike.training import EmbeddingOptions

    source, info = int8_store
    store = tmp_path / "store"
    shutil.copytree(source, store)
    assert run("reindex", "--model", "lite0-int8", store=store).returncode == 0
    with Engine.open(store) as engine:
        model = engine.train_embedding(EmbeddingOptions(positives=["category"], views=2, holdout=0.3, steps=30, dim=32, hidden=128, batch_classes=8))
        assert model.info["backbones"] == [f"lite0-int8@{info['weights_sha'][:12]}"]
        encoder = get_encoder(model.name, engine.settings)
        assert isinstance(encoder, FineTunedEncoder) and isinstance(encoder.backbones[0], Int8Encoder)
        vector = encoder.encode([Image.open(IMAGES / "878ff7a3.jpg").convert("RGB")])
        assert vector.shape == (1, 32) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
        # --unfreeze-head on this store starts from the float network the INT8 model was quantised from
        from lookalike.training.embedding import TrainingDataError, _unfrozen_start

        (weights, bias), maps = _unfrozen_start(engine.view(), ["lite0-int8"])
        assert maps == ["efficientnet-lite0-maps"] and weights.shape == (320, 1280) and bias.shape == (1280,)
        with pytest.raises(TrainingDataError, match="one EfficientNet-Lite backbone"):
            _unfrozen_start(engine.view(), [model.name])  # a fine-tuned head has no last convolution to unfreeze


def test_a_new_store_serves_the_builtin_int8_encoder(demo_store):
    """The default for a new store: Lite0 quantised with the packaged calibration photos."""
    with Catalog.open(demo_store) as catalog:
        assert catalog.store.get_meta("encoder") == "efficientnet-lite0-int8@2.1"
    with Engine.open(demo_store) as engine:
        assert isinstance(engine.encoder, BuiltinInt8Encoder)
        hit = engine.search(IMAGES / "878ff7a3.jpg", k=1)[0]
        assert hit.id == "878ff7a3" and hit.score > 0.999


def test_builtin_int8_is_built_once_deterministically_and_healed_when_damaged(tmp_path):
    """Built on first use into the model cache; a damaged cache entry is made again, byte for byte."""
    import hashlib

    from lookalike.config import Settings

    settings = Settings(model_cache=str(tmp_path / "cache"))
    float_encoder = EfficientNetLiteEncoder("efficientnet-lite0", Settings())
    (tmp_path / "cache").mkdir()
    shutil.copy2(float_encoder._ensure_model(), tmp_path / "cache" / float_encoder.model_path.name)  # skip the torch export
    encoder = get_encoder("efficientnet-lite0-int8", settings)
    assert isinstance(encoder, BuiltinInt8Encoder) and encoder.identity == "efficientnet-lite0-int8@2.1"
    assert not encoder.model_path.exists()  # nothing is built until a photo is embedded
    photos = [Image.open(path).convert("RGB") for path in sorted(IMAGES.glob("*.jpg"))[-24:]]
    quantized, exact = encoder.encode(photos), float_encoder.encode(photos)
    cosine = (quantized * exact).sum(axis=1)
    assert cosine.mean() > 0.98 and cosine.min() > 0.95  # 0.995 / 0.983 on 2,000 Myntra photos
    assert ((quantized @ exact.T).argmax(axis=1) == np.arange(len(photos))).all()
    built = hashlib.sha256(encoder.model_path.read_bytes()).hexdigest()

    encoder.model_path.write_bytes(b"not an onnx graph")  # a damaged cache entry
    healed = get_encoder("efficientnet-lite0-int8", settings)
    assert np.allclose(healed.encode(photos), quantized, atol=1e-6)
    assert hashlib.sha256(healed.model_path.read_bytes()).hexdigest() == built
    assert {p.name for p in (tmp_path / "cache").iterdir()} == {float_encoder.model_path.name, encoder.model_path.name}  # no staging left


def test_builtin_int8_without_its_calibration_photos_says_so(tmp_path, monkeypatch):
    from lookalike.config import Settings
    from lookalike.models import int8

    monkeypatch.setattr(int8, "CALIBRATION_DIR", tmp_path / "missing")
    encoder = get_encoder("efficientnet-lite0-int8", Settings(model_cache=str(tmp_path / "cache")))
    with pytest.raises(EncoderError, match="calibration photos are missing.*reinstall"):
        encoder.encode([Image.new("RGB", (64, 64))])
    assert not encoder.model_path.exists()


def test_a_store_model_may_not_take_a_builtin_name(int8_store, tmp_path):
    source, _ = int8_store
    store = tmp_path / "store"
    shutil.copytree(source, store)
    result = run("models", "quantize", "--name", "efficientnet-lite0-int8", store=store)
    assert result.returncode != 0 and "built-in encoder" in result.stderr


def _tiny_pixels_graph(path):
    """A small real ONNX graph with the encoders' input: uint8 pixels (n, h, w, 3) -> two convolutions."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)
               for name, shape in (("w1", (8, 3, 3, 3)), ("w2", (4, 8, 1, 1)))]
    nodes = [helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["out"], name="conv2")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("pixels", TensorProto.UINT8, [None, 16, 16, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 4, 16, 16])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_stored_calibration_ranges_rebuild_the_same_int8_graph_on_other_photos(tmp_path):
    """Calibration's ranges differ in their last bits from CPU to CPU; a graph quantised from stored
    ranges is byte for byte the graph they were measured on, and ranges of another graph are not used."""
    from lookalike.models.int8 import quantize_graph
    from lookalike.models.ranges import cache_supported

    if not cache_supported():
        pytest.skip("this onnxruntime keeps no calibration cache (1.27 and later do)")
    model = _tiny_pixels_graph(tmp_path / "float.onnx")

    def photos(seed):
        return [np.random.default_rng(seed).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8) for _ in range(3)]

    quantize_graph(model, tmp_path / "a.onnx", photos(0), ranges_out=tmp_path / "a.json")
    ranges = CalibrationRanges.load(tmp_path / "a.json")
    assert {"x", "c1", "out"} <= set(ranges.ranges) and all(low <= high for low, high in ranges.ranges.values())
    quantize_graph(model, tmp_path / "b.onnx", photos(1), ranges=ranges, ranges_out=tmp_path / "b.json")
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()
    assert CalibrationRanges.load(tmp_path / "b.json") == ranges
    quantize_graph(model, tmp_path / "c.onnx", photos(1), ranges_out=tmp_path / "c.json")  # calibrated on those other photos
    assert (tmp_path / "c.onnx").read_bytes() != (tmp_path / "a.onnx").read_bytes()
    foreign = CalibrationRanges("0" * 64, ranges.ranges)  # measured on another graph: calibrated here instead
    quantize_graph(model, tmp_path / "d.onnx", photos(1), ranges=foreign)
    assert (tmp_path / "d.onnx").read_bytes() == (tmp_path / "c.onnx").read_bytes()


@pytest.mark.parametrize("text, reason", [
    ("{", "cannot be read"),
    ('{"format": 2, "method": "MinMax", "graph_sha256": "' + "0" * 64 + '", "ranges": {"x": [0, 1]}}', "not a format-1"),
    ('{"format": 1, "method": "Entropy", "graph_sha256": "' + "0" * 64 + '", "ranges": {"x": [0, 1]}}', "not a format-1"),
    ('{"format": 1, "method": "MinMax", "graph_sha256": "abc", "ranges": {"x": [0, 1]}}', "no graph digest"),
    ('{"format": 1, "method": "MinMax", "graph_sha256": "' + "0" * 64 + '", "ranges": {}}', "no graph digest"),
    ('{"format": 1, "method": "MinMax", "graph_sha256": "' + "0" * 64 + '", "ranges": {"x": [0, NaN]}}', "has the range"),
    ('{"format": 1, "method": "MinMax", "graph_sha256": "' + "0" * 64 + '", "ranges": {"x": [3, -3]}}', "has the range"),
    ('{"format": 1, "method": "MinMax", "graph_sha256": "' + "0" * 64 + '", "ranges": {"x": [0, 1e300]}}', "has the range"),
    ('{"format": 1, "method": "MinMax", "graph_sha256": "' + "0" * 64 + '", "ranges": {"x": [0, "1"]}}', "no \\(lowest, highest\\) pair"),
    ('{"format": 1, "method": "MinMax", "graph_sha256": "' + "0" * 64 + '", "ranges": {"x": [true, 1]}}', "no \\(lowest, highest\\) pair"),
    ("[" + "0," * 1_100_000 + "0]", "more than"),
])
def test_damaged_or_hostile_calibration_ranges_are_refused_with_the_reason(tmp_path, text, reason):

    (tmp_path / "ranges.json").write_text(text)
    with pytest.raises(ModelError, match=reason):
        CalibrationRanges.load(tmp_path / "ranges.json")


def test_a_finder_with_damaged_ranges_calibrates_instead_and_says_so(tmp_path, caplog):
    """The ranges file is an optional part of a finder: damaged, it is not used (a warning names it)
    and the finder is quantised from its own calibration, as one without ranges is."""
    from lookalike.config import Settings
    from lookalike.detection import load_detector, resolve_detector
    from lookalike.detection.graph import FinderGraph

    artefact = load_detector(resolve_detector("default", None))
    (tmp_path / "int8-ranges-256-448.json").write_text('{"format": 1, "ranges": {"x": [0, Infinity]}}')
    graph = FinderGraph("efficientnet-lite0", artefact.head, Settings(model_cache=str(tmp_path)), (256, 448), ranges=tmp_path / "int8-ranges-256-448.json")
    with caplog.at_level("WARNING", logger="lookalike.detection"):
        assert graph._read_stored_ranges() is None
    assert "int8-ranges-256-448.json" in caplog.text and "calibrating the garment finder here instead" in caplog.text
    packaged = FinderGraph("efficientnet-lite0", artefact.head, Settings(model_cache=str(tmp_path)), (256, 448),
                           ranges=artefact.path / "int8-ranges-256-448.json")
    assert packaged._read_stored_ranges() == CalibrationRanges.load(artefact.path / "int8-ranges-256-448.json")
