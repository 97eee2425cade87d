"""Who may call the API, and from where.

* API keys: with keys configured, every route but /health and /ready needs
  ``Authorization: Bearer KEY`` (401 otherwise). A job records a hash of the key that created it
  (its *owner*), never the key; other keys neither see nor reach it.
* Cross-site requests: a browser on another site may send "simple" requests (a text/plain POST)
  without asking first. A request whose ``Origin`` is neither this server nor an allowed origin
  gets 403, and a body must be JSON or multipart/form-data (415 otherwise), which a cross-site
  page can only send after a CORS preflight that only allowed origins pass.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers

from videoserve.errors import error_body

PUBLIC_PATHS = ("/health", "/ready")
BODY_TYPES = ("application/json", "multipart/form-data")
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")
OWNER = "videoserve.owner"  # the scope key the caller's owner hash travels under


def owner_of(key: str) -> str:
    """What a job stores about the key that created it: a hash, never the key."""
    return hashlib.sha256(b"videoserve-owner\0" + key.encode()).hexdigest()[:32]


def request_owner(request: Request) -> str | None:
    """The caller's owner hash; None when no keys are configured (everyone sees everything)."""
    return request.scope.get(OWNER)


def _route_path(scope: dict) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):] or "/"
    return path


async def _answer(scope: dict, send: Any, status: int, message: str, code: str,
                  headers: dict[str, str] | None = None) -> None:
    body = error_body(message, "invalid_request_error", code=code)
    await JSONResponse(body, status_code=status, headers=headers)(scope, _no_receive, send)


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}


class RequestGuard:
    """ASGI middleware, outermost: 403 for a disallowed ``Origin``, 415 for a body that is not
    JSON or multipart/form-data."""

    def __init__(self, app: Any, allowed_origins: tuple[str, ...] = ()):
        self.app = app
        self.allowed = {o.rstrip("/").lower() for o in allowed_origins}

    def origin_allowed(self, origin: str, scope: dict, headers: Headers) -> bool:
        origin = origin.rstrip("/").lower()
        same = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()
        return origin == same or origin in self.allowed or "*" in self.allowed

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, scope, headers):
            await _answer(scope, send, 403, "requests from this origin are not allowed "
                          "(see --cors_origins)", "origin_not_allowed")
            return
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if scope["method"] in BODY_METHODS and has_body and media_type not in BODY_TYPES:
            await _answer(scope, send, 415, "the body must be application/json or "
                          "multipart/form-data", "unsupported_media_type")
            return
        await self.app(scope, receive, send)


class ApiKeyAuth:
    """ASGI middleware: with keys configured, the caller must present one (``Authorization:
    Bearer KEY``) except on PUBLIC_PATHS; their owner hash is put in the scope."""

    def __init__(self, app: Any, keys: tuple[str, ...] = ()):
        self.app = app
        self.owners = [owner_of(key) for key in keys]

    def owner(self, headers: Headers) -> str | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        presented = owner_of(token.strip())
        # Compared as hashes, each in constant time: the timing says nothing about a key.
        matches = [hmac.compare_digest(presented, owner) for owner in self.owners]
        return presented if any(matches) else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.owners:
            await self.app(scope, receive, send)
            return
        owner = self.owner(Headers(scope=scope))
        if owner is None and _route_path(scope) not in PUBLIC_PATHS:
            await _answer(scope, send, 401, "a valid API key is required (Authorization: "
                          "Bearer KEY)", "unauthorized", {"WWW-Authenticate": "Bearer"})
            return
        scope[OWNER] = owner
        await self.app(scope, receive, send)
