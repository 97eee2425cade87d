"""The synchronous API: POST /generate_video generates a video and waits for it, and
/videos/{job_id}/video.mp4 is the download its answer's ``video_url`` points to."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from videoserve.core.request import GenerateVideoRequest
from videoserve.http.routes.deps import Owner, Service
from videoserve.http.routes.docs import ERRORS, MP4, RANGE_HEADERS
from videoserve.http.routes.videos import open_content
from videoserve.http.schemas import GenerateVideoResponse
from videoserve.http.video_file import VideoFile

router = APIRouter()


@router.post("/generate_video", response_model=GenerateVideoResponse, responses=ERRORS)
async def generate_video(body: GenerateVideoRequest, request: Request, service: Service,
                         owner: Owner) -> dict[str, Any]:
    """Generate a video and wait for it. Unset parameters take the model's defaults."""
    result = await service.generate(body, owner)
    result["video_url"] = request.scope.get("root_path", "") + result["video_url"]
    return result


@router.api_route("/videos/{job_id}/video.mp4", methods=["GET", "HEAD"], responses=MP4,
                  response_class=VideoFile, openapi_extra=RANGE_HEADERS,
                  operation_id="video_file")
async def video_file(job_id: str, service: Service, owner: Owner) -> VideoFile:
    """The MP4 of a finished job (HTTP Range requests supported)."""
    return open_content(service, job_id, owner)
