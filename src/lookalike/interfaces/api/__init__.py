"""The HTTP API (FastAPI). OpenAPI schema at /openapi.json, interactive docs at /docs.

One router per resource (:mod:`.routes`), one error mapping shared with the web pages
(:mod:`.errors`), one set of scope dependencies (:mod:`.access`).  The guard middleware
(:mod:`lookalike.security.http`) checks the Host header and body sizes and adds security
headers before FastAPI sees the request.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from ... import __version__
from ...config import split_list
from ...engine import Engine
from ...security.http import AccessPolicy, HttpGuard, allowed_hosts_for
from ...security.keys import KeyRing
from ...security.paths import PathPolicy
from ..errors import ERROR_RESPONSES, install_error_handlers
from ..web import mount_web
from .access import Scopes
from .context import ApiContext
from .routes import duplicates, exports, ingest, judging, models, products, search, service, tagging


def create_app(engine: Engine, keys: KeyRing | None = None, close_engine: bool = False) -> FastAPI:
    """The API and web pages for one opened engine.  ``close_engine``: close it when the server
    shuts down (uvicorn re-raises SIGTERM after a graceful shutdown, so code after ``uvicorn.run``
    may never run)."""
    settings = engine.settings
    policy = AccessPolicy(keys or KeyRing(engine.directory), public_read=settings.public_read)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if close_engine:
            await run_in_threadpool(engine.close)

    app = FastAPI(title="lookalike", version=__version__, description="Visual search for fashion catalogues. "
                  "Send API keys as `Authorization: Bearer <key>`.", responses=ERROR_RESPONSES, lifespan=lifespan)  # type: ignore[arg-type]
    app.state.engine, app.state.policy = engine, policy
    install_error_handlers(app)
    app.add_middleware(HttpGuard, allowed_hosts=allowed_hosts_for(settings.host, split_list(settings.allowed_hosts)),  # type: ignore[arg-type]
                       body_limit=settings.max_image_bytes + 1024 * 1024,
                       large_body_paths={"/ingest/upload": settings.max_catalogue_bytes + 1024 * 1024})
    ctx = ApiContext(engine, settings, Scopes.of(policy), PathPolicy.confined(split_list(settings.ingest_roots)))
    for module in (service, search, tagging, products, ingest, models, exports, duplicates, judging):  # order matters: /products/{id}/similar before /products/{id}
        app.include_router(module.router(ctx))
    mount_web(app, engine, policy)
    return app


__all__ = ["create_app"]
