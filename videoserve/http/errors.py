"""The one error shape, the exception that carries it, and the handlers that emit it.

The core raises domain errors (``videoserve.core.errors``) with no status; ``STATUS`` is the one
place that says which HTTP status each kind becomes."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from videoserve.core.errors import (
    Busy,
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidRequest,
    JobFailed,
    NotFound,
    ServiceError,
    TimedOut,
    Unavailable,
)

log = logging.getLogger(__name__)

STATUS: dict[type[ServiceError], int] = {
    InvalidRequest: 400, Forbidden: 403, NotFound: 404, Conflict: 409, InvalidInput: 422,
    Busy: 429, JobFailed: 500, Unavailable: 503, TimedOut: 504,
}


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


def as_api_error(exc: ServiceError) -> ApiError:
    """A domain error as the HTTP error it is answered with (its status from ``STATUS``)."""
    status = next((s for kind, s in STATUS.items() if isinstance(exc, kind)), 500)
    headers = None if exc.retry_after_s is None else {"Retry-After": str(exc.retry_after_s)}
    return ApiError(status, exc.message, type=exc.type, param=exc.param, code=exc.code,
                    headers=headers)


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

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return await _api_error(request, as_api_error(exc))

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
