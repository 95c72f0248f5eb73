"""Models: what the store has and serves, and re-indexing with another one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ....models import get_encoder, list_models
from ..context import ApiContext
from ..schemas import ReindexIn


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["models"])
    engine = ctx.engine

    @api.get("/models", summary="Trained models in the store, with their held-out scores", dependencies=[ctx.scopes.read])
    def models() -> dict[str, Any]:
        return {"serving": engine.encoder.identity, "models": list_models(engine.directory)}

    @api.post("/reindex", status_code=202, summary="Re-embed with another model, then switch atomically", dependencies=[ctx.scopes.admin])
    def start_reindex(body: ReindexIn) -> dict[str, Any]:
        """Search keeps answering from the current index until the new one is complete."""
        # Names only (models in the store, pretrained encoders): a remote client names no server folders.
        get_encoder(body.model, engine.settings, allow_paths=False)  # unknown: 404 now, not later
        return engine.jobs.start("reindex", lambda: engine.reindex(body.model, allow_paths=False), label=body.model)

    @api.get("/reindex/status", dependencies=[ctx.scopes.admin_view])
    def reindex_status() -> dict[str, Any]:
        job = engine.jobs.latest.get("reindex")
        state = {"running": False, "model": None, "done": 0, "total": None, "outcome": None, "error": None} if job is None else \
            {"running": job.running, "model": job.label, "done": job.done, "total": job.total, "outcome": job.outcome, "error": job.error}
        return {**state, "serving": engine.encoder.identity}

    return api
