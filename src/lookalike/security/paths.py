"""Server-side paths: what a remote client may make the server read.

Nothing, by default: a remote client uploads its catalogue.  An operator who wants the server
to read catalogues (and the images they name) from its own disk lists folders in
``ingest_roots``; a path is allowed only when its real location (symlinks resolved) lies
inside one of them.  A refused path gets the same message whether or not it exists, so the
answer is no oracle for the server's files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class PathRefused(PermissionError):
    """A server-side path outside the configured roots."""


@dataclass(frozen=True)
class PathPolicy:
    """``roots`` None: any path (the CLI and Python API, run by the machine's own user)."""

    roots: tuple[Path, ...] | None = None

    @classmethod
    def confined(cls, roots: list[str]) -> PathPolicy:
        return cls(tuple(Path(r).expanduser().resolve() for r in roots))

    def check(self, path: str | Path, what: str = "path") -> Path:
        """The resolved path when it is allowed; :class:`PathRefused` otherwise."""
        resolved = Path(path).expanduser().resolve()
        if self.roots is None:
            return resolved
        if not self.roots:
            raise PathRefused(f"this server reads no {what}s from its own disk; upload the catalogue "
                              "(POST /ingest/upload) or ask the operator to set ingest_roots")
        if not any(resolved == root or root in resolved.parents for root in self.roots):
            raise PathRefused(f"the {what} is outside the server's ingest roots")
        return resolved
