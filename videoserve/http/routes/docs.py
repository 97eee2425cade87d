"""What the routes declare in the OpenAPI document: the one error shape on every status they
may answer with, and the MP4 downloads' answers and Range headers."""

from __future__ import annotations

from typing import Any

from videoserve.http.schemas import ErrorResponse

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 408, 409, 413, 415, 422, 429,
                                                500, 503, 504)
}
BINARY = {"schema": {"type": "string", "format": "binary"}}
CONTENT_RANGE = {"Content-Range": {"description": "bytes FIRST-LAST/SIZE; on a 416, bytes */SIZE",
                                   "schema": {"type": "string"}}}
MP4 = {200: {"description": "The whole MP4", "content": {"video/mp4": BINARY},
             "headers": {"Accept-Ranges": {"schema": {"type": "string", "enum": ["bytes"]}}}},
       206: {"description": "The requested byte range of the MP4",
             "content": {"video/mp4": BINARY}, "headers": CONTENT_RANGE},
       416: {"model": ErrorResponse, "description": "The range is outside the file",
             "headers": CONTENT_RANGE}, **ERRORS}
WEBP = {200: {"description": "The newest live preview",
              "content": {"image/webp": BINARY},
              "headers": {"X-Preview-Step": {"description": "its denoising step",
                                             "schema": {"type": "integer"}}}}, **ERRORS}
RANGE_HEADERS = {"parameters": [
    {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX (several ranges: "
                    "multipart/byteranges); 400 when malformed"},
    {"name": "If-Range", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "an ETag or date: the range is sent only while the file is unchanged"}]}


def answers(model: type, status: int = 200) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route returning a plain dict: the schema is documented while the
    dict goes out as built (use with ``response_model=None``, so nothing is filtered)."""
    return {status: {"model": model}, **ERRORS}
