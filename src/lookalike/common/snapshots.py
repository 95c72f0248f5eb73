"""Snapshot files: arrays written once under generation-tagged names, named by a small JSON
info file that is replaced atomically, last.

Why this shape: a snapshot is several files (a vector matrix, a change list, a live mask,
filter columns), and a process may open the store while another writes a newer snapshot.
Array files are never rewritten in place, only created under new names; the info file names
the set that belongs together and is switched by one ``os.replace``.  A reader therefore sees
an old complete set or a new complete set.  The worst a race can do (another writer's clean-up
removing files an info still names) is make a snapshot unreadable, and an unreadable snapshot is
rebuilt from the store, never trusted.  Every temporary file is its writer's own, so two savers
never rename each other's files away.  Array files are read with numpy's safe loader
(``allow_pickle=False``), so no stored byte can run code.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from .folders import replace_atomically

_NAME = re.compile(r"^[a-z]+-g\d+-[0-9a-f]{8}\.np[yz]$")


def array_name_ok(name: Any) -> bool:
    """Whether ``name`` (read from an info file) is a snapshot array file this module wrote:
    a bare file name, so a tampered info file cannot point a reader outside the directory."""
    return isinstance(name, str) and bool(_NAME.match(name))


def write_array(directory: Path, stem: str, generation: int, array: np.ndarray) -> str:
    """Write one array under a fresh name (``stem-gGEN-RANDOM.npy``); returns the name."""
    return _write(directory, stem, generation, ".npy", lambda handle: np.save(handle, array, allow_pickle=False))


def write_arrays(directory: Path, stem: str, generation: int, arrays: dict[str, np.ndarray]) -> str:
    """Write several arrays into one fresh ``.npz`` (uncompressed: read at every open); returns the name."""
    savez: Any = np.savez  # its stubs read **arrays as its keyword flags
    return _write(directory, stem, generation, ".npz", lambda handle: savez(handle, **arrays))


def _write(directory: Path, stem: str, generation: int, suffix: str, dump: Any) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{stem}-g{int(generation)}-{secrets.token_hex(4)}{suffix}"
    partial = directory / (name + ".tmp")
    with open(partial, "wb") as handle:
        dump(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, directory / name)
    return name


def write_info(directory: Path, info_name: str, info: dict[str, Any]) -> None:
    """Name a complete set of array files: the one atomic step of a snapshot.  The temporary
    file is this call's own (two processes opening one store both save: with one shared name the
    second rename found its file already renamed away, and the open failed)."""
    replace_atomically(directory / info_name, lambda partial: partial.write_text(json.dumps(info), encoding="utf-8"))


def read_info(directory: Path, info_name: str, model: str) -> dict[str, Any] | None:
    """The info of ``model``'s snapshot, or None when there is none, it is unreadable or another model's."""
    try:
        info = json.loads((directory / info_name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("model") != model or not isinstance(info.get("generation"), int):
        return None
    return info


def load_array(directory: Path, name: Any, mmap: bool = False) -> np.ndarray:
    """One array a snapshot names; ``mmap``: mapped copy-on-write, so writes stay in this process's
    memory and the file is never changed under another reader.  ValueError when the name is not one
    this module writes or the file is not a plain array."""
    if not array_name_ok(name) or not str(name).endswith(".npy"):
        raise ValueError(f"not a snapshot array file: {name!r}")
    array = np.load(directory / name, mmap_mode="c" if mmap else None, allow_pickle=False)
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{name} does not hold one array")
    return array


def load_arrays(directory: Path, name: Any) -> dict[str, np.ndarray]:
    """The arrays of one ``.npz`` a snapshot names (read into memory)."""
    if not array_name_ok(name) or not str(name).endswith(".npz"):
        raise ValueError(f"not a snapshot array file: {name!r}")
    with np.load(directory / name, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def remove_unnamed(directory: Path, stems: tuple[str, ...], info_name: str, keep: set[str]) -> None:
    """Delete this kind of snapshot's array files that neither ``keep`` nor the info now on disk
    names (the latter in case another process switched it meanwhile)."""
    try:
        current = json.loads((directory / info_name).read_text(encoding="utf-8"))
        named = {str(v) for v in _names_in(current)}
    except (OSError, ValueError):
        named = set()
    for path in directory.glob("*-g*"):
        stem = path.name.split("-g", 1)[0]
        if stem in stems and path.name not in keep and path.name not in named and not path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)


def _names_in(value: Any) -> list[str]:
    """Every array file name mentioned anywhere in an info document."""
    if isinstance(value, dict):
        return [name for item in value.values() for name in _names_in(item)]
    if isinstance(value, list):
        return [name for item in value for name in _names_in(item)]
    return [value] if array_name_ok(value) else []
