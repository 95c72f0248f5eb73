"""Trained embedding models as versioned artefacts in the store: ``STORE/models/NAME/``.

A model folder holds ``model.json`` (what it was trained on, with which parameters, and its
validation metrics), ``weights.npz`` (the head, and the codebooks when it is quantised) and
``holdout.json`` (the products kept out of training, so evaluation can stay on unseen data).
Folders are written under a temporary name and renamed into place, so a crash never leaves a
half-written model; a model is never overwritten, a retrain gets the next version number.

At inference the head is two small matrix products in NumPy after the ONNX backbone(s), so
a fine-tuned model needs no PyTorch to serve.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..common.folders import ARTEFACT_NAME, HashVersioned, next_version_name, read_descriptions, write_folder

MODELS_DIR = "models"
FORMAT = 1
INT8_KIND = "int8-encoder"  # model.json kind of an INT8 encoder folder (models.int8): no head to load here


class ModelError(RuntimeError):
    """A trained model is missing, damaged or does not fit the store."""


@dataclass
class EmbeddingHead:
    """unit backbone features -> [ReLU hidden layer] -> linear -> unit vector.

    With ``conv`` (an unfrozen head) the input is the backbone's last feature map, flattened
    position-major; the trained 1×1 convolution, ReLU6, average pooling and L2 normalisation
    turn it into pooled features first, exactly as the frozen backbone's own head does."""

    layers: list[tuple[np.ndarray, np.ndarray]]
    conv: tuple[np.ndarray, np.ndarray] | None = None
    # > 0: the unit backbone features are appended, weighted so that this share of every cosine
    # similarity comes from the backbone: the class structure the head learned, plus the detail
    # that tells one photo of a product from its near-twins (which a class loss trains away)
    backbone_share: float = 0.0
    # an unfrozen head's starting point: the backbone's own last convolution (batch norm folded
    # in), so the off-the-shelf vector of a photo comes from the same feature map, for free
    pretrained_conv: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def input_dim(self) -> int:
        return int(self.layers[0][0].shape[0])

    @property
    def head_dim(self) -> int:
        return int(self.layers[-1][0].shape[1])

    @property
    def dim(self) -> int:
        return self.head_dim + (self.input_dim if self.backbone_share > 0 else 0)

    def pooled(self, maps: np.ndarray) -> np.ndarray:
        if self.conv is None:
            raise ModelError("this head has no convolution: it takes pooled features, not feature maps")
        return _pool(maps, self.conv)

    def off_the_shelf(self, maps: np.ndarray) -> np.ndarray:
        """An unfrozen head's feature maps through the backbone's pretrained last convolution:
        the unit vectors the backbone itself gives these photos (what the exact-first rule
        compares), without a second backbone run."""
        if self.conv is None or self.pretrained_conv is None:
            raise ModelError("this head keeps no pretrained convolution: only unfrozen heads trained since 2026-12-06 do")
        return _pool(maps, self.pretrained_conv)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        base = self.pooled(features) if self.conv is not None else np.asarray(features, dtype=np.float32)
        x = base
        for i, (weight, bias) in enumerate(self.layers):
            x = x @ weight + bias
            if i < len(self.layers) - 1:
                np.maximum(x, 0, out=x)
        x = _unit(x)
        if self.backbone_share > 0:
            x = np.concatenate([np.sqrt(1.0 - self.backbone_share) * x, np.sqrt(self.backbone_share) * _unit(base)], axis=1)
        return x.astype(np.float32)


def _pool(maps: np.ndarray, conv: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Position-major feature maps -> 1×1 convolution, ReLU6, average pooling -> unit vectors."""
    weight, bias = conv
    x = np.asarray(maps, dtype=np.float32).reshape(len(maps), -1, weight.shape[0]) @ weight + bias
    return _unit(np.clip(x, 0.0, 6.0).mean(axis=1))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class TrainedModel(HashVersioned):
    """A loaded model folder: head, optional quantiser and the description in model.json."""

    name: str
    path: Path
    info: dict[str, Any]
    head: EmbeddingHead
    quantizer: Any = None  # AdditiveQuantizer when the model was trained with codes
    holdout: list[str] = field(default_factory=list)
    training_set: Any = None  # the TrainingSet it was just trained on (in memory only), so a quantiser can reuse it

    @property
    def backbones(self) -> list[str]:
        """Backbone encoder names, in feature order."""
        return [b.split("@")[0] for b in self.info["backbones"]]


def models_dir(store_dir: Path) -> Path:
    return Path(store_dir) / MODELS_DIR


def list_models(store_dir: Path) -> list[dict[str, Any]]:
    """model.json of every model in the store, oldest first."""
    return [info for _, info in read_descriptions(models_dir(store_dir), "model.json")]


def next_name(store_dir: Path, stem: str) -> str:
    """``stem-vN`` with the first unused N."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "model"
    return next_version_name(models_dir(store_dir), stem)


def check_name(name: str) -> str:
    if not ARTEFACT_NAME.match(name):
        raise ModelError(f"model name {name!r} must be 1-80 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def save_model(store_dir: Path, name: str, info: dict[str, Any], head: EmbeddingHead, quantizer: Any = None,
               holdout: list[str] | None = None) -> Path:
    """Write a new model folder atomically; refuses to overwrite an existing model."""
    check_name(name)
    target = models_dir(store_dir) / name
    if target.exists():
        raise ModelError(f"a model named {name!r} already exists in {models_dir(store_dir)}; choose another --name")
    arrays: dict[str, np.ndarray] = {}
    for i, (weight, bias) in enumerate(head.layers):
        arrays[f"layer{i}_weight"], arrays[f"layer{i}_bias"] = weight.astype(np.float32), bias.astype(np.float32)
    if head.conv is not None:
        arrays["conv_weight"], arrays["conv_bias"] = head.conv[0].astype(np.float32), head.conv[1].astype(np.float32)
    if head.pretrained_conv is not None:
        arrays["pretrained_conv_weight"] = head.pretrained_conv[0].astype(np.float32)
        arrays["pretrained_conv_bias"] = head.pretrained_conv[1].astype(np.float32)
    if head.backbone_share > 0:  # in the weights, so the hash covers it
        arrays["backbone_share"] = np.array([head.backbone_share], dtype=np.float64)
    if quantizer is not None:
        arrays["codebooks"] = quantizer.codebooks.astype(np.float32)
        arrays["norm_range"] = np.array(quantizer.norm_range, dtype=np.float64)
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    info = {**info, "name": name, "format": FORMAT, "weights_sha": digest.hexdigest(), "created": info.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S"),
            "dim": head.dim, "layers": len(head.layers), "bits": None if quantizer is None else quantizer.bits}

    def fill(folder: Path) -> None:
        np.savez(folder / "weights.npz", **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
        (folder / "holdout.json").write_text(json.dumps(sorted(holdout or [])))
        (folder / "model.json").write_text(json.dumps(info, indent=2, default=str))

    return write_folder(target, fill)


def resolve_model_path(name_or_path: str, store_dir: Path | None, allow_paths: bool = True) -> Path | None:
    """A model folder from a path or a model name in the store; None when neither exists.
    ``allow_paths`` False (a remote client's request): names in the store only."""
    if allow_paths:
        try:
            candidate = Path(name_or_path).expanduser()
            if (candidate / "model.json").is_file():
                return candidate
        except (OSError, RuntimeError, ValueError):  # too long, no home directory, NUL byte: not a path
            pass
    if store_dir is not None and ARTEFACT_NAME.match(name_or_path) and (models_dir(store_dir) / name_or_path / "model.json").is_file():
        return models_dir(store_dir) / name_or_path
    return None


def load_model(path: Path) -> TrainedModel:
    """Read a model folder, checking that it is complete and that its weights match model.json."""
    from ..vectors.quantizer import AdditiveQuantizer

    try:
        info = json.loads((path / "model.json").read_text())
        if isinstance(info, dict) and info.get("kind") == INT8_KIND:
            raise ModelError(f"{path} is an INT8 encoder (serve it with reindex --model), not a trained head to build on")
        with np.load(path / "weights.npz", allow_pickle=False) as weights:
            arrays = {k: weights[k] for k in weights.files}
        holdout = json.loads((path / "holdout.json").read_text()) if (path / "holdout.json").exists() else []
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"model at {path} cannot be read ({exc}); train it again") from exc
    if info.get("format") != FORMAT:
        raise ModelError(f"model at {path} has format {info.get('format')}; this lookalike reads format {FORMAT}")
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    if digest.hexdigest() != info.get("weights_sha"):
        raise ModelError(f"model at {path}: weights.npz does not match model.json (damaged or edited); train it again")
    layers = [(arrays[f"layer{i}_weight"], arrays[f"layer{i}_bias"]) for i in range(int(info["layers"]))]
    quantizer = AdditiveQuantizer(arrays["codebooks"], tuple(arrays["norm_range"].tolist())) if "codebooks" in arrays else None
    conv = (arrays["conv_weight"], arrays["conv_bias"]) if "conv_weight" in arrays else None
    pretrained = (arrays["pretrained_conv_weight"], arrays["pretrained_conv_bias"]) if "pretrained_conv_weight" in arrays else None
    if pretrained is not None and (conv is None or pretrained[0].shape != conv[0].shape or pretrained[1].shape != conv[1].shape):
        raise ModelError(f"model at {path}: its pretrained convolution does not match its trained one in shape")
    stored = arrays.get("backbone_share", np.zeros(1)).ravel()
    share = float(stored[0]) if stored.size == 1 and stored.dtype.kind == "f" else float("nan")
    if not 0.0 <= share < 1.0:
        raise ModelError(f"model at {path}: backbone share {share} is not in [0, 1)")
    return TrainedModel(info["name"], path, info, EmbeddingHead(layers, conv, share, pretrained), quantizer, holdout)
