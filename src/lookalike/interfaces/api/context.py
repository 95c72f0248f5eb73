"""What the routers share: the engine they call, its settings, who may call what, and the job board."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import Settings
from ...engine import Engine
from ...security.paths import PathPolicy
from .access import Scopes


@dataclass(frozen=True)
class ApiContext:
    engine: Engine
    settings: Settings
    scopes: Scopes
    ingest_roots: PathPolicy  # server folders POST /ingest may read (none by default)

    @property
    def image_limit(self) -> int:
        return self.settings.max_image_bytes
