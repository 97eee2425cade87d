"""The asynchronous jobs API under /v1/videos, in the shape of OpenAI's videos API: create one
or a batch, read, download, cancel, delete and list; and finding a caller's job and opening its
MP4, which the legacy download in ``generate`` shares."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from videoserve.core.jobs import Job, is_job_id
from videoserve.core.service import VideoService
from videoserve.http.errors import ApiError
from videoserve.http.job_events import HEADERS, job_events, parse_last_event_id
from videoserve.http.openai_videos import (
    parse_create,
    read_create_body,
    to_generate_request,
    video_object,
)
from videoserve.http.routes.deps import Owner, Service
from videoserve.http.routes.docs import ERRORS, MP4, RANGE_HEADERS, WEBP, answers
from videoserve.http.schemas import (
    BatchCreated,
    BatchRequest,
    VideoCreateRequest,
    VideoDeleted,
    VideoList,
    VideoObject,
    list_page,
)
from videoserve.http.video_file import VideoFile

MAX_IDEMPOTENCY_KEY = 255
DELETE_WAIT_S = 10.0  # DELETE of a running job: how long it waits for the job to stop
CREATE_BODY = {"requestBody": {"content": {
    "application/json": {"schema": VideoCreateRequest.model_json_schema()},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "prompt": {"type": "string"}, "model": {"type": "string"},
        "size": {"type": "string"}, "seconds": {"type": "string"},
        "input_reference": {"type": "string", "format": "binary"}}}}}}}

router = APIRouter()


def find_job(service: VideoService, job_id: str, owner: str | None) -> Job:
    # Another key's job is answered exactly like one that does not exist.
    job = service.get(job_id, owner) if is_job_id(job_id) else None
    if job is None:
        raise ApiError(404, "no such video", type="not_found", code="not_found")
    return job


def open_content(service: VideoService, job_id: str, owner: str | None) -> VideoFile:
    job = find_job(service, job_id, owner)
    if job.status != "completed":
        raise ApiError(409, f"video {job_id} is {job.status}, not completed", code=job.status)
    try:
        return VideoFile.open(service.video_file(job_id), "video/mp4", f"{job_id}.mp4")
    except OSError:
        raise ApiError(404, f"the file of video {job_id} is gone", type="not_found",
                       code="not_found") from None


def check_idempotency_key(key: str | None) -> None:
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise ApiError(422, f"Idempotency-Key: at most {MAX_IDEMPOTENCY_KEY} characters",
                       param="Idempotency-Key")


def view(service: VideoService, job: Job, cached: bool = False) -> dict[str, Any]:
    return video_object(job, service.queue_position(job), cached)


@router.post("/v1/videos", response_model=None, responses=answers(VideoObject),
             openapi_extra=CREATE_BODY)
async def create_video(request: Request, service: Service, owner: Owner,
                       idempotency_key: str | None = Header(None)) -> dict[str, Any]:
    """Queue a video (JSON, or multipart/form-data with an input_reference image)."""
    check_idempotency_key(idempotency_key)
    create = parse_create(await read_create_body(request))
    job, cached = await service.submit(to_generate_request(create, service.current_specs()),
                                       idempotency_key, owner)
    return view(service, job, cached)


@router.post("/v1/videos/batch", response_model=None, responses=answers(BatchCreated))
async def create_batch(batch: BatchRequest, service: Service, owner: Owner,
                       idempotency_key: str | None = Header(None)) -> dict[str, Any]:
    """Queue several videos; all are validated before any is queued. Ids come in order;
    a retry with the same Idempotency-Key gets the same ids."""
    check_idempotency_key(idempotency_key)
    prepared = []
    for index, fields in enumerate(batch.requests):
        create = parse_create(dict(fields), loc=("body", "requests", index))
        request_body = to_generate_request(create, service.current_specs())
        prepared.append(await service.prepare(request_body, owner))
    jobs = service.enqueue_batch(prepared, idempotency_key)
    return {"object": "list", "ids": [job.id for job in jobs]}


@router.get("/v1/videos/{job_id}", response_model=None, responses=answers(VideoObject))
async def get_video(job_id: str, service: Service, owner: Owner) -> dict[str, Any]:
    """A job's status, progress, parameters, seed, timings and error."""
    return view(service, find_job(service, job_id, owner))


EVENTS = {200: {"description": "Server-sent events: `progress` at every change of the job, then "
                 "one `completed`, `failed` or `cancelled` (data: the job object); a "
                 "`: keep-alive` comment every 15 s", "content": {"text/event-stream": {
                     "schema": {"type": "string"}}}}}


@router.get("/v1/videos/{job_id}/events", response_class=StreamingResponse,
            responses={**ERRORS, **EVENTS}, operation_id="video_events")
async def video_events(job_id: str, service: Service, owner: Owner,
                       last_event_id: str | None = Header(None)) -> StreamingResponse:
    """Watch a job: an event at every change (server-sent events) until its final event.
    ``Last-Event-ID`` resumes after the event of that id (the final event is always sent)."""
    find_job(service, job_id, owner)
    return StreamingResponse(job_events(service, job_id, parse_last_event_id(last_event_id)),
                             media_type="text/event-stream", headers=HEADERS)


@router.api_route("/v1/videos/{job_id}/content", methods=["GET", "HEAD"], responses=MP4,
                  response_class=VideoFile, openapi_extra=RANGE_HEADERS,
                  operation_id="video_content")
async def video_content(job_id: str, service: Service, owner: Owner,
                        variant: str = "video") -> VideoFile:
    """The MP4 (Range supported); 409 while the job is not completed."""
    if variant != "video":
        raise ApiError(422, "only variant=video is available", param="variant")
    return open_content(service, job_id, owner)


@router.get("/v1/videos/{job_id}/preview", response_class=Response, responses=WEBP)
async def video_preview(job_id: str, service: Service, owner: Owner) -> Response:
    """The newest live preview of a job's denoising (a small WebP, replaced at most about twice
    a second; the last one stays until the job is deleted). 409 ``no_preview_yet`` before the
    first step, and for a job without previews."""
    job = find_job(service, job_id, owner)
    path, step = service.preview_file(job)
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:  # deleted meanwhile
        raise ApiError(404, "no such video", type="not_found", code="not_found") from None
    return Response(data, media_type="image/webp",
                    headers={"X-Preview-Step": str(step), "Cache-Control": "no-store"})


@router.post("/v1/videos/{job_id}/cancel", response_model=None, responses=answers(VideoObject))
async def cancel_video(job_id: str, service: Service, owner: Owner) -> dict[str, Any]:
    """Cancel a queued or running job, answered at once: a queued job is ``cancelled``; a
    running one stays ``in_progress`` (``cancellation.requested_at`` set) until its generator
    stops it, at its next step. A finished job is returned unchanged."""
    job = find_job(service, job_id, owner)
    return view(service, await service.cancel(job) if not job.done else job)


@router.delete("/v1/videos/{job_id}", response_model=None, responses=answers(VideoDeleted))
async def delete_video(job_id: str, service: Service, owner: Owner) -> dict[str, Any]:
    """Cancel a queued or running job; delete a finished one and its files."""
    job = find_job(service, job_id, owner)
    if not job.done:
        # Unlike POST .../cancel, DELETE waits a little for a running job to stop, so that its
        # answer says whether the job is now cancelled (then DELETE again removes it).
        job = await service.cancel(job, DELETE_WAIT_S)
        return {"id": job.id, "object": "video.deleted", "deleted": False,
                "status": job.status, "video": view(service, job)}
    service.delete_files(job)
    return {"id": job.id, "object": "video.deleted", "deleted": True}


@router.get("/v1/videos", response_model=None, responses=answers(VideoList))
async def list_videos(service: Service, owner: Owner, limit: int = Query(20, ge=1, le=100),
                      after: str | None = None, order: Literal["asc", "desc"] = "desc"
                      ) -> dict[str, Any]:
    """History, newest first by default; page with ``after`` = the last id seen."""
    jobs, has_more = service.page(limit, after, order, owner)
    return list_page([view(service, job) for job in jobs], has_more)
