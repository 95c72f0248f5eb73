"""Artefact folders written all at once: a reader sees the old folder or the complete new one."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable


def write_folder(target: Path, fill: Callable[[Path], None]) -> Path:
    """Call ``fill(staging)`` on a temporary folder next to ``target``, then rename it into place
    (atomic on one file system); on any error the staging folder is removed and nothing appears."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        fill(staging)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MB blocks (model files are tens of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def replace_atomically(target: Path, write: Callable[[Path], object], suffix: str = ".tmp") -> Path:
    """Call ``write(temporary)`` on a fresh file next to ``target``, then rename it over ``target``:
    a reader (or a kill) sees the old file or the complete new one, never half of one.  ``suffix``
    ends the temporary name (numpy's savers append ``.npz``/``.npy`` to names without it)."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-", suffix=suffix)
    os.close(fd)
    temporary = Path(name)
    try:
        write(temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target


def remove_stale_partials(directory: Path, name: str, older_than: float = 3600.0) -> None:
    """Delete temporary files that :func:`replace_atomically` left for ``name`` more than
    ``older_than`` seconds ago: a writer killed mid-write leaves one (an ANN index's can be
    hundreds of MB), and no live writer takes an hour."""
    cutoff = time.time() - older_than
    for path in directory.glob(f".{glob.escape(name)}-*"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            continue  # another process removed or renamed it meanwhile


class HashVersioned:
    """A versioned artefact's identity: ``name@`` the first 12 hex digits of the hash of its
    weights, as stores record it (two versions of one name never mix)."""

    name: str
    info: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.info["weights_sha"])[:12]

    @property
    def identity(self) -> str:
        return f"{self.name}@{self.version}"


# A trained artefact's name: a folder name that is safe everywhere (no separators, no dot files).
ARTEFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


def next_version_name(parent: Path, stem: str) -> str:
    """``stem-vN`` with the first N not taken by an entry of ``parent``."""
    taken = {p.name for p in parent.glob("*")}
    n = 1
    while f"{stem}-v{n}" in taken:
        n += 1
    return f"{stem}-v{n}"


def read_descriptions(parent: Path, filename: str) -> list[tuple[str, dict[str, Any]]]:
    """(folder name, parsed ``filename``) of every sub-folder of ``parent`` that has a readable
    JSON object there, oldest ``created`` first; unreadable ones are skipped."""
    found = []
    for path in sorted(parent.glob(f"*/{filename}")):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict):
            found.append((path.parent.name, info))
    return sorted(found, key=lambda entry: str(entry[1].get("created", "")))
