"""API keys: random tokens shown once, stored only as SHA-256 hashes, each with scopes.

Scopes nest: ``admin`` ⊃ ``write`` ⊃ ``judge`` ⊃ ``read``; ``judge`` reads and votes in judging
rounds and nothing else, so a key handed to people judging results cannot change the catalogue.  A key is ``lk_<id>_<secret>``; the id is
public (it names the key in ``keys list`` and logs), the secret is 32 random bytes, so a
plain SHA-256 is enough (no password stretching is needed for a high-entropy token) and a
stolen key file reveals no usable key.  The ring is its own SQLite file in the store
(``keys.sqlite``): key management never opens the catalogue, and a backup of the store
directory carries its keys.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCOPES = ("read", "judge", "write", "admin")
_PREFIX = "lk_"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
"""


class KeyRingError(ValueError):
    """A key request is malformed (unknown scope, unknown key id, bad name)."""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    scope: str
    created_at: float
    revoked_at: float | None = None

    def allows(self, needed: str) -> bool:
        return self.revoked_at is None and SCOPES.index(self.scope) >= SCOPES.index(needed)

    def to_dict(self) -> dict[str, object]:
        return {"key_id": self.key_id, "name": self.name, "scope": self.scope, "created_at": self.created_at,
                "revoked": self.revoked_at is not None}


class KeyRing:
    """The API keys of one store. Thread-safe; every check reads the file, so a key revoked by
    ``lookalike keys revoke`` stops working on a running server at once."""

    FILENAME = "keys.sqlite"

    def __init__(self, directory: Path):
        self.path = directory / self.FILENAME
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            self._db.executescript(_SCHEMA)
        return self._db

    def _read_conn(self) -> sqlite3.Connection | None:
        """The ring opened for reading only when it exists: a store without keys has no file."""
        if self._db is None and not self.path.is_file():
            return None
        if self._db is None:
            try:
                return self._conn()
            except sqlite3.OperationalError:  # read-only store: read the file as it is
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def create(self, name: str, scope: str) -> tuple[ApiKey, str]:
        """A new key; returns it and its token, which is not stored and cannot be shown again."""
        if scope not in SCOPES:
            raise KeyRingError(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}")
        name = name.strip()
        if not name or len(name) > 100 or not name.isprintable():
            raise KeyRingError("a key name is 1-100 printable characters")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        key = ApiKey(key_id, name, scope, time.time())
        with self._lock:
            self._conn().execute("INSERT INTO api_keys(key_id, name, scope, secret_sha256, created_at) VALUES (?, ?, ?, ?, ?)",
                                 (key_id, name, scope, _digest(secret), key.created_at))
        return key, f"{_PREFIX}{key_id}_{secret}"

    def revoke(self, key_id: str) -> ApiKey:
        with self._lock:
            db = self._conn()
            row = db.execute("SELECT key_id FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
            if row is None:
                raise KeyRingError(f"no API key with id {key_id!r} (see lookalike keys list)")
            db.execute("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ?", (time.time(), key_id))
        return next(k for k in self.list() if k.key_id == key_id)

    def list(self) -> list[ApiKey]:
        with self._lock:
            db = self._read_conn()
            if db is None:
                return []
            rows = db.execute("SELECT key_id, name, scope, created_at, revoked_at FROM api_keys ORDER BY created_at").fetchall()
        return [ApiKey(*row) for row in rows]

    def has_keys(self) -> bool:
        """True when at least one key is active: then the server requires keys."""
        return any(k.revoked_at is None for k in self.list())

    def verify(self, token: str | None) -> ApiKey | None:
        """The active key a token belongs to, or None (unknown, malformed or revoked)."""
        if not token or not token.startswith(_PREFIX) or len(token) > 200:
            return None
        key_id, _, secret = token[len(_PREFIX):].partition("_")
        if not key_id or not secret:
            return None
        with self._lock:
            db = self._read_conn()
            if db is None:
                return None
            row = db.execute("SELECT key_id, name, scope, created_at, revoked_at, secret_sha256 FROM api_keys WHERE key_id = ?",
                             (key_id,)).fetchone()
        if row is None or not hmac.compare_digest(row[5], _digest(secret)) or row[4] is not None:
            return None
        return ApiKey(*row[:5])


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
