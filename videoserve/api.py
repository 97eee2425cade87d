"""HTTP routes. Each route validates, calls the service, and shapes the response."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse

from videoserve import __version__
from videoserve.errors import ApiError, BodySizeLimit, install_error_handlers
from videoserve.jobs import is_job_id
from videoserve.schemas import (
    ErrorResponse,
    GenerateVideoRequest,
    GenerateVideoResponse,
    ReadyResponse,
)
from videoserve.service import VideoService

# Returns per-model readiness: {"t2v": {"state": "RUNNING", "replicas_running": 1, ...}, ...}
ReadinessFn = Callable[[], Awaitable[dict[str, dict[str, Any]]]]

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 403, 404, 409, 413, 422, 500, 503, 504)
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
        path = service.video_file(job_id) if is_job_id(job_id) else None
        if path is None or not path.is_file():
            raise ApiError(404, f"no video {job_id!r}", type="not_found", code="not_found")
        return FileResponse(path, media_type="video/mp4", filename=f"{job_id}.mp4")

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
