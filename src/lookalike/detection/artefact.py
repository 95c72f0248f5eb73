"""Garment finders as versioned artefacts: ``STORE/detectors/NAME/`` (or the packaged default).

A folder holds ``detector.json`` (kind, format, groups, backbone, input size, what it was
trained on, its held-out figures and provenance), ``weights.npz`` (the head's arrays) and
``holdout.json`` (the photos kept out of training, so evaluation stays on unseen photos).
Folders are written under a temporary name and renamed into place; a retrain gets the next
version number.  Loading checks everything it can, because a detector is applied to every
photo automatically: the kind (an embedding model folder is not a detector), the format, the
weights' checksum, the array shapes and the group names.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..common.folders import ARTEFACT_NAME, HashVersioned, next_version_name, read_descriptions, write_folder
from .groups import GARMENT_GROUPS
from .head import ARRAY_NAMES, SegmentationHead

DETECTORS_DIR = "detectors"
KIND = "garment-detector"
FORMAT = 1
BACKBONES = ("efficientnet-lite0", "efficientnet-lite2")
DEFAULT_DIR = Path(__file__).parent / "default"
MAX_WEIGHTS_BYTES = 40_000_000


class DetectorError(RuntimeError):
    """A garment finder is missing, damaged, foreign or does not fit."""


@dataclass
class DetectorArtefact(HashVersioned):
    name: str
    path: Path
    info: dict[str, Any]
    head: SegmentationHead
    holdout: list[str] = field(default_factory=list)

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.info["groups"])

    @property
    def classes(self) -> tuple[str, ...]:
        """What the head's outputs after the background mean: the groups, then "person" if learnt."""
        return self.groups + (("person",) if self.info.get("person") else ())


def detectors_dir(store_dir: Path) -> Path:
    return Path(store_dir) / DETECTORS_DIR


def check_name(name: str) -> str:
    if not ARTEFACT_NAME.match(name):
        raise DetectorError(f"detector name {name!r} must be 1-80 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def next_name(store_dir: Path, stem: str = "garments") -> str:
    return next_version_name(detectors_dir(store_dir), stem)


def weights_digest(arrays: dict[str, np.ndarray]) -> str:
    """The hash of a head's arrays (as float32): its identity, checked on load, and its served graph's key."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(str(arrays[key].shape).encode())
        digest.update(np.ascontiguousarray(arrays[key], dtype=np.float32).tobytes())
    return digest.hexdigest()


def save_detector(target: Path, info: dict[str, Any], head: SegmentationHead, holdout: list[str] | None = None,
                  extra_files: dict[str, Path] | None = None) -> Path:
    """Write a detector folder atomically at ``target`` (which must not exist); ``extra_files``:
    files copied in under these names (the INT8 graph's calibration ranges)."""
    check_name(target.name)
    if target.exists():
        raise DetectorError(f"a detector named {target.name!r} already exists in {target.parent}; choose another --name")
    arrays = {k: np.asarray(v) for k, v in head.arrays.items()}  # the tail's big matrices stay float16
    info = {**info, "kind": KIND, "format": FORMAT, "name": target.name, "weights_sha": weights_digest(arrays),
            "classes": head.classes, "width": head.width, "parameters": head.parameters(),
            "created": info.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S")}

    def fill(folder: Path) -> None:
        np.savez_compressed(folder / "weights.npz", **arrays)  # type: ignore[arg-type]
        (folder / "holdout.json").write_text(json.dumps(sorted(holdout or [])))
        (folder / "detector.json").write_text(json.dumps(info, indent=2, default=str))
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, folder / name)

    return write_folder(target, fill)


def _read_info(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise DetectorError(f"no detector at {path}")
    if not (path / "detector.json").is_file():
        hint = " (it is an embedding model, not a garment finder)" if (path / "model.json").is_file() else ""
        raise DetectorError(f"{path} is not a detector folder: it has no detector.json{hint}")
    try:
        info = json.loads((path / "detector.json").read_text())
    except (OSError, ValueError) as exc:
        raise DetectorError(f"detector at {path}: detector.json cannot be read ({exc}); train it again") from exc
    if not isinstance(info, dict) or info.get("kind") != KIND:
        raise DetectorError(f"{path} is not a garment detector (kind {info.get('kind') if isinstance(info, dict) else None!r})")
    if info.get("format") != FORMAT:
        raise DetectorError(f"detector at {path} has format {info.get('format')!r}; this lookalike reads format {FORMAT}")
    groups = info.get("groups")
    if not isinstance(groups, list) or not groups or any(g not in GARMENT_GROUPS for g in groups) or len(set(groups)) != len(groups):
        raise DetectorError(f"detector at {path}: its groups {groups!r} are not garment groups ({', '.join(GARMENT_GROUPS)})")
    if info.get("backbone") not in BACKBONES:
        raise DetectorError(f"detector at {path}: unknown backbone {info.get('backbone')!r}")
    long_side = info.get("long_side")
    if not isinstance(long_side, int) or not 64 <= long_side <= 1024:
        raise DetectorError(f"detector at {path}: input size {long_side!r} is not a whole number from 64 to 1024")
    return info


def load_detector(path: Path) -> DetectorArtefact:
    """Read a detector folder, refusing one that is damaged, edited or not a detector."""
    info = _read_info(path)
    weights = path / "weights.npz"
    try:
        if weights.stat().st_size > MAX_WEIGHTS_BYTES:
            raise DetectorError(f"detector at {path}: weights.npz is larger than {MAX_WEIGHTS_BYTES} bytes")
        with np.load(weights, allow_pickle=False) as stored:
            arrays = {k: np.asarray(stored[k]) for k in stored.files}
        holdout = json.loads((path / "holdout.json").read_text()) if (path / "holdout.json").exists() else []
    except DetectorError:
        raise
    except Exception as exc:  # a truncated zip raises zipfile/ValueError/OSError/EOFError
        raise DetectorError(f"detector at {path}: weights cannot be read ({type(exc).__name__}: {exc}); train it again") from exc
    if not set(ARRAY_NAMES) <= set(arrays):
        raise DetectorError(f"detector at {path}: weights.npz does not hold a garment finder's head")
    if weights_digest(arrays) != info.get("weights_sha"):
        raise DetectorError(f"detector at {path}: weights.npz does not match detector.json (damaged or edited); train it again")
    try:
        head = SegmentationHead({k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in arrays.items()})
    except ValueError as exc:
        raise DetectorError(f"detector at {path}: {exc}") from exc
    expected = len(info["groups"]) + 1 + (1 if info.get("person") else 0)
    if head.classes != expected:
        raise DetectorError(f"detector at {path}: {head.classes} outputs where its groups need {expected}")
    if not all(np.isfinite(v).all() for v in head.arrays.values() if v.dtype.kind == "f"):
        raise DetectorError(f"detector at {path}: weights hold NaN or infinite values")
    if not isinstance(holdout, list):
        holdout = []
    return DetectorArtefact(str(info.get("name", path.name)), path, info, head, [str(h) for h in holdout])


def resolve_detector(name_or_path: str, store_dir: Path | None, allow_paths: bool = True) -> Path:
    """``default`` (the packaged finder), a name in the store's detectors folder, or (local
    callers only) a folder path."""
    if name_or_path == "default":
        return DEFAULT_DIR
    if store_dir is not None and ARTEFACT_NAME.match(name_or_path) and (detectors_dir(store_dir) / name_or_path).is_dir():
        return detectors_dir(store_dir) / name_or_path
    if allow_paths:
        try:
            candidate = Path(name_or_path).expanduser()
            if candidate.is_dir():
                return candidate
        except (OSError, RuntimeError, ValueError):
            pass
    raise DetectorError(f"unknown detector {name_or_path[:100]!r}: use 'default', a name trained with "
                        "'lookalike train detector', or 'none'")


def list_detectors(store_dir: Path) -> list[dict[str, Any]]:
    """detector.json of every detector in the store (with its ``folder`` name), oldest first
    (unreadable ones skipped)."""
    return [{**info, "folder": folder} for folder, info in read_descriptions(detectors_dir(store_dir), "detector.json")
            if info.get("kind") == KIND]
