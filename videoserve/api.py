"""HTTP routes. Each route validates, calls the service, and shapes the response."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from videoserve import __version__
from videoserve.errors import ApiError, BodySizeLimit, install_error_handlers
from videoserve.jobs import Job, is_job_id
from videoserve.schemas import (
    BatchRequest,
    ErrorResponse,
    GenerateVideoRequest,
    GenerateVideoResponse,
    ReadyResponse,
    VideoCreateRequest,
)
from videoserve.service import VideoService
from videoserve.videos import parse_create, read_create_body, to_generate_request, video_object

# Returns per-model readiness: {"t2v": {"state": "RUNNING", "replicas_running": 1, ...}, ...}
ReadinessFn = Callable[[], Awaitable[dict[str, dict[str, Any]]]]

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 403, 404, 409, 413, 422, 429, 500, 503,
                                                504)
}


def create_app(service: VideoService, readiness: ReadinessFn) -> FastAPI:
    """The service's FastAPI app (OpenAPI at /docs)."""
    app = FastAPI(
        title="videoserve",
        version=__version__,
        description="Text-to-video and image-to-video generation with FastVideo Wan models.",
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=service.settings.max_body_bytes)

    @app.post("/generate_video", response_model=GenerateVideoResponse, responses=ERRORS)
    async def generate_video(body: GenerateVideoRequest, request: Request) -> dict[str, Any]:
        """Generate a video and wait for it. Unset parameters take the model's defaults."""
        result = await service.generate(body)
        result["video_url"] = request.scope.get("root_path", "") + result["video_url"]
        return result

    @app.get("/videos/{job_id}/video.mp4", responses=ERRORS)
    async def video_file(job_id: str) -> FileResponse:
        """The MP4 of a finished job (HTTP Range requests supported)."""
        return _content(service, job_id)

    add_video_routes(app, service)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @app.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
    async def ready() -> JSONResponse:
        """503 until every configured model has a running replica."""
        states = await readiness()
        models = {
            task: {"task": task, "model": spec.model, **states.get(task, {"state": "UNKNOWN"})}
            for task, spec in service.settings.models.items()
        }
        is_ready = all(m["state"] == "RUNNING" for m in models.values())
        body = {"ready": is_ready, "models": models}
        return JSONResponse(body, status_code=200 if is_ready else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """Each deployed model's task, engine, defaults and limits."""
        data = [{"object": "model", **spec.describe()}
                for spec in service.settings.models.values()]
        return {"object": "list", "data": data}

    return app


def _job(service: VideoService, job_id: str) -> Job:
    job = service.get(job_id) if is_job_id(job_id) else None
    if job is None:
        raise ApiError(404, f"no video {job_id!r}", type="not_found", code="not_found")
    return job


def _content(service: VideoService, job_id: str) -> FileResponse:
    job = _job(service, job_id)
    if job.status != "completed":
        raise ApiError(409, f"video {job_id} is {job.status}, not completed", code=job.status)
    path = service.video_file(job_id)
    if not path.is_file():
        raise ApiError(404, f"the file of video {job_id} is gone", type="not_found",
                       code="not_found")
    return FileResponse(path, media_type="video/mp4", filename=f"{job_id}.mp4")


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

    @app.post("/v1/videos", responses=ERRORS, openapi_extra=CREATE_BODY)
    async def create_video(request: Request, idempotency_key: str | None = Header(None)
                           ) -> dict[str, Any]:
        """Queue a video (JSON, or multipart/form-data with an input_reference image)."""
        create = parse_create(await read_create_body(request))
        job, cached = await service.submit(to_generate_request(create, service.settings),
                                           idempotency_key)
        return view(job, cached)

    @app.post("/v1/videos/batch", responses=ERRORS)
    async def create_batch(batch: BatchRequest) -> dict[str, Any]:
        """Queue several videos; all are validated before any is queued. Ids come in order."""
        prepared = []
        for index, fields in enumerate(batch.requests):
            create = parse_create(dict(fields), loc=("body", "requests", index))
            prepared.append(await service.prepare(to_generate_request(create, service.settings)))
        return {"object": "list", "ids": [job.id for job in service.enqueue_batch(prepared)]}

    @app.get("/v1/videos/{job_id}", responses=ERRORS)
    async def get_video(job_id: str) -> dict[str, Any]:
        """A job's status, progress, parameters, seed, timings and error."""
        return view(_job(service, job_id))

    @app.get("/v1/videos/{job_id}/content", responses=ERRORS)
    async def video_content(job_id: str, variant: str = "video") -> FileResponse:
        """The MP4 (Range supported); 409 while the job is not completed."""
        if variant != "video":
            raise ApiError(422, "only variant=video is available", param="variant")
        return _content(service, job_id)

    @app.post("/v1/videos/{job_id}/cancel", responses=ERRORS)
    async def cancel_video(job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; a finished job is returned unchanged."""
        job = _job(service, job_id)
        return view(await service.cancel(job) if not job.done else job)

    @app.delete("/v1/videos/{job_id}", responses=ERRORS)
    async def delete_video(job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; delete a finished one and its files."""
        job = _job(service, job_id)
        if not job.done:
            job = await service.cancel(job)
            return {"id": job.id, "object": "video.deleted", "deleted": False,
                    "status": job.status, "video": view(job)}
        service.delete_files(job)
        return {"id": job.id, "object": "video.deleted", "deleted": True}

    @app.get("/v1/videos", responses=ERRORS)
    async def list_videos(limit: int = Query(20, ge=1, le=100), after: str | None = None,
                          order: Literal["asc", "desc"] = "desc") -> dict[str, Any]:
        """History, newest first by default; page with ``after`` = the last id seen."""
        jobs, has_more = service.page(limit, after, order)
        data = [view(job) for job in jobs]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": has_more}
