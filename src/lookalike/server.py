"""The HTTP API (FastAPI). OpenAPI schema at /openapi.json, interactive docs at /docs.

Errors are JSON ``{"detail": message, "error": kind}`` with the status a client can act on:
400 unreadable image or bad request, 404 unknown product, 409 ingest already running,
413 too large, 415 not an image, 422 bad filter or parameter.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Optional
from urllib.parse import quote

from fastapi import FastAPI, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from . import __version__
from .catalogue import CatalogueError
from .encoders import EncoderError
from .engine import BusyError, Engine, NotFoundError
from .store import StoreError
from .filters import FilterError
from .images import ImageError, is_url
from .search import Hit
from .tagging import TaggerError

IMAGE_STATUS = {"unsupported": 415, "too_large": 413, "too_many_pixels": 413, "empty": 400, "corrupt": 400, "missing": 400, "fetch": 400}


class TagOut(BaseModel):
    value: str
    confidence: float = Field(description="0..1; tags below the tagger's threshold are left out")
    source: str = Field(description="Evidence: image, colour, text (fused as image+colour+text...), rule or zero-shot")

    model_config = {"extra": "allow"}


class HitOut(BaseModel):
    id: str
    score: float = Field(description="Cosine similarity to the query, -1..1")
    metadata: dict[str, Any]
    tags: dict[str, TagOut] = Field(default_factory=dict, description="Predicted tags, kept apart from the shop's metadata")
    thumbnail_url: str


class SearchOut(BaseModel):
    results: list[HitOut]
    took_ms: float


class ProductOut(BaseModel):
    id: str
    image: Optional[str]
    metadata: dict[str, Any]
    tags: dict[str, TagOut] = Field(default_factory=dict, description="Predicted tags, kept apart from the shop's metadata")
    updated_at: float
    thumbnail_url: str


class TagsOut(BaseModel):
    tags: dict[str, TagOut]
    tagger: Optional[str] = Field(description="The tagger set used; null when untrained (rules and zero-shot only)")
    took_ms: float


class ReindexIn(BaseModel):
    model: str = Field(description="Trained model name (GET /models), model folder, or pretrained encoder name")


class IngestIn(BaseModel):
    source: str = Field(description="Catalogue path on the server: .csv, .tsv, .jsonl, .parquet or a folder")
    id_column: Optional[str] = None
    image_column: Optional[str] = None
    prune: bool = False


def _thumb_url(product_id: str) -> str:
    return f"/products/{quote(product_id, safe='')}/thumbnail"


def _hits(hits: list[Hit], started: float) -> SearchOut:
    return SearchOut(
        results=[HitOut(id=h.id, score=h.score, metadata=h.metadata, tags=h.tags, thumbnail_url=_thumb_url(h.id)) for h in hits],
        took_ms=round((time.perf_counter() - started) * 1000, 2),
    )


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message, "error": kind})


# Errors the engine raises for bad requests, and how the API reports them.
_ERROR_STATUS = {
    TaggerError: (409, "tagger"),
    FilterError: (422, "bad_filter"),
    NotFoundError: (404, "not_found"),
    BusyError: (409, "busy"),
    EncoderError: (404, "unknown_model"),
    StoreError: (409, "store"),
    CatalogueError: (400, "bad_catalogue"),
    ValueError: (422, "bad_request"),
}


def _handler(status: int, kind: str):
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        return _error(status, kind, str(exc))

    return handle


async def read_upload(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ImageError("too_large", f"upload {upload.filename or ''!r} is larger than the limit of {limit} bytes")
    return data


def create_app(engine: Engine) -> FastAPI:
    reindex_state: dict[str, Any] = {"running": False, "model": None, "done": 0, "total": None, "outcome": None, "error": None}
    """The API for one opened engine (the caller owns and closes it)."""
    app = FastAPI(title="lookalike", version=__version__, description="Visual search for fashion catalogues.")
    app.state.engine = engine
    limit = engine.settings.max_image_bytes

    @app.middleware("http")
    async def refuse_huge_bodies(request: Request, call_next):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + 1024 * 1024:
            return _error(413, "too_large", f"request body is {declared} bytes; images are limited to {limit} bytes")
        return await call_next(request)

    @app.exception_handler(ImageError)
    async def image_error(_: Request, exc: ImageError):
        return _error(IMAGE_STATUS.get(exc.kind, 400), exc.kind, exc.message)

    for error_type, (status, kind) in _ERROR_STATUS.items():
        app.add_exception_handler(error_type, _handler(status, kind))

    @app.get("/health", tags=["service"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "products": len(engine), "version": __version__}

    @app.get("/stats", tags=["service"])
    def stats() -> dict[str, Any]:
        return engine.stats()

    @app.post("/search", response_model=SearchOut, tags=["search"], summary="Search by uploaded photo")
    async def search(
        image: UploadFile = File(..., description="JPEG, PNG, WebP, GIF, BMP or TIFF"),
        k: int = Query(10, ge=1, le=1000),
        where: list[str] = Query([], description='Filters, repeatable: "article_type=Shirts", "price<50"'),
    ) -> SearchOut:
        started = time.perf_counter()
        data = await read_upload(image, limit)
        hits = await run_in_threadpool(engine.search, data, k, where)
        return _hits(hits, started)

    @app.post("/tag", response_model=TagsOut, tags=["tagging"], summary="Tag an uploaded photo (nothing is stored)")
    async def tag(
        image: UploadFile = File(..., description="JPEG, PNG, WebP, GIF, BMP or TIFF"),
        text: str = Form("", description="Optional title or description; text evidence is combined with the image"),
        threshold: Optional[float] = Query(None, ge=0.0, le=1.0, description="Override the tagger's confidence threshold"),
    ) -> TagsOut:
        started = time.perf_counter()
        data = await read_upload(image, limit)
        tags = await run_in_threadpool(engine.tag_image, data, text, threshold)
        taggers = engine.taggers
        return TagsOut(tags=tags, tagger=None if taggers is None else taggers.name, took_ms=round((time.perf_counter() - started) * 1000, 2))

    @app.get("/taggers", tags=["tagging"], summary="The current tagger set and its held-out scores")
    def taggers_info() -> Any:
        taggers = engine.taggers
        if taggers is None:
            return _error(404, "no_taggers", "no trained taggers in this store; run `lookalike tag train`")
        columns = {name: {k: v for k, v in col.items() if k != "review"} for name, col in taggers.report.get("columns", {}).items()}
        return {**taggers.summary(), "columns_report": columns}

    @app.get("/tags/review", tags=["tagging"], summary="Products whose label the taggers confidently disagree with")
    def tags_review(column: Optional[str] = Query(None), limit_: int = Query(100, ge=1, le=100_000, alias="limit")) -> Any:
        taggers = engine.taggers
        if taggers is None:
            return _error(404, "no_taggers", "no trained taggers in this store; run `lookalike tag train`")
        rows = taggers.review(column)
        return {"total": len(rows), "items": rows[:limit_]}

    @app.get("/products/{product_id:path}/similar", response_model=SearchOut, tags=["search"], summary="Products similar to a product")
    def similar(product_id: str = Path(...), k: int = Query(10, ge=1, le=1000), where: list[str] = Query([])) -> SearchOut:
        started = time.perf_counter()
        return _hits(engine.similar(product_id, k=k, where=where), started)

    def product_out(product_id: str) -> ProductOut:
        p = engine.get(product_id)
        return ProductOut(id=p.id, image=p.image, metadata=p.metadata, tags=p.tags, updated_at=p.updated_at, thumbnail_url=_thumb_url(p.id))

    @app.get("/products", tags=["products"], summary="Page through the catalogue")
    def products(offset: int = Query(0, ge=0), limit_: int = Query(50, ge=1, le=500, alias="limit")) -> dict[str, Any]:
        page = engine.store.page(offset, limit_)
        return {"total": engine.store.count(), "offset": offset,
                "products": [{"id": p.id, "metadata": p.metadata, "thumbnail_url": _thumb_url(p.id)} for p in page]}

    @app.get("/products/{product_id:path}/thumbnail", tags=["products"], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(product_id: str) -> Response:
        return Response(engine.thumbnail(product_id), media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/products/{product_id:path}", response_model=ProductOut, tags=["products"])
    def get_product(product_id: str) -> ProductOut:
        return product_out(product_id)

    @app.put("/products/{product_id:path}", response_model=ProductOut, tags=["products"], summary="Insert or update one product")
    async def put_product(
        product_id: str,
        image: Optional[UploadFile] = File(None, description="New image (required for a new product unless image_url is given)"),
        image_url: Optional[str] = Form(None, description="http(s) URL to fetch the image from"),
        metadata: Optional[str] = Form(None, description='JSON object, e.g. {"title": "Red dress", "price": 49.9}; omitted keeps the stored metadata'),
    ) -> ProductOut:
        parsed = None
        if metadata is not None:
            try:
                parsed = json.loads(metadata)
            except json.JSONDecodeError as exc:
                raise ValueError(f"metadata is not valid JSON: {exc.msg} at column {exc.colno}") from exc
            if not isinstance(parsed, dict):
                raise ValueError("metadata must be a JSON object")
        source: bytes | str | None = None
        if image is not None and (image.filename or image.size):
            source = await read_upload(image, limit)
        elif image_url:
            if not is_url(image_url):
                raise ValueError("image_url must be an http(s) URL")
            source = image_url
        await run_in_threadpool(engine.upsert, product_id, source, parsed)
        return product_out(product_id)

    @app.delete("/products/{product_id:path}", tags=["products"])
    def delete_product(product_id: str) -> dict[str, str]:
        engine.delete(product_id)
        return {"deleted": product_id}

    @app.post("/ingest", status_code=202, tags=["ingest"], summary="Start ingesting a catalogue file on the server")
    def start_ingest(body: IngestIn) -> dict[str, Any]:
        from .catalogue import read_catalogue

        read_catalogue(body.source, body.id_column, body.image_column)  # fail fast on a bad path or column
        if engine._ingest_lock.locked():
            raise BusyError("an ingest is already running on this store")
        thread = threading.Thread(
            target=_background_ingest, args=(engine, body), name="lookalike-ingest", daemon=True
        )
        thread.start()
        return {"started": True, "status_url": "/ingest/status"}

    @app.get("/models", tags=["models"], summary="Trained models in the store, with their held-out scores")
    def models() -> dict[str, Any]:
        from .training import list_models

        return {"serving": engine.encoder.identity, "models": list_models(engine.directory)}

    @app.post("/reindex", status_code=202, tags=["models"], summary="Re-embed with another model, then switch atomically")
    def start_reindex(body: ReindexIn) -> dict[str, Any]:
        """Search keeps answering from the current index until the new one is complete."""
        from .encoders import get_encoder

        get_encoder(body.model, engine.settings.replace(store=str(engine.directory)))  # unknown model: 404 now, not later
        if engine._ingest_lock.locked():
            raise BusyError("an ingest or re-index is already running on this store")
        reindex_state.update(running=True, model=body.model, done=0, total=None, outcome=None, error=None)
        threading.Thread(target=_background_reindex, args=(engine, body.model, reindex_state), name="lookalike-reindex", daemon=True).start()
        return {"started": True, "status_url": "/reindex/status"}

    @app.get("/reindex/status", tags=["models"])
    def reindex_status() -> dict[str, Any]:
        return {**reindex_state, "serving": engine.encoder.identity}

    @app.get("/ingest/status", tags=["ingest"])
    def ingest_status() -> dict[str, Any]:
        return engine.ingest_status()

    @app.get("/ingest/skipped", tags=["ingest"], summary="Items skipped by an ingest run and why")
    def ingest_skipped(run_id: Optional[int] = Query(None), limit_: int = Query(1000, ge=1, le=100_000, alias="limit")) -> dict[str, Any]:
        return {"run_id": run_id, "skipped": engine.store.skipped(run_id, limit_)}

    from .web import mount_web

    mount_web(app, engine)
    return app


def _background_reindex(engine: Engine, model: str, state: dict[str, Any]) -> None:
    def progress(_: str, done: int, total: int) -> None:
        state.update(done=done, total=total)

    try:
        state["outcome"] = engine.reindex(model, progress=progress)
    except Exception as exc:  # reported through /reindex/status; the old index keeps serving
        state["error"] = str(exc)
        logging.getLogger("lookalike.server").exception("re-index with %s failed", model)
    finally:
        state["running"] = False


def _background_ingest(engine: Engine, body: IngestIn) -> None:
    try:
        engine.ingest(body.source, body.id_column, body.image_column, prune=body.prune)
    except Exception:  # the run is recorded as interrupted; the server keeps serving
        logging.getLogger("lookalike.server").exception("background ingest of %s failed", body.source)
