"""The HTTP server."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from threadpoolctl import threadpool_limits

from ...engine import Engine
from ...security.http import MAX_HEADER_BYTES
from ...security.keys import KeyRing
from .common import app, err, guarded, state


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Address to listen on (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default 8000)."),
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""

    def body() -> None:
        import uvicorn

        from ...security.http import AccessPolicy, check_bind
        from ..api import create_app

        settings = state.settings(host=host, port=port)
        keys = KeyRing(Path(settings.store).expanduser())
        policy = AccessPolicy(keys, public_read=settings.public_read)
        check_bind(settings.host, policy)  # before loading anything: beyond loopback only with keys
        engine = Engine.open(settings=settings)
        # Concurrent requests are the server's parallelism: each NumPy product (the garment finder's
        # head, an exact re-rank) runs on one BLAS thread.  Two BLAS threads per request beside ONNX
        # Runtime's pools halved a 1M-product server's photo searches a second (the default search,
        # which glances for a person first: 16 -> 35 requests/s at 8 clients, 1 client p50 59 -> 33 ms).
        threadpool_limits(1, user_api="blas")
        access = ("API keys required for writes" + ("" if settings.public_read else " and reads")) if policy.keys_configured() \
            else "no API keys configured: reads open on loopback, writes refused (lookalike keys create)"
        err.print(f"lookalike serving {engine.stats()['products']} products from {engine.directory} at "
                  f"http://{settings.host}:{settings.port}  (API docs: /docs; {access})", highlight=False)
        # The app closes the engine on shutdown (SIGTERM and Ctrl-C alike): snapshot saved, runs closed.
        app_ = create_app(engine, keys, close_engine=True)
        try:
            # h11 whatever else is installed: it cuts a request whose headers pass 16 KB, where
            # httptools (uvicorn's "auto" choice when present) reads headers without any bound
            # (200 MB of them grew the server by 200 MB).  uvloop, the "auto" loop when present,
            # measured within noise of asyncio here (1M products, 8 clients: better in 2 of 5
            # alternating pairs at k=20, 8 of 10 at k=10), so it is not a dependency.
            uvicorn.run(app_, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=10,
                        http="h11", h11_max_incomplete_event_size=MAX_HEADER_BYTES)
        finally:
            engine.close()  # idempotent; covers a failure before the app started

    guarded(body)


