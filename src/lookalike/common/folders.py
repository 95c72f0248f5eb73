"""Artefact folders written all at once: a reader sees the old folder or the complete new one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


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
