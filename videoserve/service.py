"""The ingress's facade: the few verbs the routes call (submit, get, list, cancel, delete,
content, generate, drain), over request resolution (here), the job runner
(``videoserve.runner``) and the job files (``videoserve.storage``).

It knows nothing about Ray: generators are reached through ``dispatch(task, item)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videoserve.config import ModelSpec, Settings, Task
from videoserve.errors import ApiError
from videoserve.jobs import Job, JobStore, new_job_id
from videoserve.media import MediaError, decode_base64, decode_image, fit_image, image_to_png
from videoserve.protocol import Result, SamplingParams, resolve
from videoserve.runner import Capacity, Dispatch, JobRunner, RequestCancel
from videoserve.schemas import GenerateVideoRequest
from videoserve.storage import VideoFiles

log = logging.getLogger(__name__)

def select_task(request: GenerateVideoRequest) -> Task:
    if request.model_type is not None:
        return request.model_type
    return "i2v" if request.has_image else "t2v"


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


@dataclass(frozen=True)
class Prepared:
    """A validated request, resolved against its model and ready to queue."""

    task: Task
    spec: ModelSpec
    params: SamplingParams
    image_png: bytes | None
    fingerprint: str | None  # set only for explicit seeds: those results can be reused


def fingerprint(task: Task, spec: ModelSpec, params: SamplingParams,
                image_png: bytes | None) -> str:
    digest = hashlib.sha256(image_png).hexdigest() if image_png else None
    key = json.dumps([task, spec.model, spec.engine, params.to_dict(), digest], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


class VideoService:
    """Validates requests, queues them as jobs and answers for them."""

    def __init__(self, settings: Settings, dispatch: Dispatch, capacity: Capacity,
                 request_cancel: RequestCancel | None = None):
        self.settings = settings
        settings.inputs_dir.mkdir(parents=True, exist_ok=True)
        self.files = VideoFiles(settings.videos_dir)
        self.jobs = JobStore(settings.output_path / "jobs.sqlite3")
        self.runner = JobRunner(self.jobs, dispatch, capacity, self.files.load_input,
                                self._save_result, request_cancel)
        self.draining = False
        self._drained = asyncio.Event()
        self._waiting: set[str] = set()  # jobs a synchronous request is waiting for

    def start(self) -> None:
        """Recover unfinished jobs and start dispatching (call on the event loop)."""
        self.runner.start(tuple(self.settings.models))

    def spec_for(self, task: Task) -> ModelSpec:
        spec = self.settings.models.get(task)
        if spec is None:
            deployed = ", ".join(self.settings.models) or "none"
            raise ApiError(404, f"no {task} model is deployed here (deployed: {deployed})",
                           param="model_type", code="model_not_found")
        return spec

    async def prepare_image(self, request: GenerateVideoRequest, params: SamplingParams) -> bytes:
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
            fitted = fit_image(image, params.width, params.height)
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
        params = resolve(request, spec)
        image_png = await self.prepare_image(request, params) if task == "i2v" else None
        explicit_seed = request.seed is not None and not request.randomize_seed
        key = fingerprint(task, spec, params, image_png) if explicit_seed else None
        return Prepared(task, spec, params, image_png, key)

    def enqueue(self, prepared: Prepared, idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Queue a prepared request; (job, cached). A cached job is an earlier identical one."""
        if idempotency_key:
            earlier = self.jobs.by_idempotency_key(idempotency_key)
            if earlier is not None:
                return earlier, False
        if prepared.fingerprint:
            earlier = self.jobs.completed_with_fingerprint(prepared.fingerprint)
            if earlier is not None and self.files.video(earlier.id).is_file():
                return earlier, True
        task, spec = prepared.task, prepared.spec
        if self.draining:
            raise ApiError(503, "the backend is shutting down; retry after it restarts",
                           type="server_error", code="shutting_down",
                           headers={"Retry-After": "30"})
        self.runner.admit(task, spec.max_queued_requests)
        job = Job(id=new_job_id(), task=task, model=spec.model, engine=spec.engine,
                  synthetic=spec.synthetic, params=prepared.params,
                  total_steps=prepared.params.num_inference_steps,
                  fingerprint=prepared.fingerprint, idempotency_key=idempotency_key)
        if prepared.image_png is not None:
            self.files.save_input(job.id, prepared.image_png)
        job = self.jobs.add(job)
        self.runner.wake(task)
        return job, False

    def enqueue_batch(self, prepared: list[Prepared]) -> list[Job]:
        """Queue all of them or none (429 when a task's queue has no room for its share)."""
        for task in {p.task for p in prepared}:
            share = sum(1 for p in prepared if p.task == task)
            self.runner.admit(task, self.spec_for(task).max_queued_requests, share)
        return [self.enqueue(p)[0] for p in prepared]

    async def submit(self, request: GenerateVideoRequest,
                     idempotency_key: str | None = None) -> tuple[Job, bool]:
        return self.enqueue(await self.prepare(request), idempotency_key)

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def page(self, limit: int, after: str | None, order: str) -> tuple[list[Job], bool]:
        return self.jobs.page(limit, after, order)

    def queue_position(self, job: Job) -> int | None:
        return self.runner.queue_position(job)

    async def cancel(self, job: Job, wait_s: float = 10.0) -> Job:
        return await self.runner.cancel(job.id, wait_s) or job

    def delete_files(self, job: Job) -> None:
        self.files.delete(job.id)
        self.jobs.delete(job.id)

    def video_file(self, job_id: str) -> Path:
        return self.files.video(job_id)

    def _save_result(self, job: Job, result: Result) -> dict[str, Any]:
        return self.files.save_result(job, result, f"/videos/{job.id}/video.mp4")

    async def generate(self, request: GenerateVideoRequest) -> dict[str, Any]:
        """Submit a job and wait for it: the synchronous route's behaviour."""
        job, cached = await self.submit(request)
        self._waiting.add(job.id)
        try:
            job = await self._wait_or_drain(job.id)
        finally:
            self._waiting.discard(job.id)
        if job.status == "failed":
            raise ApiError(500, f"generation failed: {job.error}", type="server_error",
                           code="generation_failed")
        if job.status == "cancelled":
            raise ApiError(409, f"job {job.id} was cancelled", code="cancelled")
        return {**self.response_body(job), "cached": cached}

    async def _wait_or_drain(self, job_id: str) -> Job:
        waiter = asyncio.ensure_future(self.jobs.wait(job_id, self.settings.request_timeout_s))
        drained = asyncio.ensure_future(self._drained.wait())
        try:
            await asyncio.wait({waiter, drained}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drained.cancel()
        if waiter.done():
            try:
                return waiter.result()
            except TimeoutError as exc:
                raise ApiError(504, f"job {job_id} did not finish within "
                               f"{self.settings.request_timeout_s:.0f}s; it keeps running",
                               type="server_error", code="timeout") from exc
        waiter.cancel()
        raise ApiError(503, f"the backend is shutting down; job {job_id} is kept and runs after "
                       f"the restart (GET /v1/videos/{job_id})", type="server_error",
                       code="shutting_down", headers={"Retry-After": "30"})

    async def drain(self, timeout_s: float) -> dict[str, int]:
        """Stop accepting work; give synchronous requests up to ``timeout_s`` to finish, then
        answer the rest with a 503 naming their job; stop dispatching. Jobs keep their state."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self._waiting and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        left = len(self._waiting)
        self.runner.stop()
        self._drained.set()
        await asyncio.sleep(0.2)  # let the answered requests go out
        return {"answered_503": left}

    @staticmethod
    def response_body(job: Job) -> dict[str, Any]:
        if job.result is None:
            raise ApiError(409, f"job {job.id} has no result", code="not_completed")
        return {
            "id": job.id,
            "video_id": job.id,
            "status": job.status,
            "model_type": job.task,
            "model": job.model,
            "engine": job.engine,
            "synthetic": job.synthetic,
            "attempts": job.attempts,
            **job.params.to_dict(),
            **job.result,  # frames and size as decoded
        }
