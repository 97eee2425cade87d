"""HTTP routes. Each route validates, calls the service, and shapes the response."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO, Literal

from anyio import AsyncFile, wrap_file
from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from videoserve import __version__
from videoserve.errors import ApiError, error_body, install_error_handlers
from videoserve.jobs import Job, is_job_id
from videoserve.limits import BodyBudget, BodyRules, BodySizeLimit
from videoserve.metrics import CONTENT_TYPE, ServiceMetrics
from videoserve.models import is_ready
from videoserve.schemas import (
    BatchCreated,
    BatchRequest,
    ErrorResponse,
    GenerateVideoRequest,
    GenerateVideoResponse,
    Health,
    ModelEntry,
    ModelList,
    ModelUpdateRequest,
    Placement,
    ReadyResponse,
    VideoCreateRequest,
    VideoDeleted,
    VideoList,
    VideoObject,
)
from videoserve.security import ApiKeyAuth, RequestGuard, request_owner
from videoserve.service import VideoService
from videoserve.videos import parse_create, read_create_body, to_generate_request, video_object

# Returns per-model readiness: {"t2v": {"state": "RUNNING", "replicas_running": 1, ...}, ...}
ReadinessFn = Callable[[], Awaitable[dict[str, dict[str, Any]]]]
# Returns where the ingress and each model's replicas run (Ray node ids).
PlacementFn = Callable[[], Awaitable[dict[str, Any]]]

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
RANGE_HEADERS = {"parameters": [
    {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX (several ranges: "
                    "multipart/byteranges); 400 when malformed"},
    {"name": "If-Range", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "an ETag or date: the range is sent only while the file is unchanged"}]}
MAX_IDEMPOTENCY_KEY = 255


def answers(model: type, status: int = 200) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route returning a plain dict: the schema is documented while the
    dict goes out as built (use with ``response_model=None``, so nothing is filtered)."""
    return {status: {"model": model}, **ERRORS}


def add_middlewares(app: FastAPI, settings: Any) -> None:
    """Outermost first: the Host, Origin and body-type guard, CORS for the allowed origins only,
    the API key check, then the body limits (so an unauthenticated body takes no budget)."""
    rules = BodyRules(settings.max_body_bytes, settings.body_idle_timeout_s,
                      settings.body_timeout_s, settings.body_min_timeout_s)
    app.add_middleware(BodySizeLimit, rules=rules, budget=BodyBudget(
        settings.max_inflight_body_bytes, settings.max_client_body_bytes))
    app.add_middleware(ApiKeyAuth, keys=settings.api_keys, admin_keys=settings.admin_api_keys,
                       allow_model_management=settings.allow_model_management)
    app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                       allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE"],
                       allow_headers=["Authorization", "Content-Type", "Idempotency-Key",
                                      "Range"],
                       expose_headers=["Retry-After", "Content-Range", "Accept-Ranges"])
    app.add_middleware(RequestGuard, allowed_origins=settings.cors_origins,
                       allowed_hosts=settings.allowed_hosts)


def create_app(service: VideoService, readiness: ReadinessFn,
               metrics: ServiceMetrics | None = None,
               placement: PlacementFn | None = None) -> FastAPI:
    """The service's FastAPI app (OpenAPI at /docs; Prometheus metrics at /metrics if given)."""
    app = FastAPI(
        title="videoserve",
        version=__version__,
        description="Text-to-video and image-to-video generation with FastVideo Wan models.",
    )
    install_error_handlers(app)
    add_middlewares(app, service.settings)

    @app.post("/generate_video", response_model=GenerateVideoResponse, responses=ERRORS)
    async def generate_video(body: GenerateVideoRequest, request: Request) -> dict[str, Any]:
        """Generate a video and wait for it. Unset parameters take the model's defaults."""
        result = await service.generate(body, request_owner(request))
        result["video_url"] = request.scope.get("root_path", "") + result["video_url"]
        return result

    @app.api_route("/videos/{job_id}/video.mp4", methods=["GET", "HEAD"], responses=MP4,
                   response_class=VideoFile, openapi_extra=RANGE_HEADERS,
                   operation_id="video_file")
    async def video_file(job_id: str, request: Request) -> VideoFile:
        """The MP4 of a finished job (HTTP Range requests supported)."""
        return _content(service, job_id, request_owner(request))

    add_video_routes(app, service)

    @app.get("/health", response_model=None, responses=answers(Health))
    async def health() -> dict[str, str]:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @app.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
    async def ready() -> JSONResponse:
        """503 until every loaded model has a running replica (also while a model is replaced
        on a GPU that cannot hold both; a switch with room for both never drops it)."""
        states = await readiness()
        specs = service.current_specs()
        models = {task: {"task": task, "model": specs[task].model if task in specs else None,
                         **state} for task, state in states.items()}
        ready = is_ready(states)
        return JSONResponse({"ready": ready, "models": models}, status_code=200 if ready else 503)

    @app.get("/v1/models", response_model=None, responses=answers(ModelList))
    async def models() -> dict[str, Any]:
        """Each task's model: engine, defaults, limits, state, and a switch in progress."""
        return {"object": "list", "data": service.models.describe()}

    @app.put("/v1/models/{model_type}", status_code=202, response_model=None,
             responses=answers(ModelEntry, 202))
    async def update_model(model_type: Literal["t2v", "i2v"],
                           body: ModelUpdateRequest) -> dict[str, Any]:
        """Load another model folder or hub id for a task, change its engine or replica count,
        or load an unloaded task, without a restart. Answers at once (202); GET /v1/models
        shows the switch until the new model serves. Queued jobs wait for the new model;
        running ones finish on the old one."""
        changes = body.model_dump(exclude_none=True)
        if not changes:
            raise ApiError(422, "give at least one of model, engine, replicas", param="model")
        return service.update_model(model_type, **changes)

    @app.delete("/v1/models/{model_type}", status_code=202, response_model=None,
                responses=answers(ModelEntry, 202))
    async def unload_model(model_type: Literal["t2v", "i2v"]) -> dict[str, Any]:
        """Unload a task's model: its queued jobs fail, running ones finish, then its replicas
        stop. PUT loads one again."""
        return service.unload_model(model_type)

    if metrics is not None:
        @app.get("/metrics", response_class=Response, responses={
            200: {"description": "Prometheus text format",
                  "content": {CONTENT_TYPE: {"schema": {"type": "string"}}}},
            401: {"model": ErrorResponse}})
        async def prometheus_metrics() -> Response:
            """Prometheus text format; needs the API key like every other route."""
            # On the event loop, not in a thread: the gauges read the runner's live job table.
            return Response(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    if placement is not None:
        @app.get("/v1/placement", response_model=None, responses=answers(Placement))
        async def get_placement() -> dict[str, Any]:
            """The Ray node of the ingress and of each model's replicas (with their state), and
            each model's GPU share, speed mode and what it offloads and why (its measured memory
            need against the GPUs' free memory read at start)."""
            return await placement()

    document_head(app)
    return app


def document_head(app: FastAPI) -> None:
    """Give each HEAD operation its own id, and answers without a body, in ``/openapi.json``.

    HEAD shares its route with GET (one route keeps the 405's Allow header naming both), and a
    route has one operation id, which OpenAPI requires to be unique per operation."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Duplicate Operation ID", UserWarning)
            schema = build()
        for operations in schema["paths"].values():
            if "head" in operations:
                head = operations["head"] = copy.deepcopy(operations["head"])
                head["operationId"] += "_head"
                head["summary"] += " (headers only)"
                for answer in head["responses"].values():
                    answer.pop("content", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _job(service: VideoService, job_id: str, owner: str | None) -> Job:
    # Another key's job is answered exactly like one that does not exist.
    job = service.get(job_id, owner) if is_job_id(job_id) else None
    if job is None:
        raise ApiError(404, "no such video", type="not_found", code="not_found")
    return job


def check_idempotency_key(key: str | None) -> None:
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise ApiError(422, f"Idempotency-Key: at most {MAX_IDEMPOTENCY_KEY} characters",
                       param="Idempotency-Key")


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


def _content(service: VideoService, job_id: str, owner: str | None) -> VideoFile:
    job = _job(service, job_id, owner)
    if job.status != "completed":
        raise ApiError(409, f"video {job_id} is {job.status}, not completed", code=job.status)
    try:
        return VideoFile.open(service.video_file(job_id), "video/mp4", f"{job_id}.mp4")
    except OSError:
        raise ApiError(404, f"the file of video {job_id} is gone", type="not_found",
                       code="not_found") from None


CREATE_BODY = {"requestBody": {"content": {
    "application/json": {"schema": VideoCreateRequest.model_json_schema()},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "prompt": {"type": "string"}, "model": {"type": "string"},
        "size": {"type": "string"}, "seconds": {"type": "string"},
        "input_reference": {"type": "string", "format": "binary"}}}}}}}


def add_video_routes(app: FastAPI, service: VideoService) -> None:
    """The asynchronous jobs API, in the shape of OpenAI's videos API."""

    def view(job: Job, cached: bool = False) -> dict[str, Any]:
        return video_object(job, service.queue_position(job), cached)

    @app.post("/v1/videos", response_model=None, responses=answers(VideoObject),
              openapi_extra=CREATE_BODY)
    async def create_video(request: Request, idempotency_key: str | None = Header(None)
                           ) -> dict[str, Any]:
        """Queue a video (JSON, or multipart/form-data with an input_reference image)."""
        check_idempotency_key(idempotency_key)
        create = parse_create(await read_create_body(request))
        job, cached = await service.submit(to_generate_request(create, service.current_specs()),
                                           idempotency_key, request_owner(request))
        return view(job, cached)

    @app.post("/v1/videos/batch", response_model=None, responses=answers(BatchCreated))
    async def create_batch(batch: BatchRequest, request: Request,
                           idempotency_key: str | None = Header(None)) -> dict[str, Any]:
        """Queue several videos; all are validated before any is queued. Ids come in order;
        a retry with the same Idempotency-Key gets the same ids."""
        check_idempotency_key(idempotency_key)
        owner = request_owner(request)
        prepared = []
        for index, fields in enumerate(batch.requests):
            create = parse_create(dict(fields), loc=("body", "requests", index))
            request_body = to_generate_request(create, service.current_specs())
            prepared.append(await service.prepare(request_body, owner))
        jobs = service.enqueue_batch(prepared, idempotency_key)
        return {"object": "list", "ids": [job.id for job in jobs]}

    @app.get("/v1/videos/{job_id}", response_model=None, responses=answers(VideoObject))
    async def get_video(job_id: str, request: Request) -> dict[str, Any]:
        """A job's status, progress, parameters, seed, timings and error."""
        return view(_job(service, job_id, request_owner(request)))

    @app.api_route("/v1/videos/{job_id}/content", methods=["GET", "HEAD"], responses=MP4,
                   response_class=VideoFile, openapi_extra=RANGE_HEADERS,
                   operation_id="video_content")
    async def video_content(job_id: str, request: Request, variant: str = "video") -> VideoFile:
        """The MP4 (Range supported); 409 while the job is not completed."""
        if variant != "video":
            raise ApiError(422, "only variant=video is available", param="variant")
        return _content(service, job_id, request_owner(request))

    @app.post("/v1/videos/{job_id}/cancel", response_model=None,
              responses=answers(VideoObject))
    async def cancel_video(job_id: str, request: Request) -> dict[str, Any]:
        """Cancel a queued or running job; a finished job is returned unchanged."""
        job = _job(service, job_id, request_owner(request))
        return view(await service.cancel(job) if not job.done else job)

    @app.delete("/v1/videos/{job_id}", response_model=None, responses=answers(VideoDeleted))
    async def delete_video(job_id: str, request: Request) -> dict[str, Any]:
        """Cancel a queued or running job; delete a finished one and its files."""
        job = _job(service, job_id, request_owner(request))
        if not job.done:
            job = await service.cancel(job)
            return {"id": job.id, "object": "video.deleted", "deleted": False,
                    "status": job.status, "video": view(job)}
        service.delete_files(job)
        return {"id": job.id, "object": "video.deleted", "deleted": True}

    @app.get("/v1/videos", response_model=None, responses=answers(VideoList))
    async def list_videos(request: Request, limit: int = Query(20, ge=1, le=100),
                          after: str | None = None, order: Literal["asc", "desc"] = "desc"
                          ) -> dict[str, Any]:
        """History, newest first by default; page with ``after`` = the last id seen."""
        jobs, has_more = service.page(limit, after, order, request_owner(request))
        data = [view(job) for job in jobs]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": has_more}
