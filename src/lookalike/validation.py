"""What a product may be: the id alphabet and the shape of metadata, checked on every way in.

A value that reaches the store is served back by every read, filter and page, so anything
the readers cannot take (a 400-digit integer, nesting 300 deep, 20,000 keys) is refused
here, with a message that names the key and the reason, before anything is written.  The
HTTP API, the CLI, the Python API and catalogue rows all call :func:`validate_id` and
:func:`validate_metadata`; nothing else decides what a product may hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

# Predicted tags are filterable as tag.<name>; a shop column of that name would pass for one.
RESERVED_PREFIX = "tag."
ID_MAX_LENGTH = 200
ID_PUNCTUATION = frozenset("-_.~:@+=,()' /")
# An id ending like a sub-resource could never be read back at /products/{id}.
ID_RESERVED_ENDINGS = ("/similar", "/thumbnail", "/changes")  # the API routes below /products/{id}/
INT_LIMIT = 2**63  # integers are kept exactly up to 64 bits; bigger ones are not prices or counts


class InvalidProductError(ValueError):
    """A product id or its metadata is not acceptable; the message names the item and the reason."""


@dataclass(frozen=True)
class MetadataLimits:
    max_keys: int = 100
    max_key_length: int = 100
    max_text_length: int = 10_000
    max_list_items: int = 50
    max_bytes: int = 64 * 1024


def validate_id(value: Any) -> str:
    """The id itself when acceptable: 1–200 characters of letters, digits and ``- _ . ~ : @ + = , ( ) '``,
    inner spaces, and ``/`` between non-empty segments; not ending in ``/similar``, ``/thumbnail`` or ``/changes``."""
    if not isinstance(value, str):
        raise InvalidProductError(f"product id must be text, got {type(value).__name__}")
    shown = _shorten(value)
    if not value:
        raise InvalidProductError("product id must not be empty")
    if len(value) > ID_MAX_LENGTH:
        raise InvalidProductError(f"product id {shown} is {len(value)} characters long; the limit is {ID_MAX_LENGTH}")
    bad = sorted({c for c in value if not (c.isalnum() or c in ID_PUNCTUATION)})
    if bad:
        listed = " ".join(repr(c) for c in bad[:5])
        raise InvalidProductError(f"product id {shown} contains {listed}; ids use letters, digits, spaces and - _ . ~ : @ + = , ( ) ' /")
    if value != value.strip():
        raise InvalidProductError(f"product id {shown} starts or ends with a space")
    segments = value.split("/")
    if any(s.strip() in ("", ".", "..") for s in segments):
        raise InvalidProductError(f"product id {shown} has an empty, '.' or '..' part between slashes")
    if value.endswith(ID_RESERVED_ENDINGS):
        raise InvalidProductError(f"product id {shown} ends with a reserved path ({' or '.join(ID_RESERVED_ENDINGS)})")
    return value


def validate_metadata(metadata: Any, limits: MetadataLimits = MetadataLimits(), item: str = "metadata") -> dict[str, Any]:
    """A copy of ``metadata`` when it is a flat map of scalars or short lists of scalars within
    ``limits``; otherwise :class:`InvalidProductError` naming the first offending key."""
    if not isinstance(metadata, Mapping):
        raise InvalidProductError(f"{item} must be an object of column → value, got {type(metadata).__name__}")
    if len(metadata) > limits.max_keys:
        raise InvalidProductError(f"{item} has {len(metadata)} keys; the limit is {limits.max_keys}")
    clean: dict[str, Any] = {}
    total = 0
    for key, value in metadata.items():
        _check_key(key, limits, item)
        clean[key] = _check_value(value, limits, f"{item} key {_shorten(key)}")
        total += len(key) + _size(clean[key])
        if total > limits.max_bytes:
            raise InvalidProductError(f"{item} is larger than {limits.max_bytes} bytes")
    return clean


def _check_key(key: Any, limits: MetadataLimits, item: str) -> None:
    if not isinstance(key, str):
        raise InvalidProductError(f"{item}: keys must be text, got {type(key).__name__}")
    if not key.strip():
        raise InvalidProductError(f"{item}: a key is empty")
    if len(key) > limits.max_key_length:
        raise InvalidProductError(f"{item}: key {_shorten(key)} is {len(key)} characters; the limit is {limits.max_key_length}")
    if any(not c.isprintable() for c in key):
        raise InvalidProductError(f"{item}: key {_shorten(key)} contains control characters")
    if key.lower().startswith(RESERVED_PREFIX):
        raise InvalidProductError(f"{item}: key {_shorten(key)} starts with {RESERVED_PREFIX!r}, which is reserved for predicted tags; rename the column")


def _check_value(value: Any, limits: MetadataLimits, where: str, in_list: bool = False) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -INT_LIMIT <= value < INT_LIMIT:
            raise InvalidProductError(f"{where}: the integer is out of range (at most 64 bits)")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidProductError(f"{where}: {value} is not a finite number")
        return value
    if isinstance(value, str):
        if len(value) > limits.max_text_length:
            raise InvalidProductError(f"{where}: the text is {len(value)} characters; the limit is {limits.max_text_length}")
        return value
    if isinstance(value, (list, tuple)) and not in_list:
        if len(value) > limits.max_list_items:
            raise InvalidProductError(f"{where}: the list has {len(value)} items; the limit is {limits.max_list_items}")
        return [_check_value(v, limits, where, in_list=True) for v in value]
    kind = "a nested list" if isinstance(value, (list, tuple)) else type(value).__name__
    raise InvalidProductError(f"{where}: values must be text, numbers, true/false, null or a short list of those, not {kind}")


def _size(value: Any) -> int:
    if isinstance(value, list):
        return sum(_size(v) for v in value) + 2
    return len(value) if isinstance(value, str) else 8


def _shorten(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")
