"""The store's garment finder, chosen by setting ``detector`` and loaded once."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ..common.progress import Log, Progress, no_log
from ..config import Settings
from .artefact import check_name, detectors_dir, list_detectors, load_detector, next_name, resolve_detector
from .detector import GarmentDetector


class FinderLoader:
    """``auto`` (the store's newest trained finder, else the packaged default), ``default``, a
    name in ``STORE/detectors`` or ``none``; a finder is loaded (and checked) on first use."""

    def __init__(self, store_dir: Path, settings: Settings):
        self.store_dir, self.settings = Path(store_dir), settings
        self._loaded: tuple[str, GarmentDetector] | None = None
        self._lock = threading.Lock()

    def get(self, choice: str) -> GarmentDetector | None:
        choice = choice.strip() or "auto"
        if choice == "none":
            return None
        with self._lock:
            if self._loaded is None or self._loaded[0] != choice:
                self._loaded = (choice, GarmentDetector(load_detector(self.path(choice)), self.settings))
            return self._loaded[1]

    def path(self, choice: str) -> Path:
        if choice != "auto":
            return resolve_detector(choice, self.store_dir)
        trained = list_detectors(self.store_dir)
        return detectors_dir(self.store_dir) / trained[-1]["folder"] if trained else resolve_detector("default", None)

    def train(self, spec: Any, name: str | None = None, progress: Progress | None = None, log: Log = no_log) -> tuple[Path, dict[str, Any]]:
        """Train a finder into ``STORE/detectors`` (see :func:`.training.fit_detector`); ``auto`` uses it next."""
        from .training import fit_detector  # PyTorch is imported only by who trains

        target = detectors_dir(self.store_dir) / check_name(name or next_name(self.store_dir))
        path, figures = fit_detector(spec, target, self.settings, progress, log)
        with self._lock:
            self._loaded = None
        return path, figures
