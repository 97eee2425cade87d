"""The one error shape, the exception that carries it, and the handlers that emit it."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error that becomes ``{"error": {...}}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str,
    type: str,
    param: str | None = None,
    code: str | None = None,
    details: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": type, "param": param, "code": code}
    if details is not None:
        error["details"] = details
    return {"error": error}


def _field_name(loc: tuple | list) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    """Make every error response, validation included, use the one error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"param": _field_name(e["loc"]), "message": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        first = details[0] if details else {"param": None, "message": "invalid request"}
        message = f"{first['param']}: {first['message']}" if first["param"] else first["message"]
        body = error_body(
            message, "invalid_request_error", first["param"], "invalid_value", details
        )
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or HTTP_CODES.get(exc.status_code, "http_error")
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        body = error_body(str(exc.detail), kind, code=code)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RecursionError)
    async def _too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        # json.loads and validators recurse per nesting level: a client's deeply nested body.
        body = error_body("the body is nested too deeply", "invalid_request_error",
                          code="invalid_json")
        return JSONResponse(body, status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        body = error_body(f"internal error: {type(exc).__name__}", "server_error", code="internal")
        return JSONResponse(body, status_code=500)


HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found",
              405: "method_not_allowed", 408: "body_timeout", 413: "body_too_large",
              415: "unsupported_media_type", 503: "busy"}


# What a failure text from Ray or an engine may carry that clients must not see: file paths,
# addresses, process and actor ids, the Ray namespace. The full text goes to the log.
_INTERNALS = [
    (re.compile(r"\b(pid|ip|node_ip|namespace|actor_id|worker_id|node_id|job_id|task_id|"
                r"replica_id|name)\s*[=:]\s*['\"]?[^\s,'\")]+", re.IGNORECASE), r"\1=<hidden>"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "<address>"),
    (re.compile(r"(?<![\w.:/-])(?:~|\.{1,2})?/(?:[\w.@+~-]+/)*[\w.@+~-]*"), "<path>"),
    (re.compile(r"\b[0-9a-f]{16,}\b", re.IGNORECASE), "<id>"),
    (re.compile(r"\bpid \d+\b", re.IGNORECASE), "pid <hidden>"),
]


def public_reason(text: str, limit: int = 500) -> str:
    """``text`` without server internals (paths, addresses, pids, ids), for a client."""
    for pattern, replacement in _INTERNALS:
        text = pattern.sub(replacement, text)
    return text[:limit]
