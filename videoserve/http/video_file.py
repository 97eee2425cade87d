"""The MP4 download response: Range support, Range errors in the one error shape, and a file
opened before the answer starts (see ``VideoFile``)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

from anyio import AsyncFile, wrap_file
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import Headers
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from videoserve.http.errors import error_body


class VideoFile(FileResponse):
    """An MP4 file with Range support whose Range errors use the one error shape.

    Served from a file opened before the answer starts: a concurrent delete removes the name,
    not the open file, so a download either finds no file (404) or completes."""

    # FastAPI reads the default status_code off the signature for the OpenAPI document.
    def __init__(self, file: BinaryIO, media_type: str, filename: str, status_code: int = 200):
        self.file = file
        super().__init__(file.name, status_code, media_type=media_type, filename=filename,
                         stat_result=os.fstat(file.fileno()))

    @classmethod
    def open(cls, path: Path, media_type: str, filename: str) -> VideoFile:
        file = open(path, "rb")  # closed once the answer is sent
        try:
            return cls(file, media_type, filename)
        except BaseException:
            file.close()
            raise

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        # A server that sends files by path itself would open the name again.
        extensions = {k: v for k, v in scope.get("extensions", {}).items()
                      if k != "http.response.pathsend"}
        scope = {**scope, "extensions": extensions}
        try:
            error = self._range_error(Headers(scope=scope), scope["method"].upper())
            await (error or super().__call__)(scope, receive, send)
        finally:
            self.file.close()

    @asynccontextmanager
    async def _open_file(self) -> AsyncIterator[AsyncFile[bytes]]:
        # Where FileResponse opens its path: the file opened before answering, instead.
        yield wrap_file(self.file)

    def _range_error(self, headers: Headers, method: str) -> JSONResponse | None:
        http_range, if_range = headers.get("range"), headers.get("if-range")
        if http_range is None or method not in ("GET", "HEAD") or self.stat_result is None:
            return None
        if if_range is not None and not self._should_use_range(if_range):
            return None  # the file changed: the whole file is sent
        size = self.stat_result.st_size
        try:
            self._parse_range_header(http_range, size)
        except RangeNotSatisfiable:
            body = error_body(f"the range is outside the video's {size} bytes",
                              "invalid_request_error", "Range", "range_not_satisfiable")
            return JSONResponse(body, 416, headers={"Content-Range": f"bytes */{size}"})
        except (MalformedRangeHeader, ValueError) as exc:
            message = getattr(exc, "content", "malformed Range header")
            body = error_body(message, "invalid_request_error", "Range", "invalid_range")
            return JSONResponse(body, 400)
        return None
