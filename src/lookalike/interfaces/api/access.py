"""Who may call a route: FastAPI dependencies over the access policy (:mod:`lookalike.security.http`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ...security.http import SESSION_COOKIE, AccessPolicy, AuthError
from ...security.keys import ApiKey

_bearer = HTTPBearer(auto_error=False, description="An API key from `lookalike keys create`")


def request_token(request: Request, credentials: HTTPAuthorizationCredentials | None, scope: str) -> str | None:
    """The key a request carries: the Authorization header, else the web session cookie for
    reads and page views (never for writes: a cookie rides along on cross-site requests)."""
    if credentials is not None:
        return credentials.credentials
    if scope == "read" or request.method in ("GET", "HEAD"):
        return request.cookies.get(SESSION_COOKIE)
    return None


def requires(policy: AccessPolicy, scope: str, view: bool = False) -> Callable[..., ApiKey | None]:
    def dependency(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> ApiKey | None:
        return policy.authorize(request_token(request, credentials, scope), scope, view)

    dependency.__name__ = f"requires_{scope}"
    return dependency


@dataclass(frozen=True)
class Scopes:
    """The dependencies routes declare: ``read``, ``write``, ``admin``, and ``admin_view`` for
    reports and status pages that change nothing."""

    policy: AccessPolicy
    read: Any
    write: Any
    admin: Any
    admin_view: Any

    @classmethod
    def of(cls, policy: AccessPolicy) -> Scopes:
        return cls(policy, Depends(requires(policy, "read")), Depends(requires(policy, "write")), Depends(requires(policy, "admin")),
                   Depends(requires(policy, "admin", view=True)))


def check_prune(key: ApiKey | None, prune: bool) -> None:
    """Pruning deletes products in bulk: it takes an admin key."""
    if prune and (key is None or not key.allows("admin")):
        raise AuthError(403, "prune deletes products in bulk and needs an API key with scope 'admin'")
