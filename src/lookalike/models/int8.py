"""INT8 encoders: an EfficientNet-Lite graph quantised for integer inference on the CPU.

EfficientNet-Lite was designed for integer inference (ReLU6 activations, no squeeze-excite), so
ONNX Runtime's static quantisation (QDQ, per-channel INT8 weights, UINT8 activations) keeps its
features close to the float ones once the activation ranges are calibrated on representative
photos.  ``models quantize`` calibrates on the store's own photos and makes a model of that store
(``STORE/models/NAME/``: ``model.json`` + ``model.onnx``).

A few operations stay in float (measured on held-out photos, never on the calibration ones): the
stem convolution (its input is normalised pixels), the last 1x1 convolution and the pooling that
make the 1280-d feature — quantised, they drop the mean cosine to the float features from 0.97 to
0.87 and Myntra mAP by 2 points — and the first two blocks' high-resolution convolutions, whose
ranges calibrated on catalogue shots clip the texture of shoppers' phone photos (phone-photo NN
accuracy -1.5 points with them in INT8, -0.25 without).

A new store's default encoder, ``efficientnet-lite0-int8`` (:class:`BuiltinInt8Encoder`), is the
same recipe calibrated on photos packaged with lookalike (``calibration/``: 102 CC0 phone photos
of garments, six per class), built on first use into the model cache as the float export is.  It
needs no photos of the shop, so it can serve from the first ingest; measured on Myntra catalogue
shots and phone photos it never saw, it keeps same-type accuracy and mAP within a point of float
and stays closer to the float vectors (mean cosine 0.995) than a copy calibrated on catalogue
shots (0.976), whose ranges are too narrow for phone photos (README, INT8 encoder).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from ..common.folders import HashVersioned, file_sha256, write_folder
from ..common.progress import Log, Progress, no_log
from ..config import Settings
from .artefacts import FORMAT, INT8_KIND, ModelError, check_name, models_dir, next_name
from .encoders import EfficientNetLiteEncoder, EncoderError
from .encoders.efficientnet import GRAPH_VERSION
from .ranges import CalibrationRanges, cache_supported

KIND = INT8_KIND
BASES = ("efficientnet-lite0", "efficientnet-lite2")  # the float encoders that quantise (ReLU6, no squeeze-excite)
BUILTIN_NAMES = tuple(f"{base}-int8" for base in BASES)  # calibrated on the packaged photos (BuiltinInt8Encoder)
ONNX_FILE = "model.onnx"
FLOAT_NODES = ("/_conv_stem/Conv", "/_blocks.0/_depthwise_conv/Conv", "/_blocks.0/_project_conv/Conv", "/_blocks.1/_expand_conv/Conv",
               "/_blocks.1/_depthwise_conv/Conv", "/_conv_head/Conv", "/ReduceMean")
MIN_PHOTOS, MAX_PHOTOS = 16, 4096
CHECK_PHOTOS = 256  # photos kept out of calibration to measure agreement with the float encoder


@dataclass
class Int8Options:
    """What ``lookalike models quantize`` takes: the float encoder, how many of the store's photos
    calibrate it (a random sample), and the new model's name."""

    base: str = "efficientnet-lite0"
    photos: int = 256
    seed: int = 0
    name: str | None = None

    def check(self) -> None:
        if self.base not in BASES:
            raise ModelError(f"only the EfficientNet-Lite encoders quantise to INT8 ({', '.join(BASES)}), not {self.base!r}")
        if not MIN_PHOTOS <= self.photos <= MAX_PHOTOS:
            raise ModelError(f"calibration photos must be between {MIN_PHOTOS} and {MAX_PHOTOS}, not {self.photos}")
        if self.name is not None:
            check_name(self.name)
            if self.name in BUILTIN_NAMES:
                raise ModelError(f"{self.name!r} is the name of a built-in encoder; choose another --name")


@dataclass
class Int8Model(HashVersioned):
    """A loaded INT8 model folder (its ONNX file checked against model.json)."""

    name: str
    path: Path
    info: dict[str, Any] = field(default_factory=dict)


class Int8Encoder(EfficientNetLiteEncoder):
    """The quantised graph served like the float one (same letterbox, same 1280-d unit vectors);
    the store records ``name@onnx-hash``, so its vectors never mix with the float encoder's."""

    def __init__(self, model: Int8Model, settings: Settings | None = None):
        super().__init__(str(model.info["base_model"]).split("@")[0], settings)
        self.name, self.version = model.name, model.version
        self.model_path = model.path / ONNX_FILE

    def _ensure_model(self) -> Path:
        if not self.model_path.is_file():
            raise EncoderError(f"INT8 model file {self.model_path} is missing; quantise again with 'lookalike models quantize'")
        return self.model_path


CALIBRATION_DIR = Path(__file__).with_name("calibration")
# Bump when the packaged photos or the quantisation recipe change: the built-in graph changes, and
# a store refuses vectors of another version (its identity is name@GRAPH_VERSION.CALIBRATION_VERSION).
CALIBRATION_VERSION = "1"


class BuiltinInt8Encoder(EfficientNetLiteEncoder):
    """``efficientnet-lite0-int8`` (or ``-lite2-int8``): the float encoder quantised on first use with
    the packaged calibration photos and cached in the model cache; a damaged cached file is made again."""

    rebuilds_cache = True

    def __init__(self, base: str, settings: Settings | None = None):
        settings = settings or Settings()
        super().__init__(base, settings)
        self.name, self.version = f"{base}-int8", f"{GRAPH_VERSION}.{CALIBRATION_VERSION}"
        self.model_path = settings.model_cache_dir() / f"{self.name}-v{self.version}.onnx"
        self._settings = settings

    def _ensure_model(self) -> Path:
        if not self.model_path.exists():
            self._build()
        return self.model_path

    def _build(self) -> None:
        """Quantise the float export into a temporary file beside the cache entry, then rename it in
        (5-15 seconds on 2 cores, once per model cache)."""
        base = EfficientNetLiteEncoder(self.base_name, self._settings)
        photos = calibration_photos(base)
        self.model_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.model_path.parent) as tmp:
            staged = Path(tmp) / ONNX_FILE
            try:
                _quantize(base._ensure_model(), staged, photos, lambda count: None)
            except ModelError as exc:
                raise EncoderError(f"cannot build the {self.name} encoder: {exc}") from exc
            staged.replace(self.model_path)  # atomic: a concurrent reader never sees half a model


def calibration_photos(encoder: EfficientNetLiteEncoder) -> np.ndarray:
    """The packaged calibration photos, preprocessed for ``encoder`` (sorted by name: a fixed order)."""
    files = sorted(CALIBRATION_DIR.glob("*.jpg"))
    if len(files) < MIN_PHOTOS:
        raise EncoderError(f"the packaged INT8 calibration photos are missing from {CALIBRATION_DIR} "
                           f"({len(files)} found); reinstall lookalike")
    photos = []
    for file in files:
        with Image.open(file) as image:
            photos.append(image.convert("RGB"))
    return _pixels(encoder, photos)


def _pixels(encoder: EfficientNetLiteEncoder, photos: Sequence[Image.Image]) -> np.ndarray:
    """Photos preprocessed as the float encoder sees them: what calibration and the checks feed the graphs."""
    return np.stack([encoder.preprocess(photo.convert("RGB")) for photo in photos])


def is_int8_folder(path: Path) -> bool:
    try:
        return json.loads((path / "model.json").read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def load_int8(path: Path) -> Int8Model:
    """Read an INT8 model folder; a damaged or edited ONNX file is refused with the reason."""
    try:
        info = json.loads((path / "model.json").read_text())
        actual = file_sha256(path / ONNX_FILE)
    except (OSError, ValueError) as exc:
        raise ModelError(f"INT8 model at {path} cannot be read ({exc}); quantise it again") from exc
    if not isinstance(info, dict) or info.get("kind") != KIND or info.get("format") != FORMAT:
        raise ModelError(f"{path} is not an INT8 model of format {FORMAT}")
    if actual != info.get("weights_sha"):
        raise ModelError(f"INT8 model at {path}: {ONNX_FILE} does not match model.json (damaged or edited); quantise it again")
    if str(info.get("base_model", "")).split("@")[0] not in BASES:
        raise ModelError(f"INT8 model at {path} names an unknown base model {info.get('base_model')!r}")
    return Int8Model(str(info["name"]), path, info)


def _quantize(float_model: Path, target: Path, pixels: np.ndarray, progress: Callable[[int], None]) -> list[str]:
    """Static QDQ quantisation of ``float_model`` into ``target``; returns the nodes kept in float."""
    return quantize_graph(float_model, target, (pixels[i:i + 16] for i in range(0, len(pixels), 16)), progress)


def quantize_graph(float_model: Path, target: Path, batches: Iterable[np.ndarray], progress: Callable[[int], None] = lambda count: None,
                   keep_float: Callable[[str], bool] = lambda name: False, fixed_shape: bool = True, reduce_range: bool = False,
                   ranges: CalibrationRanges | None = None, ranges_out: Path | None = None) -> list[str]:
    """The recipe above for any EfficientNet-Lite graph whose input is ``pixels``: calibrated on
    ``batches`` (which may differ in shape), with :data:`FLOAT_NODES` and every node ``keep_float``
    names left in float; returns the nodes kept in float.  ORT's pre-processing comes first: it
    folds the backbone's padding into its convolutions, which quantised separately would cost a
    float round trip each (a finder's glance: 12.7 ms without it, 9.4 with).  A graph whose input
    size varies (``fixed_shape=False``) skips the symbolic shape inference, which needs fixed sizes.
    ``reduce_range`` keeps the weights to 7 bits, so CPUs without VNNI (AVX2), whose INT8 kernels
    add pairs of products in 16 bits, cannot saturate and compute what a VNNI CPU does.
    ``ranges``: stored calibration ranges, used instead of calibrating when they were measured on
    this very pre-processed graph (see :mod:`.ranges`); ``ranges_out``: where to write the ranges
    the graph was quantised with (nothing is written where ONNX Runtime keeps no calibration cache)."""
    try:
        import onnx
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise ModelError(f"quantising needs the onnx package ({exc}): pip install 'lookalike[export]'") from exc

    class Calibration(CalibrationDataReader):
        """ONNX Runtime's calibration reader over the preprocessed photos, 16 at a time, reporting as it goes."""

        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            progress(len(batch))
            return {"pixels": np.ascontiguousarray(batch)}

    reader = Calibration()
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_model), str(prepared), skip_symbolic_shape=not fixed_shape)
        names = [node.name for node in onnx.load(str(prepared)).graph.node]
        kept = [name for name in names if name in FLOAT_NODES or keep_float(name)]
        digest = file_sha256(prepared)
        cache = Path(tmp) / "calibration.json" if cache_supported() else None
        if cache is not None and ranges is not None and ranges.graph_sha256 == digest:
            ranges.write_ort_cache(cache)  # ONNX Runtime then skips calibrating
        quantize_static(str(prepared), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=kept, reduce_range=reduce_range, **({"calibration_cache_path": str(cache)} if cache else {}))
        if ranges_out is not None and cache is not None and cache.is_file():
            CalibrationRanges.read_ort_cache(cache, digest).save(ranges_out)
    return kept


def _agreement(float_vectors: np.ndarray, int8_vectors: np.ndarray) -> dict[str, float]:
    """How close the INT8 vectors are to the float ones on photos calibration did not see: the
    mean and lowest cosine, and how often both agree on a photo's nearest other photo."""
    cosine = (float_vectors * int8_vectors).sum(axis=1)
    result = {"photos": int(len(cosine)), "mean_cosine": round(float(cosine.mean()), 4), "min_cosine": round(float(cosine.min()), 4)}
    if len(cosine) >= 3:
        nearest = []
        for vectors in (float_vectors, int8_vectors):
            sims = vectors @ vectors.T
            np.fill_diagonal(sims, -np.inf)
            nearest.append(sims.argmax(axis=1))
        result["same_nearest"] = round(float((nearest[0] == nearest[1]).mean()), 4)
    return result


def quantize_encoder(store_dir: Path, photos: Sequence[Image.Image], options: Int8Options, settings: Settings | None = None,
                     progress: Progress | None = None, log: Log = no_log) -> Int8Model:
    """Calibrate an INT8 copy of ``options.base`` on ``photos`` (the shop's own), check it against
    the float encoder on a held-back part of them, and save it as a new model of the store.

    Up to ``CHECK_PHOTOS`` photos (a fifth at most) are held back from calibration for the check."""
    options.check()
    if len(photos) < MIN_PHOTOS:
        raise ModelError(f"calibrating needs at least {MIN_PHOTOS} photos, got {len(photos)}; ingest the catalogue first")
    settings = settings or Settings()
    base = EfficientNetLiteEncoder(options.base, settings)
    float_model = base._ensure_model()  # exported once from the pretrained weights, as for serving
    held = min(CHECK_PHOTOS, len(photos) // 5)
    pixels = _pixels(base, photos)
    calibration, check = pixels[held:], pixels[:held]
    name = options.name or next_name(store_dir, f"{options.base}-int8")
    if (models_dir(store_dir) / name).exists():
        raise ModelError(f"a model named {name!r} already exists in {models_dir(store_dir)}; choose another --name")
    done = 0

    def step(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress("calibrating", done, len(calibration))

    started = time.perf_counter()
    log(f"calibrating {options.base} on {len(calibration)} photos; {held} held back to check it")
    info: dict[str, Any] = {}

    def fill(folder: Path) -> None:
        kept = _quantize(float_model, folder / ONNX_FILE, calibration, step)
        sha = file_sha256(folder / ONNX_FILE)
        encoder = Int8Encoder(Int8Model(name, folder, {"base_model": base.identity, "weights_sha": sha}), settings)
        agreement = _agreement(base.embed(check), encoder.embed(check)) if held else {}
        info.update({"name": name, "kind": KIND, "format": FORMAT, "base_model": base.identity, "weights_sha": sha,
                     "dim": base.dim, "bits": None, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "positives": [],
                     "calibration": {"photos": int(len(calibration)), "seed": options.seed, "method": "minmax, per-channel weights, QDQ",
                                     "float_nodes": kept, "seconds": round(time.perf_counter() - started, 1)},
                     "validation": {"against_float": agreement}})
        (folder / "model.json").write_text(json.dumps(info, indent=2))

    path = write_folder(models_dir(store_dir) / name, fill)
    log(f"saved INT8 encoder {name}: {json.dumps(info['validation']['against_float'])}")
    return Int8Model(name, path, info)


def sample_photos(rowids: Sequence[int], read: Callable[[list[int]], dict[int, bytes]], count: int, seed: int) -> list[Image.Image]:
    """``count`` of the store's photos at random (its thumbnails: always there, even when the
    original files or URLs are not); unreadable ones are skipped."""
    import io

    chosen = np.random.default_rng(seed).permutation(np.asarray(rowids, dtype=np.int64))[:count].tolist()
    photos: list[Image.Image] = []
    for start in range(0, len(chosen), 256):
        for data in read(chosen[start:start + 256]).values():
            try:
                with Image.open(io.BytesIO(data)) as image:
                    photos.append(image.convert("RGB"))
            except (OSError, ValueError):
                continue
    return photos
