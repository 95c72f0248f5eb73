"""Ingest: from a server folder inside the ingest roots, or an uploaded catalogue; status and skip lists."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, UploadFile

from ....ingest.catalogue import detect_format, read_catalogue
from ....security.keys import ApiKey
from ....security.paths import PathPolicy
from ..access import check_prune, requires
from ..context import ApiContext
from ..schemas import MAX_RUN_ID, IngestIn

CATALOGUE_SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".ndjson", ".json", ".parquet", ".pq")


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["ingest"])
    engine, settings = ctx.engine, ctx.settings
    writer = requires(ctx.scopes.policy, "write")

    def start(source: str, body: IngestIn, paths: PathPolicy, label: str | None, cleanup: Path | None = None) -> dict[str, Any]:
        def run() -> None:
            engine.ingest(source, body.id_column, body.image_column, prune=body.prune, force_prune=body.force_prune, paths=paths, label=label)

        return engine.jobs.start("ingest", run, cleanup=None if cleanup is None else (lambda: cleanup.unlink(missing_ok=True)))

    @api.post("/ingest", status_code=202, summary="Ingest a catalogue from a server folder listed in ingest_roots")
    def start_ingest(body: IngestIn, key: Optional[ApiKey] = Depends(writer)) -> dict[str, Any]:
        check_prune(key, body.prune)
        read_catalogue(body.source, body.id_column, body.image_column, limits=settings.metadata_limits(), paths=ctx.ingest_roots)  # fail fast
        return start(body.source, body, ctx.ingest_roots, label=None)

    @api.post("/ingest/upload", status_code=202, summary="Upload a catalogue file (CSV/TSV/JSONL/Parquet) and ingest it")
    async def upload_ingest(
        catalogue: UploadFile = File(..., description="The catalogue; its images must be public http(s) URLs (or paths inside ingest_roots)"),
        id_column: Optional[str] = Form(None, max_length=200),
        image_column: Optional[str] = Form(None, max_length=200),
        prune: bool = Form(False),
        force_prune: bool = Form(False),
        key: Optional[ApiKey] = Depends(writer),
    ) -> dict[str, Any]:
        check_prune(key, prune)
        name = Path(catalogue.filename or "catalogue.csv").name[-100:]
        suffix = Path(name).suffix.lower()
        if suffix not in CATALOGUE_SUFFIXES:
            raise ValueError(f"catalogue {name!r}: use .csv, .tsv, .jsonl or .parquet")
        path = await save_upload(catalogue, engine.directory / "uploads", suffix, settings.max_catalogue_bytes)
        body = IngestIn(source=str(path), id_column=id_column, image_column=image_column, prune=prune, force_prune=force_prune)
        try:
            read_catalogue(path, id_column, image_column, limits=settings.metadata_limits(), paths=PathPolicy.confined([str(path.parent)]))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        # An uploaded file may name images by URL, or by paths inside the ingest roots (none by default).
        paths = PathPolicy(tuple(ctx.ingest_roots.roots or ()) + (path.resolve(),))
        return start(str(path), body, paths, label=f"upload:{name}", cleanup=path)

    @api.get("/ingest/status", dependencies=[ctx.scopes.admin_view])
    def ingest_status() -> dict[str, Any]:
        return engine.ingest_status()

    @api.get("/ingest/skipped", summary="Items skipped by an ingest run and why", dependencies=[ctx.scopes.admin_view])
    def ingest_skipped(run_id: Optional[int] = Query(None, ge=1, le=MAX_RUN_ID),
                       limit_: int = Query(1000, ge=1, le=100_000, alias="limit")) -> dict[str, Any]:
        return {"run_id": run_id, "skipped": engine.store.skipped(run_id, limit_)}

    return api


async def save_upload(upload: UploadFile, directory: Path, suffix: str, limit: int) -> Path:
    """Stream an uploaded catalogue to a private file in the store, refusing it past ``limit`` bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=directory, suffix=suffix, delete=False)  # noqa: SIM115 - closed below, kept on success
    path = Path(handle.name)
    written = 0
    try:
        with handle:
            while chunk := await upload.read(1024 * 1024):
                written += len(chunk)
                if written > limit:
                    raise HTTPException(413, f"the catalogue is larger than the limit of {limit} bytes (max_catalogue_bytes)")
                handle.write(chunk)
        detect_format(path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
