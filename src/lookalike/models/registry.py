"""Models by name, each of a known kind.

Kinds: ``image-embedder`` (an :class:`~lookalike.models.encoders.Encoder`: images to unit
vectors a store can serve), ``feature-extractor`` (backbone feature maps a trained head reads;
never served), and trained models in the versioned artefact store (:mod:`.artefacts`), which
are image embedders.  Later kinds (text embedders, garment detectors) register the same way.

Trained models are portable: a name resolves in the store's ``models/`` folder, a folder path
is accepted where the caller allows paths (local CLI, not remote requests), and
:func:`import_model` copies a model folder into a store so it resolves there by name.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from ..config import Settings
from .artefacts import ModelError, TrainedModel, check_name, load_model, models_dir, resolve_model_path
from .encoders import BlockMapsEncoder, EfficientNetLiteEncoder, Encoder, EncoderError, FineTunedEncoder
from .int8 import ONNX_FILE, BuiltinInt8Encoder, Int8Encoder, Int8Model, is_int8_folder, load_int8

IMAGE_EMBEDDER = "image-embedder"
FEATURE_EXTRACTOR = "feature-extractor"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str
    factory: Callable[[Settings], Encoder]


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, kind: str, factory: Callable[[Settings], Encoder]) -> None:
    """Make a model available by name (to settings, the CLI and the store)."""
    _MODELS[name] = ModelEntry(name, kind, factory)


def register_encoder(name: str, factory: Callable[[Settings], Encoder]) -> None:
    """Register an image embedder (a CLIP-family model for users who have its weights, a test encoder)."""
    register_model(name, IMAGE_EMBEDDER, factory)


for _backbone in ("efficientnet-lite0", "efficientnet-lite2"):
    register_encoder(_backbone, partial(EfficientNetLiteEncoder, _backbone))
    register_encoder(f"{_backbone}-int8", partial(BuiltinInt8Encoder, _backbone))  # quantised on first use (packaged calibration)
    # last-block feature maps, for training an unfrozen head (not for a store)
    register_model(f"{_backbone}-maps", FEATURE_EXTRACTOR, partial(BlockMapsEncoder, _backbone))


def available_encoders(kind: str | None = IMAGE_EMBEDDER) -> list[str]:
    return sorted(name for name, entry in _MODELS.items() if kind is None or entry.kind == kind)


def model_kind(name: str) -> str | None:
    entry = _MODELS.get(name)
    return None if entry is None else entry.kind


def get_encoder(name: str, settings: Settings | None = None, allow_paths: bool = True, kinds: tuple[str, ...] = (IMAGE_EMBEDDER,)) -> Encoder:
    """An image embedder by name: a registered model, or a trained model (a name in the store's
    models folder, or, unless ``allow_paths`` is False as for remote requests, a folder path).
    ``kinds`` widens what is accepted (a trained head's backbone may be a feature extractor)."""
    settings = settings or Settings()
    entry = _MODELS.get(name)
    if entry is not None:
        if entry.kind not in kinds:
            raise EncoderError(f"{name!r} is a {entry.kind}, not an image embedder; a store serves one of: "
                               f"{', '.join(available_encoders())}")
        return entry.factory(settings)
    path = resolve_model_path(name, Path(settings.store).expanduser(), allow_paths)
    if path is None:
        raise EncoderError(f"unknown encoder {name!r}; available: {', '.join(available_encoders())}, a model trained with "
                           "'lookalike train embedding', or one copied in with 'lookalike models import'")
    try:
        if is_int8_folder(path):
            return Int8Encoder(load_int8(path), settings)
        model = load_model(path)
        return FineTunedEncoder(model, lambda backbone: get_encoder(backbone, settings, kinds=(IMAGE_EMBEDDER, FEATURE_EXTRACTOR)))
    except (ModelError, ValueError) as exc:
        raise EncoderError(str(exc)) from exc


def import_model(source: str | Path, store_dir: Path) -> Path:
    """Copy a trained model folder into a store's models folder (checked, atomically); returns
    the new folder.  A model keeps its name (stores record ``name@version``); importing the same
    model again is a no-op, a different model of the same name is refused."""
    source = Path(source).expanduser()
    if not (source / "model.json").is_file():
        raise ModelError(f"{source} is not a model folder (it has no model.json)")
    model = _checked(source)  # refuses a damaged or edited folder before anything is copied
    name = check_name(model.name)
    target = models_dir(store_dir) / name
    if target.exists():
        if _checked(target).version == model.version:
            return target
        raise ModelError(f"the store already has a different model named {name!r} (another version); "
                         "delete it from the store's models folder first, or retrain under another --name")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-import-"))
    try:
        for item in ("model.json", "weights.npz", "holdout.json", ONNX_FILE):
            if (source / item).is_file():
                shutil.copy2(source / item, staging / item)
        staging.replace(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _checked(path: Path) -> TrainedModel | Int8Model:
    """A model folder of any kind, read and checked."""
    return load_int8(path) if is_int8_folder(path) else load_model(path)


def adopt_model(name_or_path: str, store_dir: Path) -> str:
    """A model named by folder path is imported into the store first and named by its name from
    then on, so the store reopens with it (it records ``name@version``, which resolves in its own
    models folder); names pass through unchanged."""
    path = resolve_model_path(name_or_path, store_dir, allow_paths=True)
    if path is None or path.resolve().parent == models_dir(store_dir).resolve():
        return name_or_path
    return import_model(path, store_dir).name
