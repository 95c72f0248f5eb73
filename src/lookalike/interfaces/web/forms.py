"""Writes from the web pages: a signed-in merchandiser's form posts, safe against cross-site requests.

The API never takes the session cookie for a write (a cookie rides along on cross-site
requests).  The workbench pages need writes all the same — "not duplicates", "keep this one",
"accept the prediction" — so their forms carry a token derived from the session's key with a
secret that lives only in this server process (HMAC-SHA256).  A cross-site page cannot read the
token; a post without it, or with another session's, is refused before anything is changed.
The cookie is also ``SameSite=Strict``: two independent defences.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from fastapi import Depends, Form, Request

from ...security.http import SESSION_COOKIE, AccessPolicy, AuthError
from ...security.keys import ApiKey

TOKEN_FIELD = "form_token"


class FormGuard:
    def __init__(self, policy: AccessPolicy):
        self.policy = policy
        self._secret = secrets.token_bytes(32)

    def token(self, request: Request) -> str:
        """The token the current session's forms carry ("" when signed out: its forms are refused)."""
        session = request.cookies.get(SESSION_COOKIE)
        return hmac.new(self._secret, session.encode(), hashlib.sha256).hexdigest() if session else ""

    def requires(self, scope: str) -> Any:
        """A dependency: the signed-in key, allowed ``scope``, and the form's token matches its session."""

        def dependency(request: Request, form_token: str = Form("", alias=TOKEN_FIELD, max_length=100)) -> ApiKey:
            session = request.cookies.get(SESSION_COOKIE)
            if not session:
                raise AuthError(401, "sign in first: this form changes the catalogue")
            if not form_token or not hmac.compare_digest(form_token, self.token(request)):
                raise AuthError(403, "this form is stale or came from another site: reload the page and try again")
            key = self.policy.authorize(session, scope)
            if key is None:  # authorize returns None only for anonymous reads
                raise AuthError(401, f"this needs an API key with scope {scope!r}")
            return key

        return Depends(dependency)
