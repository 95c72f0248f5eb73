"""Small HTTP servers on loopback for the URL tests: a file server, a trickler, a redirector."""

from __future__ import annotations

import http.server
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def _handler(files: Path | None, trickle_every: float, redirect_to: str | None) -> type[_Quiet]:
    class Handler(_Quiet):
        def do_GET(self) -> None:
            if redirect_to is not None:
                self.send_response(302)
                self.send_header("Location", redirect_to)
                self.end_headers()
                return
            if trickle_every:
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                try:
                    for _ in range(400):  # at most a few minutes, then stop by itself
                        self.wfile.write(b"\xff")
                        self.wfile.flush()
                        time.sleep(trickle_every)
                except OSError:
                    pass
                return
            assert files is not None
            path = files / self.path.lstrip("/").split("?")[0]
            if not path.is_file():
                self.send_response(404)
                self.end_headers()
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@contextmanager
def http_server(files: Path | None = None, trickle_every: float = 0.0, redirect_to: str | None = None,
                host: str = "127.0.0.1") -> Iterator[str]:
    """Serve on a free loopback port; yields the base URL."""
    httpd = http.server.ThreadingHTTPServer((host, 0), _handler(files, trickle_every, redirect_to))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
