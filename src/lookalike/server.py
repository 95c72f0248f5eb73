"""The HTTP API (FastAPI). OpenAPI schema at /openapi.json, interactive docs at /docs.

Errors are JSON ``{"detail": message, "error": kind}`` with the status a client can act on
(see :mod:`lookalike.api_errors`).  Every route names the scope it needs; the guard middleware
(:mod:`lookalike.security.http`) checks the Host header and body sizes and adds security
headers before FastAPI sees the request.
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import asynccontextmanager
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional
from urllib.parse import quote

from fastapi import Depends, FastAPI, File, Form, HTTPException, Path as PathParam, Query, Request, UploadFile
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from . import __version__
from .api_errors import ERROR_RESPONSES, error_response, install_error_handlers, parse_metadata_field, read_upload
from .catalogue import detect_format, read_catalogue
from .config import split_list
from .engine import BusyError, Engine
from .images import is_url
from .search import Hit
from .security.http import SESSION_COOKIE, AccessPolicy, AuthError, HttpGuard, allowed_hosts_for
from .security.keys import ApiKey, KeyRing
from .security.paths import PathPolicy
from .validation import validate_id

log = logging.getLogger("lookalike.server")
MAX_OFFSET = 10**9
MAX_RUN_ID = 2**62
CATALOGUE_SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".ndjson", ".json", ".parquet", ".pq")


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
    model: str = Field(max_length=200, description="Trained model name (GET /models) or pretrained encoder name")


class IngestIn(BaseModel):
    source: str = Field(max_length=4096, description="Catalogue path on the server, inside one of the ingest_roots: "
                                                     ".csv, .tsv, .jsonl, .parquet or a folder")
    id_column: Optional[str] = Field(None, max_length=200)
    image_column: Optional[str] = Field(None, max_length=200)
    prune: bool = Field(False, description="Delete products the catalogue no longer lists (needs an admin key)")
    force_prune: bool = Field(False, description="Prune even beyond max_prune_fraction of the catalogue")


def _thumb_url(product_id: str) -> str:
    return f"/products/{quote(product_id, safe='')}/thumbnail"


def _hits(hits: list[Hit], started: float) -> SearchOut:
    return SearchOut(
        results=[HitOut(id=h.id, score=h.score, metadata=h.metadata, tags=h.tags, thumbnail_url=_thumb_url(h.id)) for h in hits],
        took_ms=round((time.perf_counter() - started) * 1000, 2),
    )


def create_app(engine: Engine, keys: KeyRing | None = None, close_engine: bool = False) -> FastAPI:
    """The API for one opened engine.  ``close_engine``: close it when the server shuts down
    (uvicorn re-raises SIGTERM after a graceful shutdown, so code after ``uvicorn.run`` may never run)."""
    settings = engine.settings
    policy = AccessPolicy(keys or KeyRing(engine.directory), public_read=settings.public_read)
    roots = PathPolicy.confined(split_list(settings.ingest_roots))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if close_engine:
            await run_in_threadpool(engine.close)

    app = FastAPI(title="lookalike", version=__version__, description="Visual search for fashion catalogues. "
                  "Send API keys as `Authorization: Bearer <key>`.", responses=ERROR_RESPONSES, lifespan=lifespan)
    app.state.engine, app.state.policy = engine, policy
    limit = settings.max_image_bytes
    install_error_handlers(app)
    app.add_middleware(HttpGuard, allowed_hosts=allowed_hosts_for(settings.host, split_list(settings.allowed_hosts)),
                       body_limit=limit + 1024 * 1024, large_body_paths={"/ingest/upload": settings.max_catalogue_bytes + 1024 * 1024})
    jobs = _Jobs(engine)
    read, write, admin = (_requires(policy, scope) for scope in ("read", "write", "admin"))
    admin_view = _requires(policy, "admin", view=True)  # reports and status: change nothing

    @app.get("/health", tags=["service"], summary="Liveness (no key needed)")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "products": await run_in_threadpool(len, engine), "version": __version__}

    @app.get("/stats", tags=["service"], dependencies=[Depends(admin_view)])
    def stats() -> dict[str, Any]:
        return engine.stats()

    @app.post("/search", response_model=SearchOut, tags=["search"], summary="Search by uploaded photo", dependencies=[Depends(read)])
    async def search(
        image: UploadFile = File(..., description="JPEG, PNG, WebP, GIF, BMP or TIFF"),
        k: int = Query(10, ge=1, le=1000),
        where: list[str] = Query([], max_length=50, description='Filters, repeatable: "article_type=Shirts", "price<50"'),
    ) -> SearchOut:
        started = time.perf_counter()
        data = await read_upload(image, limit)
        hits = await run_in_threadpool(engine.search, data, k, where)
        return _hits(hits, started)

    @app.post("/tag", response_model=TagsOut, tags=["tagging"], summary="Tag an uploaded photo (nothing is stored)", dependencies=[Depends(read)])
    async def tag(
        image: UploadFile = File(..., description="JPEG, PNG, WebP, GIF, BMP or TIFF"),
        text: str = Form("", max_length=10_000, description="Optional title or description; text evidence is combined with the image"),
        threshold: Optional[float] = Query(None, ge=0.0, le=1.0, description="Override the tagger's confidence threshold"),
    ) -> TagsOut:
        started = time.perf_counter()
        data = await read_upload(image, limit)
        tags = await run_in_threadpool(engine.tag_image, data, text, threshold)
        taggers = engine.taggers
        return TagsOut(tags=tags, tagger=None if taggers is None else taggers.name, took_ms=round((time.perf_counter() - started) * 1000, 2))

    @app.get("/taggers", tags=["tagging"], summary="The current tagger set and its held-out scores", dependencies=[Depends(read)])
    def taggers_info() -> Any:
        taggers = engine.taggers
        if taggers is None:
            return error_response(404, "no_taggers", "no trained taggers in this store; run `lookalike tag train`")
        columns = {name: {k: v for k, v in col.items() if k != "review"} for name, col in taggers.report.get("columns", {}).items()}
        return {**taggers.summary(), "columns_report": columns}

    @app.get("/tags/review", tags=["tagging"], summary="Products whose label the taggers confidently disagree with", dependencies=[Depends(admin_view)])
    def tags_review(column: Optional[str] = Query(None, max_length=200), limit_: int = Query(100, ge=1, le=100_000, alias="limit")) -> Any:
        taggers = engine.taggers
        if taggers is None:
            return error_response(404, "no_taggers", "no trained taggers in this store; run `lookalike tag train`")
        rows = taggers.review(column)
        return {"total": len(rows), "items": rows[:limit_]}

    @app.get("/products/{product_id:path}/similar", response_model=SearchOut, tags=["search"], summary="Products similar to a product",
             dependencies=[Depends(read)])
    def similar(product_id: str = PathParam(..., max_length=500), k: int = Query(10, ge=1, le=1000),
                where: list[str] = Query([], max_length=50)) -> SearchOut:
        started = time.perf_counter()
        return _hits(engine.similar(product_id, k=k, where=where), started)

    def product_out(product_id: str) -> ProductOut:
        p = engine.get(product_id)
        return ProductOut(id=p.id, image=p.image, metadata=p.metadata, tags=p.tags, updated_at=p.updated_at, thumbnail_url=_thumb_url(p.id))

    @app.get("/products", tags=["products"], summary="Page through the catalogue", dependencies=[Depends(read)])
    def products(offset: int = Query(0, ge=0, le=MAX_OFFSET), limit_: int = Query(50, ge=1, le=500, alias="limit")) -> dict[str, Any]:
        page = engine.store.page(offset, limit_)
        return {"total": engine.store.count(), "offset": offset,
                "products": [{"id": p.id, "metadata": p.metadata, "thumbnail_url": _thumb_url(p.id)} for p in page]}

    @app.get("/products/{product_id:path}/thumbnail", tags=["products"], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}}, dependencies=[Depends(read)])
    def thumbnail(product_id: str = PathParam(..., max_length=500)) -> Response:
        cache = "public, max-age=3600" if settings.public_read or not policy.keys_configured() else "private, max-age=3600"
        return Response(engine.thumbnail(product_id), media_type="image/jpeg", headers={"Cache-Control": cache})

    @app.get("/products/{product_id:path}", response_model=ProductOut, tags=["products"], dependencies=[Depends(read)])
    def get_product(product_id: str = PathParam(..., max_length=500)) -> ProductOut:
        return product_out(product_id)

    @app.put("/products/{product_id:path}", response_model=ProductOut, tags=["products"], summary="Insert or update one product",
             dependencies=[Depends(write)])
    async def put_product(
        product_id: str = PathParam(..., max_length=500),
        image: Optional[UploadFile] = File(None, description="New image (required for a new product unless image_url is given)"),
        image_url: Optional[str] = Form(None, max_length=4096, description="Public http(s) URL to fetch the image from"),
        metadata: Optional[str] = Form(None, max_length=settings.max_metadata_bytes * 2,
                                       description='JSON object of scalars, e.g. {"title": "Red dress", "price": 49.9}; omitted keeps the stored metadata'),
    ) -> ProductOut:
        product_id = validate_id(product_id)  # before reading the upload: a bad id is a 422 at once
        parsed = parse_metadata_field(metadata)
        source: bytes | str | None = None
        if image is not None and (image.filename or image.size):
            source = await read_upload(image, limit)
        elif image_url:
            if not is_url(image_url):
                raise ValueError("image_url must be an http(s) URL")
            source = image_url
        await run_in_threadpool(engine.upsert, product_id, source, parsed)
        return product_out(product_id)

    @app.delete("/products/{product_id:path}", tags=["products"], dependencies=[Depends(write)])
    def delete_product(product_id: str = PathParam(..., max_length=500)) -> dict[str, str]:
        engine.delete(product_id)
        return {"deleted": product_id}

    @app.post("/ingest", status_code=202, tags=["ingest"], summary="Ingest a catalogue from a server folder listed in ingest_roots")
    def start_ingest(body: IngestIn, key: ApiKey | None = Depends(write)) -> dict[str, Any]:
        _check_prune(policy, key, body.prune)
        read_catalogue(body.source, body.id_column, body.image_column, limits=settings.metadata_limits(), paths=roots)  # fail fast
        return jobs.start_ingest(body.source, body, roots, label=None)

    @app.post("/ingest/upload", status_code=202, tags=["ingest"], summary="Upload a catalogue file (CSV/TSV/JSONL/Parquet) and ingest it")
    async def upload_ingest(
        catalogue: UploadFile = File(..., description="The catalogue; its images must be public http(s) URLs (or paths inside ingest_roots)"),
        id_column: Optional[str] = Form(None, max_length=200),
        image_column: Optional[str] = Form(None, max_length=200),
        prune: bool = Form(False),
        force_prune: bool = Form(False),
        key: ApiKey | None = Depends(write),
    ) -> dict[str, Any]:
        _check_prune(policy, key, prune)
        name = Path(catalogue.filename or "catalogue.csv").name[-100:]
        suffix = Path(name).suffix.lower()
        if suffix not in CATALOGUE_SUFFIXES:
            raise ValueError(f"catalogue {name!r}: use .csv, .tsv, .jsonl or .parquet")
        path = await _save_upload(catalogue, engine.directory / "uploads", suffix, settings.max_catalogue_bytes)
        body = IngestIn(source=str(path), id_column=id_column, image_column=image_column, prune=prune, force_prune=force_prune)
        try:
            read_catalogue(path, id_column, image_column, limits=settings.metadata_limits(), paths=PathPolicy.confined([str(path.parent)]))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return jobs.start_ingest(str(path), body, roots, label=f"upload:{name}", cleanup=path)

    @app.get("/models", tags=["models"], summary="Trained models in the store, with their held-out scores", dependencies=[Depends(read)])
    def models() -> dict[str, Any]:
        from .training import list_models

        return {"serving": engine.encoder.identity, "models": list_models(engine.directory)}

    @app.post("/reindex", status_code=202, tags=["models"], summary="Re-embed with another model, then switch atomically",
              dependencies=[Depends(admin)])
    def start_reindex(body: ReindexIn) -> dict[str, Any]:
        """Search keeps answering from the current index until the new one is complete."""
        return jobs.start_reindex(body.model)

    @app.get("/reindex/status", tags=["models"], dependencies=[Depends(admin_view)])
    def reindex_status() -> dict[str, Any]:
        return {**jobs.reindex_state, "serving": engine.encoder.identity}

    @app.get("/ingest/status", tags=["ingest"], dependencies=[Depends(admin_view)])
    def ingest_status() -> dict[str, Any]:
        return engine.ingest_status()

    @app.get("/ingest/skipped", tags=["ingest"], summary="Items skipped by an ingest run and why", dependencies=[Depends(admin_view)])
    def ingest_skipped(run_id: Optional[int] = Query(None, ge=1, le=MAX_RUN_ID),
                       limit_: int = Query(1000, ge=1, le=100_000, alias="limit")) -> dict[str, Any]:
        return {"run_id": run_id, "skipped": engine.store.skipped(run_id, limit_)}

    from .web import mount_web

    mount_web(app, engine, policy)
    return app


_bearer = HTTPBearer(auto_error=False, description="An API key from `lookalike keys create`")


def request_token(request: Request, credentials: HTTPAuthorizationCredentials | None, scope: str) -> str | None:
    """The key a request carries: the Authorization header, else the web session cookie for
    reads and page views (never for writes: a cookie rides along on cross-site requests)."""
    if credentials is not None:
        return credentials.credentials
    if scope == "read" or request.method in ("GET", "HEAD"):
        return request.cookies.get(SESSION_COOKIE)
    return None


def _requires(policy: AccessPolicy, scope: str, view: bool = False) -> Callable[..., ApiKey | None]:
    def dependency(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> ApiKey | None:
        return policy.authorize(request_token(request, credentials, scope), scope, view)

    dependency.__name__ = f"requires_{scope}"
    return dependency


def _check_prune(policy: AccessPolicy, key: ApiKey | None, prune: bool) -> None:
    """Pruning deletes products in bulk: it takes an admin key."""
    if prune:
        if key is None or not key.allows("admin"):
            raise AuthError(403, "prune deletes products in bulk and needs an API key with scope 'admin'")


async def _save_upload(upload: UploadFile, directory: Path, suffix: str, limit: int) -> Path:
    """Stream an uploaded catalogue to a private file in the store, refusing it past ``limit`` bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=directory, suffix=suffix, delete=False)
    path = Path(handle.name)
    written = 0
    try:
        with handle:
            while chunk := await upload.read(1024 * 1024):
                written += len(chunk)
                if written > limit:
                    raise HTTPException(413, f"the catalogue is larger than the limit of {limit} bytes (max_catalogue_bytes)")
                handle.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    try:
        detect_format(path)
    except Exception:
        path.unlink(missing_ok=True)
        raise
    return path


class _Jobs:
    """Background ingest and re-index runs of one server (one at a time per store)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.reindex_state: dict[str, Any] = {"running": False, "model": None, "done": 0, "total": None, "outcome": None, "error": None}

    def start_ingest(self, source: str, body: IngestIn, roots: PathPolicy, label: str | None, cleanup: Path | None = None) -> dict[str, Any]:
        if self.engine.ingest_running():
            if cleanup is not None:
                cleanup.unlink(missing_ok=True)
            raise BusyError("an ingest is already running on this store")
        threading.Thread(target=self._ingest, args=(source, body, roots, label, cleanup), name="lookalike-ingest", daemon=True).start()
        return {"started": True, "status_url": "/ingest/status"}

    def _ingest(self, source: str, body: IngestIn, roots: PathPolicy, label: str | None, cleanup: Path | None) -> None:
        # An uploaded file may name images by URL only, or by paths inside the ingest roots.
        try:
            self.engine.ingest(source, body.id_column, body.image_column, prune=body.prune, force_prune=body.force_prune,
                               paths=roots if cleanup is None else _upload_paths(roots, cleanup), label=label)
        except Exception:  # the run is recorded as interrupted; the server keeps serving
            log.exception("background ingest of %s failed", label or source)
        finally:
            if cleanup is not None:
                cleanup.unlink(missing_ok=True)

    def start_reindex(self, model: str) -> dict[str, Any]:
        from .encoders import get_encoder

        engine = self.engine
        # Names only (models in the store, pretrained encoders): a remote client names no server folders.
        get_encoder(model, engine.settings.replace(store=str(engine.directory)), allow_paths=False)  # unknown: 404 now, not later
        if engine.ingest_running():
            raise BusyError("an ingest or re-index is already running on this store")
        self.reindex_state.update(running=True, model=model, done=0, total=None, outcome=None, error=None)
        threading.Thread(target=self._reindex, args=(model,), name="lookalike-reindex", daemon=True).start()
        return {"started": True, "status_url": "/reindex/status"}

    def _reindex(self, model: str) -> None:
        state = self.reindex_state

        def progress(_: str, done: int, total: int) -> None:
            state.update(done=done, total=total)

        try:
            state["outcome"] = self.engine.reindex(model, progress=progress, allow_paths=False)
        except Exception as exc:  # reported through /reindex/status; the old index keeps serving
            state["error"] = str(exc)
            log.exception("re-index with %s failed", model)
        finally:
            state["running"] = False


def _upload_paths(roots: PathPolicy, upload: Path) -> PathPolicy:
    """An uploaded catalogue reads itself, plus images inside the ingest roots (none by default)."""
    return PathPolicy(tuple(roots.roots or ()) + (upload.resolve(),))
