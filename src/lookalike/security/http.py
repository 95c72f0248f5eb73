"""HTTP guards: who may call what (API keys and scopes), which Host names are answered, how large
a request body may grow, which headers every response carries, and a last-resort error answer.

:class:`AccessPolicy` decides; :class:`HttpGuard` is one ASGI middleware doing the rest, so the
checks run before FastAPI parses anything (a 300 MB chunked upload is refused at the first
megabyte past the limit, not after it was spooled to disk).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from .keys import SCOPES, ApiKey, KeyRing

log = logging.getLogger("lookalike.server")
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SESSION_COOKIE = "lookalike_key"
MAX_HEADER_BYTES = 16 * 1024  # a request line and headers beyond this: the connection is cut (uvicorn's h11 parser)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
_PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; object-src 'none'; "
             "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
_DOCS_PATHS = ("/docs", "/redoc")  # FastAPI's docs pages load their viewer from a CDN


class AuthError(PermissionError):
    """No usable key (401) or a key without the needed scope (403)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class AccessPolicy:
    """Who may do what.

    * Keys configured: writes need a key of scope ``write`` (products) or ``admin`` (ingest,
      re-index, tagging and training jobs, run reports); reads need a ``read`` key unless
      ``public_read``.
    * No key configured (allowed only on loopback, see :func:`check_bind`): reads and admin views
      are open and every write is refused with a message saying how to create a key.
    """

    keys: KeyRing
    public_read: bool = False
    _cache: tuple[float, bool] = field(default=(0.0, False), repr=False)

    def keys_configured(self) -> bool:
        """Whether any key is active (re-read at most once a second: revocation applies at once
        to the key itself, this only decides whether anonymous reads are still open)."""
        now = time.monotonic()
        if now - self._cache[0] > 1.0:
            self._cache = (now, self.keys.has_keys())
        return self._cache[1]

    def authorize(self, token: str | None, scope: str, view: bool = False) -> ApiKey | None:
        """The key that authorises ``scope``, None for an allowed anonymous read, or AuthError.
        ``view``: an admin page or report that changes nothing; open like reads while no key
        exists (loopback only), so a local demo can show its admin page."""
        if scope not in SCOPES:
            raise ValueError(scope)
        key = self.keys.verify(token) if token else None
        if token and key is None:
            raise AuthError(401, "the API key is unknown or revoked")
        if key is None and scope == "read" and self.public_read:
            return None
        if key is None and (scope == "read" or view) and not self.keys_configured():
            return None
        if key is None:
            if not self.keys_configured():
                raise AuthError(401, f"this needs an API key with scope {scope!r}, and none is configured: "
                                     f"create one with `lookalike keys create --scope {scope}`")
            raise AuthError(401, f"this needs an API key with scope {scope!r}: send it as 'Authorization: Bearer <key>'")
        if not key.allows(scope):
            raise AuthError(403, f"the API key {key.key_id!r} has scope {key.scope!r}; this needs {scope!r}")
        return key


def check_bind(host: str, policy: AccessPolicy) -> None:
    """Refuse to serve beyond loopback while no key exists: everyone could read the catalogue."""
    if not is_loopback(host) and not policy.keys_configured():
        raise PermissionError(
            f"refusing to listen on {host}: no API key is configured, so anyone who can reach this address could use the server. "
            "Create one first (lookalike keys create --scope admin --name ops), or listen on 127.0.0.1")


def allowed_hosts_for(bind_host: str, configured: list[str]) -> list[str] | None:
    """Host names the server answers to: the configured list, loopback names when bound to
    loopback (a DNS-rebinding page then cannot talk to it), or None (any) elsewhere."""
    if configured:
        return [h.lower() for h in configured]
    return list(LOOPBACK_NAMES) if is_loopback(bind_host) else None


@dataclass
class HttpGuard:
    """The outermost checks of every request; see the module docstring."""

    app: ASGIApp
    allowed_hosts: list[str] | None
    body_limit: int
    large_body_paths: dict[str, int] = field(default_factory=dict)  # path -> its own limit (catalogue uploads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if not self._host_allowed(headers.get("host", "")):
            await _send_json(send, 400, "bad_host", "this server does not answer to that Host name (setting allowed_hosts)")
            return
        limit = self.large_body_paths.get(path, self.body_limit)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _send_json(send, 413, "too_large", f"the request body is {declared} bytes; the limit here is {limit}")
            return
        state = {"started": False, "received": 0, "too_large": False}
        too_large = f"the request body is larger than the limit here of {limit} bytes"

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["too_large"] = True
                    raise _BodyTooLarge(limit)
            return message

        async def secured_send(message: Message) -> None:
            if state["too_large"]:
                # The framework may turn the aborted read into its own 400; the client is told
                # the real reason, and the connection is closed rather than drained.
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await _send_json(send, 413, "too_large", too_large, close=True)
                return
            if message["type"] == "http.response.start":
                state["started"] = True
                message = {**message, "headers": _with_security_headers(message.get("headers", []), path)}
            await send(message)

        try:
            await self.app(scope, limited_receive, secured_send)
        except _BodyTooLarge:
            if not state["started"]:  # and close the connection: the rest of the body is not read
                state["started"] = True
                await _send_json(send, 413, "too_large", too_large, close=True)
        except Exception:  # the last resort: a clean 500, the connection kept, the cause in the log
            incident = secrets.token_hex(4)
            log.exception("internal error %s on %s %s", incident, scope.get("method"), path)
            if not state["started"]:
                await _send_json(send, 500, "internal", f"internal error (logged as {incident})")

    def _host_allowed(self, host_header: str) -> bool:
        if self.allowed_hosts is None:
            return True
        host = host_header.strip().lower()
        if host.startswith("["):
            host = host[: host.find("]") + 1]
        else:
            host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        return bool(host) and (host in self.allowed_hosts or "*" in self.allowed_hosts)


class _BodyTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(limit)
        self.limit = limit


def _with_security_headers(headers: list[tuple[bytes, bytes]], path: str) -> list[tuple[bytes, bytes]]:
    present = {k.lower() for k, _ in headers}
    extra = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
             (b"cross-origin-opener-policy", b"same-origin"), (b"cross-origin-resource-policy", b"same-origin")]
    if not path.startswith(_DOCS_PATHS):
        extra.append((b"content-security-policy", _PAGE_CSP.encode()))
    if b"cache-control" not in present:
        extra.append((b"cache-control", b"no-store"))
    return list(headers) + [(k, v) for k, v in extra if k not in present]


async def _send_json(send: Send, status: int, kind: str, message: str, close: bool = False) -> None:
    body = json.dumps({"detail": message, "error": kind}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers = _with_security_headers(headers + ([(b"connection", b"close")] if close else []), "")
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
