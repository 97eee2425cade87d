"""Who may call the API, and from where.

* API keys: with keys configured, every route but /health and /ready needs
  ``Authorization: Bearer KEY`` (401 otherwise). A job records a hash of the key that created it
  (its *owner*), never the key; other keys neither see nor reach it.
* Admin keys: loading and unloading models changes the server for every key, so it needs an
  admin key (403 for other keys). Without any key it is refused unless the backend was started
  with ``--allow_model_management`` (loopback only), and then only to loopback clients.
* DNS rebinding: a request whose ``Host`` is none of this server's own names gets 421 on every
  route (videoserve.http.hosts says which names are its own).
* Cross-site requests: a browser on another site may send "simple" requests (a text/plain POST)
  without asking first. A request whose ``Origin`` is neither this server (one of its own host
  names, never judged by the request's ``Host``) nor an allowed origin gets 403, and a body must
  be JSON or multipart/form-data (415 otherwise), which a cross-site page can only send after a
  CORS preflight that only allowed origins pass.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers

from videoserve.http.errors import error_body
from videoserve.http.hosts import AllowedHosts, own_origin

PUBLIC_PATHS = ("/health", "/ready")
BODY_TYPES = ("application/json", "multipart/form-data")
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")
READ_METHODS = ("GET", "HEAD", "OPTIONS")
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
    """ASGI middleware, outermost: 421 for a ``Host`` this server does not answer to (DNS
    rebinding, see videoserve.http.hosts), 403 for a disallowed ``Origin``, 415 for a body that
    is not JSON or multipart/form-data. Each before any route runs."""

    def __init__(self, app: Any, allowed_origins: tuple[str, ...] = (),
                 allowed_hosts: tuple[str, ...] = ()):
        self.app = app
        self.allowed = {o.rstrip("/").lower() for o in allowed_origins}
        self.hosts = AllowedHosts(allowed_hosts)

    def origin_allowed(self, origin: str, scope: dict, headers: Headers) -> bool:
        origin = origin.rstrip("/").lower()
        if origin in self.allowed or "*" in self.allowed:
            return True
        return own_origin(self.hosts, origin, headers.get("host"), _local_address(scope))

    def refusal(self, scope: dict, headers: Headers) -> tuple[int, str, str] | None:
        """(status, message, code) of a request refused before any route; None if it passes."""
        if not self.hosts.allows(headers.get("host"), _local_address(scope)):
            return (421, "this server does not answer to the host named in the Host header "
                    "(see --allowed_hosts)", "host_not_allowed")
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, scope, headers):
            return (403, "requests from this origin are not allowed (see --cors_origins)",
                    "origin_not_allowed")
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if scope["method"] in BODY_METHODS and has_body and media_type not in BODY_TYPES:
            return (415, "the body must be application/json or multipart/form-data",
                    "unsupported_media_type")
        return None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope, Headers(scope=scope))
        if refused is not None:
            await _answer(scope, send, *refused)
            return
        await self.app(scope, receive, send)


def _local_address(scope: dict) -> str | None:
    server = scope.get("server")
    return server[0] if server else None


class ApiKeyAuth:
    """ASGI middleware: with keys configured, the caller must present one (``Authorization:
    Bearer KEY``) except on PUBLIC_PATHS; their owner hash is put in the scope. Admin routes
    (model management) need an admin key (403 for other keys); without any key they are
    refused unless ``allow_model_management``, and then only to loopback clients."""

    def __init__(self, app: Any, keys: tuple[str, ...] = (), admin_keys: tuple[str, ...] = (),
                 allow_model_management: bool = False):
        self.app = app
        self.admins = [owner_of(key) for key in admin_keys]
        self.owners = [owner_of(key) for key in keys] + self.admins
        self.open_management = allow_model_management

    def owner(self, headers: Headers) -> str | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        presented = owner_of(token.strip())
        return presented if _any_equal(presented, self.owners) else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope)
        if refused is not None:
            await _answer(scope, send, *refused)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: dict) -> tuple[int, str, str, dict[str, str] | None] | None:
        """(status, message, code, headers) of a refused caller; None lets the request in
        (with its owner in the scope)."""
        admin_route = is_admin_route(scope["method"], _route_path(scope))
        if not self.owners:
            if admin_route and not (self.open_management and _from_loopback(scope)):
                return (403, "model management is off: start the backend with "
                        "--admin_api_key KEY (or, on loopback only, --allow_model_management)",
                        "model_management_disabled", None)
            return None
        owner = self.owner(Headers(scope=scope))
        if owner is None and _route_path(scope) not in PUBLIC_PATHS:
            return (401, "a valid API key is required (Authorization: Bearer KEY)",
                    "unauthorized", {"WWW-Authenticate": "Bearer"})
        if admin_route and not _any_equal(owner or "", self.admins):
            return (403, "managing models needs an admin key (see --admin_api_key)",
                    "admin_key_required", None)
        scope[OWNER] = owner
        return None


def is_admin_route(method: str, path: str) -> bool:
    """Requests that change the server for every key: loading and unloading models."""
    return method.upper() not in READ_METHODS and path.startswith("/v1/models/")


def _any_equal(presented: str, hashes: list[str]) -> bool:
    # Each compared in constant time, all of them: the timing says nothing about a key.
    return any([hmac.compare_digest(presented, known) for known in hashes])


def _from_loopback(scope: dict) -> bool:
    client = scope.get("client")
    try:
        address = ipaddress.ip_address(client[0]) if client else None
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return address is not None and (address.is_loopback or bool(mapped and mapped.is_loopback))
