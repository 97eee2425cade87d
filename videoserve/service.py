"""The ingress's logic: turn a request into a job, run it on a generator, store the result.

It knows nothing about Ray: generators are reached through ``dispatch(task, item)``, which
yields the generator's events (see ``videoserve.worker``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videoserve.config import ModelSpec, Settings, Task
from videoserve.errors import ApiError
from videoserve.jobs import Job, JobStore, new_job_id
from videoserve.media import (
    MediaError,
    decode_base64,
    decode_image,
    fit_image,
    image_to_png,
    write_atomic,
)
from videoserve.schemas import SEED_MAX, GenerateVideoRequest
from videoserve.worker import WorkItem

log = logging.getLogger(__name__)

Dispatch = Callable[[Task, WorkItem], AsyncIterator[dict[str, Any]]]
# Asks the generator replica running a job to stop it at its next step.
RequestCancel = Callable[[str], Awaitable[None]]
SAMPLING_FIELDS = (
    "guidance_scale",
    "num_frames",
    "height",
    "width",
    "num_inference_steps",
    "fps",
)


def select_task(request: GenerateVideoRequest) -> Task:
    if request.model_type is not None:
        return request.model_type
    return "i2v" if request.has_image else "t2v"


def apply_defaults(request: GenerateVideoRequest, spec: ModelSpec) -> dict[str, Any]:
    """Resolved sampling parameters, checked against the model's limits (422 names the field)."""
    params: dict[str, Any] = {
        name: getattr(request, name) if getattr(request, name) is not None
        else getattr(spec.defaults, name)
        for name in SAMPLING_FIELDS
    }
    params["negative_prompt"] = (
        request.negative_prompt if request.negative_prompt is not None
        else spec.defaults.negative_prompt
    )
    if request.randomize_seed or request.seed is None:
        params["seed"] = secrets.randbelow(SEED_MAX + 1)
    else:
        params["seed"] = request.seed
    limits = spec.limits
    checks = [
        ("height", params["height"] <= limits.max_height, f"at most {limits.max_height}"),
        ("width", params["width"] <= limits.max_width, f"at most {limits.max_width}"),
        ("width", params["height"] * params["width"] <= limits.max_pixels,
         f"height x width must be at most {limits.max_pixels} pixels"),
        ("num_frames", params["num_frames"] <= limits.max_frames, f"at most {limits.max_frames}"),
        ("num_inference_steps", params["num_inference_steps"] <= limits.max_steps,
         f"at most {limits.max_steps}"),
        ("guidance_scale", params["guidance_scale"] <= limits.max_guidance_scale,
         f"at most {limits.max_guidance_scale}"),
        ("fps", params["fps"] <= limits.max_fps, f"at most {limits.max_fps}"),
    ]
    for name, ok, rule in checks:
        if not ok:
            raise ApiError(422, f"{name}: {rule} for model {spec.model}", param=name,
                           code="out_of_range")
    return params


def sandboxed_path(root: Path, image_path: str) -> Path:
    """``image_path`` resolved inside ``root``; anything that escapes it is refused (403)."""
    root = root.resolve()
    candidate = Path(image_path)
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root):
        raise ApiError(403, f"image_path must be a file inside the input directory {root}",
                       param="image_path", code="path_not_allowed")
    if not resolved.is_file():
        raise ApiError(400, f"image_path {image_path!r} does not exist in the input directory",
                       param="image_path", code="file_not_found")
    return resolved


@dataclass
class Prepared:
    """A validated request, resolved against its model and ready to queue."""

    task: Task
    spec: ModelSpec
    prompt: str
    params: dict[str, Any]
    image_png: bytes | None
    fingerprint: str | None  # set only for explicit seeds: those results can be reused


def fingerprint(task: Task, spec: ModelSpec, prompt: str, params: dict[str, Any],
                image_png: bytes | None) -> str:
    digest = hashlib.sha256(image_png).hexdigest() if image_png else None
    key = json.dumps([task, spec.model, spec.engine, prompt, params, digest], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


class VideoService:
    """Validates requests, runs them as jobs on the generators and stores their videos."""

    def __init__(self, settings: Settings, dispatch: Dispatch,
                 request_cancel: RequestCancel | None = None):
        self.settings = settings
        self.dispatch = dispatch
        self.request_cancel = request_cancel
        settings.videos_dir.mkdir(parents=True, exist_ok=True)
        settings.inputs_dir.mkdir(parents=True, exist_ok=True)
        self.jobs = JobStore(settings.output_path / "jobs.sqlite3")
        self._runners: dict[str, asyncio.Task] = {}
        self._streams: dict[str, Any] = {}

    def spec_for(self, task: Task) -> ModelSpec:
        spec = self.settings.models.get(task)
        if spec is None:
            deployed = ", ".join(self.settings.models) or "none"
            raise ApiError(404, f"no {task} model is deployed here (deployed: {deployed})",
                           param="model_type", code="model_not_found")
        return spec

    async def prepare_image(self, request: GenerateVideoRequest, params: dict) -> bytes:
        if request.image and request.image_path:
            raise ApiError(422, "give either image or image_path, not both", param="image")
        if request.image_path:
            path = sandboxed_path(self.settings.inputs_dir, request.image_path)
            data, param = await asyncio.to_thread(path.read_bytes), "image_path"
        else:
            data, param = None, "image"
        try:
            data = data if data is not None else decode_base64(request.image or "")
            image = await asyncio.to_thread(decode_image, data, self.settings.max_image_pixels)
            fitted = fit_image(image, params["width"], params["height"])
            return await asyncio.to_thread(image_to_png, fitted)
        except MediaError as exc:
            raise ApiError(422, f"{param}: {exc}", param=param, code="invalid_image") from exc

    async def prepare(self, request: GenerateVideoRequest) -> Prepared:
        """Validate against the chosen model (4xx naming the field) and resolve defaults."""
        task = select_task(request)
        spec = self.spec_for(task)
        if task == "t2v" and request.has_image:
            raise ApiError(422, "images are only used by image-to-video; set model_type to i2v "
                           "or leave it unset", param="image")
        if task == "i2v" and not request.has_image:
            raise ApiError(422, "image-to-video needs an image: send image (base64 or data URL) "
                           "or image_path", param="image", code="image_required")
        params = apply_defaults(request, spec)
        image_png = await self.prepare_image(request, params) if task == "i2v" else None
        explicit_seed = request.seed is not None and not request.randomize_seed
        key = fingerprint(task, spec, request.prompt, params, image_png) if explicit_seed else None
        return Prepared(task, spec, request.prompt, params, image_png, key)

    def enqueue(self, prepared: Prepared, idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Queue a prepared request; (job, cached). A cached job is an earlier identical one."""
        if idempotency_key:
            earlier = self.jobs.by_idempotency_key(idempotency_key)
            if earlier is not None:
                return earlier, False
        if prepared.fingerprint:
            earlier = self.jobs.completed_with_fingerprint(prepared.fingerprint)
            if earlier is not None and self.video_file(earlier.id).is_file():
                return earlier, True
        task, spec = prepared.task, prepared.spec
        waiting = sum(1 for j in self.jobs.active() if j.task == task)
        if waiting >= spec.max_queued_requests + spec.replicas * spec.max_ongoing_requests:
            raise ApiError(503, f"the {task} queue is full ({waiting} jobs); retry later",
                           type="server_error", code="queue_full", headers={"Retry-After": "5"})
        job = Job(id=new_job_id(), task=task, model=spec.model, engine=spec.engine,
                  synthetic=spec.synthetic, params={"prompt": prepared.prompt, **prepared.params},
                  total_steps=prepared.params["num_inference_steps"],
                  fingerprint=prepared.fingerprint, idempotency_key=idempotency_key)
        self.jobs.add(job)
        item = WorkItem(job_id=job.id, params={"prompt": prepared.prompt, **prepared.params},
                        image_png=prepared.image_png)
        self._runners[job.id] = asyncio.create_task(self._run(job, item))
        return job, False

    async def submit(self, request: GenerateVideoRequest,
                     idempotency_key: str | None = None) -> tuple[Job, bool]:
        return self.enqueue(await self.prepare(request), idempotency_key)

    async def _run(self, job: Job, item: WorkItem) -> None:
        try:
            stream = self._streams[job.id] = self.dispatch(job.task, item)
            async for event in stream:
                await self._on_event(job, event)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - the replica died or could not be reached
            if not job.done:
                log.exception("job %s lost its generator", job.id)
                self.jobs.update(job, status="failed", error=f"generator unavailable: {exc}",
                                 finished_at=time.time())
        finally:
            self._streams.pop(job.id, None)
            self._runners.pop(job.id, None)
        if not job.done:
            self.jobs.update(job, status="failed", error="generator ended without a result",
                             finished_at=time.time())

    async def _on_event(self, job: Job, event: dict[str, Any]) -> None:
        kind = event["type"]
        if job.done:
            return  # cancelled while the event was on its way
        if kind == "started":
            self.jobs.update(job, status="in_progress", started_at=time.time())
        elif kind == "progress":
            self.jobs.update(job, step=max(job.step, event["step"]),
                             total_steps=event["total_steps"], stage=event.get("stage"))
        elif kind == "result":
            result = await asyncio.to_thread(self._store_result, job, event)
            self.jobs.update(job, status="completed", result=result, step=job.total_steps,
                             finished_at=time.time())
        elif kind == "cancelled":
            detail = {k: event.get(k) for k in ("cancel_received_at_step", "stopped_at_step",
                                                "stopped_in_stage")}
            self.jobs.update(job, status="cancelled", finished_at=time.time(),
                             cancellation={**(job.cancellation or {}), **detail})
        elif kind == "error":
            self.jobs.update(job, status="failed", error=event["message"], finished_at=time.time())

    async def cancel(self, job: Job, wait_s: float = 10.0) -> Job:
        """Cancel a queued job at once; ask a running one to stop and wait a little for it."""
        requested = {"requested_at": time.time(), "requested_at_step": job.step}
        if job.status == "queued":
            self.jobs.update(job, status="cancelled", finished_at=time.time(),
                             cancellation=requested)
            stream = self._streams.get(job.id)
            if stream is not None and hasattr(stream, "cancel"):
                stream.cancel()  # never reaches (or is dropped by) a generator
            runner = self._runners.get(job.id)
            if runner is not None:
                runner.cancel()
            return job
        if job.status == "in_progress" and self.request_cancel is not None:
            self.jobs.update(job, cancellation=requested)
            await self.request_cancel(job.id)
            try:
                return await self.jobs.wait(job.id, wait_s)
            except TimeoutError:
                return job
        return job

    def delete_files(self, job: Job) -> None:
        folder = self.settings.videos_dir / job.id
        if folder.is_dir():
            shutil.rmtree(folder)
        self.jobs.delete(job.id)

    def queue_position(self, job: Job) -> int | None:
        if job.status != "queued":
            return None
        queued = [j.id for j in self.jobs.active() if j.task == job.task and j.status == "queued"]
        return queued.index(job.id) if job.id in queued else None

    def video_file(self, job_id: str) -> Path:
        return self.settings.videos_dir / job_id / "video.mp4"

    def _store_result(self, job: Job, event: dict[str, Any]) -> dict[str, Any]:
        path = self.video_file(job.id)
        write_atomic(path, event["mp4"])
        finished = time.time()
        started = job.started_at or job.created_at
        result = {
            "output_path": str(path.resolve()),
            "video_url": f"/videos/{job.id}/video.mp4",
            "num_frames": event["num_frames"],
            "height": event["height"],
            "width": event["width"],
            "inference_time": round(event["inference_time"], 4),
            "encoding_time": round(event["encoding_time"], 4),
            "queue_time": round(started - job.created_at, 4),
            "total_time": round(finished - job.created_at, 4),
        }
        record = {**job.to_dict(), "status": "completed", "result": result}
        write_atomic(path.parent / "record.json", json.dumps(record, indent=2).encode())
        return result

    async def generate(self, request: GenerateVideoRequest) -> dict[str, Any]:
        """Submit a job and wait for it: the synchronous route's behaviour."""
        job, cached = await self.submit(request)
        try:
            job = await self.jobs.wait(job.id, self.settings.request_timeout_s)
        except TimeoutError as exc:
            raise ApiError(504, f"job {job.id} did not finish within "
                           f"{self.settings.request_timeout_s:.0f}s; it keeps running",
                           type="server_error", code="timeout") from exc
        if job.status == "failed":
            raise ApiError(500, f"generation failed: {job.error}", type="server_error",
                           code="generation_failed")
        if job.status == "cancelled":
            raise ApiError(409, f"job {job.id} was cancelled", code="cancelled")
        return {**self.response_body(job), "cached": cached}

    @staticmethod
    def response_body(job: Job) -> dict[str, Any]:
        if job.result is None:
            raise ApiError(409, f"job {job.id} has no result", code="not_completed")
        params = job.params
        return {
            "id": job.id,
            "video_id": job.id,
            "status": job.status,
            "model_type": job.task,
            "model": job.model,
            "engine": job.engine,
            "synthetic": job.synthetic,
            **{k: params[k] for k in ("prompt", "negative_prompt", "seed", "fps",
                                      "num_inference_steps", "guidance_scale")},
            **job.result,
        }
