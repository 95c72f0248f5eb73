"""One mapping from what went wrong to what an HTTP client is told, shared by the API and the
web pages: a status it can act on and a JSON body ``{"detail": message, "error": kind}``."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..detection import DetectorError
from ..images import ImageError, clean_message
from ..ingest.catalogue import CatalogueError
from ..jobs import BusyError
from ..judging import UnknownRound
from ..models import EncoderError, ModelError
from ..search import NotFoundError
from ..search.filters import FilterError
from ..search.look import LookUnavailable
from ..security.http import AuthError
from ..security.paths import PathRefused
from ..storage import ReadOnlyStoreError, StoreError, StoreFullError
from ..tagging import TaggerError
from ..validation import InvalidProductError

IMAGE_STATUS = {"unsupported": 415, "too_large": 413, "too_many_pixels": 413, "empty": 400, "corrupt": 400, "missing": 400,
                "fetch": 400, "blocked_url": 400, "forbidden_path": 403, "busy": 503}

# Most specific first: the first matching class decides.
ERROR_STATUS: list[tuple[type[BaseException], int, str]] = [
    (InvalidProductError, 422, "bad_request"),
    (TaggerError, 409, "tagger"),
    (FilterError, 422, "bad_filter"),
    (NotFoundError, 404, "not_found"),
    (UnknownRound, 404, "not_found"),
    (BusyError, 409, "busy"),
    (EncoderError, 404, "unknown_model"),
    (ModelError, 409, "model"),
    (DetectorError, 409, "detector"),
    (LookUnavailable, 409, "detector"),
    (StoreFullError, 507, "disk_full"),
    (ReadOnlyStoreError, 409, "read_only"),
    (StoreError, 409, "store"),
    (PathRefused, 403, "forbidden_path"),
    (CatalogueError, 400, "bad_catalogue"),
    (ValueError, 422, "bad_request"),
]


class ErrorOut(BaseModel):
    detail: str = Field(description="What went wrong, naming the item and the reason")
    error: str = Field(description="Machine-readable kind: bad_request, bad_filter, not_found, unauthorized, "
                                   "forbidden, too_large, unsupported, busy, disk_full, internal...")


_DESCRIPTIONS = {400: "Unreadable image, bad catalogue or bad request", 401: "No API key, or an unknown or revoked one",
                 403: "The key lacks the scope, or a server path outside the ingest roots",
                 404: "Unknown product or model", 409: "Busy (a job is running), read-only store or tagger state",
                 413: "Too large (body, image bytes or pixels)", 415: "Not an image in a supported format",
                 405: "Method not allowed", 422: "Invalid parameter, id, metadata or filter", 500: "Internal error (logged with an id)",
                 503: "Too many downloads at once; retry shortly", 507: "Disk full; nothing was written"}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut, "description": text} for code, text in _DESCRIPTIONS.items()}


def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": clean_message(message), "error": kind}, headers=headers)


def classify(exc: BaseException) -> tuple[int, str, str]:
    """(status, kind, message) for an error a request may raise."""
    if isinstance(exc, ImageError):
        return IMAGE_STATUS.get(exc.kind, 400), exc.kind, exc.message
    if isinstance(exc, AuthError):
        return exc.status, "unauthorized" if exc.status == 401 else "forbidden", str(exc)
    for error_type, status, kind in ERROR_STATUS:
        if isinstance(exc, error_type):
            return status, kind, str(exc)
    raise exc


def install_error_handlers(app: FastAPI) -> None:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        status, kind, message = classify(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return error_response(status, kind, message, headers)

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, "bad_request", describe_validation(exc))

    async def framework(_: Request, exc: Exception) -> JSONResponse:
        """Routing and body-parsing errors raised by Starlette and FastAPI, in the same shape."""
        assert isinstance(exc, StarletteHTTPException)
        kind = _HTTP_KINDS.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal")
        return error_response(exc.status_code, kind, str(exc.detail), getattr(exc, "headers", None))

    for error_type in [ImageError, AuthError, *[t for t, _, _ in ERROR_STATUS]]:
        app.add_exception_handler(error_type, handle)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, framework)


_HTTP_KINDS = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "too_large", 415: "unsupported"}


def describe_validation(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one readable sentence (the first few of them)."""
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body",))
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def read_upload(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ImageError("too_large", f"upload {upload.filename or ''!r} is larger than the limit of {limit} bytes")
    return data


def parse_metadata_field(text: str | None) -> dict[str, Any] | None:
    """The ``metadata`` form field: a JSON object, or None when omitted."""
    if text is None:
        return None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidProductError(f"metadata is not valid JSON: {exc.msg} at column {exc.colno}") from exc
    except (ValueError, RecursionError) as exc:  # 5,000-digit numbers, nesting beyond the parser's depth
        raise InvalidProductError(f"metadata cannot be read: {type(exc).__name__}") from exc
    if not isinstance(parsed, dict):
        raise InvalidProductError("metadata must be a JSON object")
    return parsed
