"""The ingress's facade: the few verbs the routes call (submit, get, list, cancel, delete,
content, generate, drain), over request resolution (here), the job runner
(``videoserve.core.runner``) and the job files (``videoserve.core.storage``).

It knows nothing about Ray: generators are reached through ``dispatch(task, item)``.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from videoserve.core.budget import Budget
from videoserve.core.config import ModelSpec, Settings, Task
from videoserve.core.errors import (
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
from videoserve.core.jobs import Job, JobStore, new_job_id
from videoserve.core.loras import LoraCatalog, LoraError, check_fits, first_mismatch, model_shapes
from videoserve.core.media import MediaError, decode_base64, fitted_png, image_size
from videoserve.core.model_switch import ModelManager
from videoserve.core.request import GenerateVideoRequest
from videoserve.core.runner import MODEL_UNLOADED, Dispatch, JobObserver, JobRunner, RequestCancel
from videoserve.core.sampling import LoraRef, Result, SamplingParams, resolve
from videoserve.core.storage import VideoFiles

log = logging.getLogger(__name__)
# The folder a model's replicas load (None: not known here, e.g. a Hub id fastvideo resolves).
ModelFolder = Callable[[ModelSpec], "Path | None"]
# Retry-After for requests whose model was unloaded under them: PUT /v1/models loads one again.
UNLOADED_RETRY_S = 30


def select_task(request: GenerateVideoRequest) -> Task:
    if request.model_type is not None:
        return request.model_type
    return "i2v" if request.has_image else "t2v"


def _path_error(kind: type[ServiceError], message: str, code: str) -> ServiceError:
    return kind(f"image_path: {message}", param="image_path", code=code)


def _inside(root: Path, image_path: str) -> str:
    """``image_path`` as an absolute path, refused (403) when its name alone leaves ``root``."""
    if "\x00" in image_path:
        raise _path_error(InvalidRequest, "must not contain a NUL byte", "invalid_path")
    # Joined as given (an absolute image_path replaces root) and opened as given: the kernel
    # resolves it, the descriptor's real path is the check that counts. Its normalised name
    # must already be inside, so nothing is learned about files outside.
    candidate = os.path.join(root, image_path)
    normal = Path(os.path.normpath(candidate))
    if not (normal.is_relative_to(root) or normal.is_relative_to(root.resolve())):
        raise _path_error(Forbidden, "must name a file inside the input directory",
                          "path_not_allowed")
    return candidate


def read_sandboxed(root: Path, image_path: str, max_bytes: int) -> bytes:
    """The bytes of ``image_path``, a regular file inside ``root``.

    Race-free: the file is opened once, without following a symlink in its last component
    (symlinks are refused), the real path of the opened descriptor is checked to be inside
    ``root`` (a symlinked directory that leads out is refused) and the bytes are read from that
    same descriptor, so swapping the path between the check and the read changes nothing.
    Messages never name the server's directories.
    """
    root = Path(os.path.abspath(root))
    candidate = _inside(root, image_path)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(candidate, flags)
    except OSError as exc:
        raise _open_error(exc) from None
    try:
        real = Path(os.readlink(f"/proc/self/fd/{fd}") if os.path.isdir("/proc/self/fd")
                    else os.path.realpath(candidate))
        if not real.is_relative_to(root.resolve()):
            raise _path_error(Forbidden, "must name a file inside the input directory",
                              "path_not_allowed")
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _path_error(InvalidRequest, "is not a regular file", "file_not_found")
        if info.st_size > max_bytes:
            raise _path_error(InvalidInput, f"the file is larger than {max_bytes} bytes",
                              "invalid_image")
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(max_bytes + 1)[:max_bytes]
    finally:
        os.close(fd)


def _open_error(exc: OSError) -> ServiceError:
    log.info("image_path refused: %s", exc)  # the log may name the path; the client may not
    if exc.errno == errno.ELOOP:
        return _path_error(Forbidden, "symlinks are not accepted", "path_not_allowed")
    if exc.errno == errno.ENAMETOOLONG:
        return _path_error(InvalidRequest, "the name is too long", "invalid_path")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return _path_error(Forbidden, "the file may not be read", "path_not_allowed")
    return _path_error(InvalidRequest, "no such file in the input directory", "file_not_found")


def default_model_folder(spec: ModelSpec) -> Path | None:
    """A model's folder when it is one on this machine (fetched Hub ids have ``local_path``)."""
    folder = Path(spec.local_path or spec.model).expanduser()
    return folder if folder.is_dir() else None


@dataclass(frozen=True)
class Prepared:
    """A validated request, resolved against its model and ready to queue."""

    task: Task
    spec: ModelSpec
    params: SamplingParams
    image_png: bytes | None
    fingerprint: str | None  # set only for explicit seeds: those results can be reused
    owner: str | None = None  # the caller's key hash (None: the API is open)
    request_digest: str | None = None  # the request as sent, for Idempotency-Key reuse
    preview: bool = True  # live previews while it denoises


def fingerprint(task: Task, spec: ModelSpec, params: SamplingParams,
                image_png: bytes | None, owner: str | None = None) -> str:
    # The owner is part of it: a cached result is only ever another job of the same key.
    digest = hashlib.sha256(image_png).hexdigest() if image_png else None
    key = json.dumps([task, spec.model, spec.engine, params.to_dict(), digest, owner],
                     sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


def scoped_key(idempotency_key: str, owner: str | None) -> str:
    """The stored Idempotency-Key: per owner, so two keys' clients never share one."""
    if owner is None:
        return idempotency_key
    return "owner:" + hashlib.sha256(f"{owner}\0{idempotency_key}".encode()).hexdigest()


def batch_digest(prepared: list[Prepared]) -> str:
    """A batch's request hash: never equal to a single request's, so a key stays with one."""
    digests = json.dumps([p.request_digest for p in prepared])
    return "batch:" + hashlib.sha256(digests.encode()).hexdigest()


def visible(job: Job | None, owner: str | None) -> Job | None:
    """``job`` if ``owner`` may see it: everyone when the API is open, else only its owner."""
    return job if job is not None and (owner is None or job.owner == owner) else None


class VideoService:
    """Validates requests, queues them as jobs and answers for them."""

    def __init__(self, settings: Settings, dispatch: Dispatch, models: ModelManager,
                 request_cancel: RequestCancel | None = None,
                 observer: JobObserver | None = None, model_folder: ModelFolder | None = None):
        self.settings = settings
        self.loras = LoraCatalog(settings.loras_dir, settings.lora_max_bytes)
        self._model_folder = model_folder or default_model_folder
        self._layers: dict[tuple[str, str | None], dict[str, tuple[int, ...]] | None] = {}
        self.models = models  # the models served now, and their switches
        settings.inputs_dir.mkdir(parents=True, exist_ok=True)
        self.files = VideoFiles(settings.videos_dir)
        self.jobs = JobStore(settings.output_path / "jobs.sqlite3", settings.recover_jobs)
        self.runner = JobRunner(self.jobs, dispatch, models.capacity, self.files.load_input,
                                self._save_result, request_cancel, observer,
                                has_model=lambda task: models.spec(task) is not None,
                                save_preview=self.files.save_preview)
        self.decode_budget = Budget(settings.max_decode_pixels)
        self.draining = False
        self._drained = asyncio.Event()
        self._waiting: set[str] = set()  # jobs a synchronous request is waiting for

    def start(self) -> None:
        """Recover unfinished jobs and start dispatching (call on the event loop)."""
        self.runner.start(tuple(self.settings.models))

    def current_specs(self) -> dict[Task, ModelSpec]:
        """The model each task's new jobs are validated against (unloaded tasks left out)."""
        return {task: spec for task in self.models.slots
                if (spec := self.models.spec(task)) is not None}

    def spec_for(self, task: Task) -> ModelSpec:
        spec = self.current_specs().get(task)
        if spec is None:
            if task in self.settings.models:
                raise NotFound(f"the {task} model is unloaded (PUT /v1/models/{task} "
                               "loads one)", param="model_type", code="model_not_found")
            deployed = ", ".join(self.current_specs()) or "none"
            raise NotFound(f"no {task} model is deployed here (deployed: {deployed})",
                           param="model_type", code="model_not_found")
        return spec

    def update_model(self, task: Task, **changes: Any) -> dict[str, Any]:
        """Switch ``task`` to another model, engine or replica count (see models.py)."""
        return self.models.update(task, **changes)

    def unload_model(self, task: Task) -> dict[str, Any]:
        """Stop serving ``task``; its queued jobs fail with a reason, running ones finish."""
        described = self.models.unload(task)
        self.runner.fail_queued(task)
        return described

    async def prepare_image(self, request: GenerateVideoRequest, params: SamplingParams) -> bytes:
        """The input image, decoded within the pixel limits and fitted to the output size."""
        if request.image and request.image_path:
            raise InvalidInput("give either image or image_path, not both", param="image")
        param = "image_path" if request.image_path else "image"
        try:
            if request.image_path:
                data = await asyncio.to_thread(read_sandboxed, self.settings.inputs_dir,
                                               request.image_path, self.settings.max_body_bytes)
            else:
                data = decode_base64(request.image or "")
            width, height = image_size(data, self.settings.max_image_pixels)
            # Decoding is where an image's size turns into memory: pixels decoded at once are
            # capped across requests.
            async with self.decode_budget.hold(width * height, self.settings.decode_wait_s):
                return await asyncio.to_thread(fitted_png, data, self.settings.max_image_pixels,
                                               params.width, params.height)
        except MediaError as exc:
            raise InvalidInput(f"{param}: {exc}", param=param, code="invalid_image") from exc

    async def prepare(self, request: GenerateVideoRequest, owner: str | None = None) -> Prepared:
        """Validate against the chosen model (4xx naming the field) and resolve defaults."""
        task = select_task(request)
        spec = self.spec_for(task)
        if task == "t2v" and request.has_image:
            raise InvalidInput("images are only used by image-to-video; set model_type to i2v "
                               "or leave it unset", param="image")
        if task == "i2v" and not request.has_image:
            raise InvalidInput("image-to-video needs an image: send image (base64 or data URL) "
                               "or image_path", param="image", code="image_required")
        params = resolve(request, spec)
        params = replace(params, loras=await self.resolve_loras(request, spec))
        image_png = await self.prepare_image(request, params) if task == "i2v" else None
        explicit_seed = request.seed is not None and not request.randomize_seed
        key = fingerprint(task, spec, params, image_png, owner) if explicit_seed else None
        digest = hashlib.sha256(request.model_dump_json().encode()).hexdigest()
        preview = self.settings.preview and request.preview is not False
        return Prepared(task, spec, params, image_png, key, owner, digest, preview)

    async def resolve_loras(self, request: GenerateVideoRequest,
                            spec: ModelSpec) -> tuple[LoraRef, ...]:
        """The request's LoRAs (the model's defaults when it names none), each checked: 422 for
        a bad id or a file that is no LoRA or does not fit the model, 404 for an unknown one."""
        chosen = ([(c.id, c.scale) for c in request.loras] if request.loras is not None
                  else list(spec.loras))
        refs = []
        for lora_id, scale in chosen:
            info = await asyncio.to_thread(self.loras.usable, lora_id)
            check_fits(info, await asyncio.to_thread(self.model_layers, spec), spec.model)
            refs.append(LoraRef(lora_id, scale, info.sha256 or ""))
        return tuple(refs)

    def model_layers(self, spec: ModelSpec) -> dict[str, tuple[int, ...]] | None:
        """The shapes of the model's transformer parameters (None when its folder is not
        readable here: its replica checks the LoRAs then)."""
        key = (spec.model, spec.local_path)
        if key not in self._layers:
            folder = self._model_folder(spec)
            try:
                self._layers[key] = model_shapes(folder) if folder is not None else None
            except (LoraError, OSError) as exc:
                log.info("LoRAs for %s are checked by its replicas: %s", spec.model, exc)
                self._layers[key] = None
        return self._layers[key]

    def list_loras(self) -> list[dict[str, Any]]:
        """GET /v1/loras: every file of the LoRA folder and the loaded models it fits."""
        specs = self.current_specs()
        listed = []
        for info in self.loras.scan():
            tasks = [task for task, spec in specs.items() if info.layout is not None
                     and (layers := self.model_layers(spec)) is not None
                     and first_mismatch(info.layout, layers) is None]
            listed.append(info.describe(tasks))
        return listed

    def enqueue(self, prepared: Prepared, idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Queue a prepared request; (job, cached). A cached job is an earlier identical one."""
        stored_key = scoped_key(idempotency_key, prepared.owner) if idempotency_key else None
        if stored_key:
            answered = self._answered(stored_key, prepared.request_digest)
            if answered is not None:  # a key recorded for a cache hit answers from the cache
                return answered[0], answered[0].idempotency_key != stored_key
        if prepared.fingerprint:
            earlier = self.jobs.completed_with_fingerprint(prepared.fingerprint)
            if earlier is not None and self.files.video(earlier.id).is_file():
                if stored_key:
                    self.jobs.remember_key(stored_key, [earlier.id], prepared.request_digest)
                return earlier, True
        task, spec = prepared.task, prepared.spec
        if self.draining:
            raise Unavailable("the backend is shutting down; retry after it restarts",
                              type="server_error", code="shutting_down",
                              retry_after_s=30)
        # The model may have been unloaded while the request's image was decoded: its job would
        # wait for a model that is not coming.
        self.spec_for(task)
        self.runner.admit(task, spec.max_queued_requests)
        job = Job(id=new_job_id(), task=task, model=spec.model, engine=spec.engine,
                  synthetic=spec.synthetic, params=prepared.params,
                  total_steps=prepared.params.num_inference_steps,
                  fingerprint=prepared.fingerprint, idempotency_key=stored_key,
                  owner=prepared.owner, request_digest=prepared.request_digest,
                  preview=prepared.preview)
        if prepared.image_png is not None:
            self.files.save_input(job.id, prepared.image_png)
        return self.runner.submit(job), False

    def _answered(self, stored_key: str, digest: str | None) -> list[Job] | None:
        """The jobs an earlier request with this Idempotency-Key was answered with (None: no
        such request, or one of its jobs was deleted since); 409 when it had another body."""
        earlier = self.jobs.by_idempotency_key(stored_key)
        record = ([earlier.id], earlier.request_digest) if earlier else self.jobs.remembered_key(
            stored_key)
        if record is None:
            return None
        jobs = [self.jobs.get(job_id) for job_id in record[0]]
        if not jobs or any(job is None for job in jobs):
            return None
        if record[1] not in (None, digest):
            raise Conflict("this Idempotency-Key was used for a different request; use a "
                           "new key for a new request", param="Idempotency-Key",
                           code="idempotency_key_reused")
        return jobs

    def enqueue_batch(self, prepared: list[Prepared],
                      idempotency_key: str | None = None) -> list[Job]:
        """Queue all of them or none (429 when a task's queue has no room for its share); a
        retry with the same Idempotency-Key gets the same jobs."""
        owner = prepared[0].owner if prepared else None
        stored_key = scoped_key(idempotency_key, owner) if idempotency_key else None
        digest = batch_digest(prepared)
        if stored_key:
            answered = self._answered(stored_key, digest)
            if answered is not None:
                return answered
        for task in {p.task for p in prepared}:
            share = sum(1 for p in prepared if p.task == task)
            self.runner.admit(task, self.spec_for(task).max_queued_requests, share)
        jobs = [self.enqueue(p)[0] for p in prepared]
        if stored_key:
            self.jobs.remember_key(stored_key, [job.id for job in jobs], digest)
        return jobs

    async def submit(self, request: GenerateVideoRequest, idempotency_key: str | None = None,
                     owner: str | None = None) -> tuple[Job, bool]:
        return self.enqueue(await self.prepare(request, owner), idempotency_key)

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job, if ``owner`` may see it (None: the API is open)."""
        return visible(self.jobs.get(job_id), owner)

    def page(self, limit: int, after: str | None, order: str,
             owner: str | None = None) -> tuple[list[Job], bool]:
        if after and self.get(after, owner) is None:
            # An empty page would read as the end of the list. Another key's job is answered
            # the same as one that never existed.
            raise InvalidRequest("after: no video with this id in the list; pass the last_id "
                                 "of a page", param="after", code="invalid_cursor")
        return self.jobs.page(limit, after, order, owner)

    def queue_position(self, job: Job) -> int | None:
        return self.runner.queue_position(job)

    async def cancel(self, job: Job, wait_s: float = 0.0) -> Job:
        """Cancel ``job``; answered at once (a running job is still ``in_progress``, with
        ``cancellation.requested_at`` set), or once it stopped, waiting at most ``wait_s``."""
        return await self.runner.cancel(job.id, wait_s) or job

    def delete_files(self, job: Job) -> None:
        self.files.delete(job.id)
        self.jobs.delete(job.id)

    def video_file(self, job_id: str) -> Path:
        return self.files.video(job_id)

    def preview_file(self, job: Job) -> tuple[Path, int]:
        """The job's newest live preview and its step; 409 before the first one (and always
        for a job without previews)."""
        path = self.files.preview(job.id)
        if job.preview_step is None or not path.is_file():
            why = ("this job makes no previews (it asked for none, or the server runs with "
                   "--no_preview)" if not job.preview else
                   "no preview yet: the first comes with the first denoising step")
            raise Conflict(why, code="no_preview_yet")
        return path, job.preview_step

    def _save_result(self, job: Job, result: Result) -> dict[str, Any]:
        return self.files.save_result(job, result, f"/videos/{job.id}/video.mp4")

    async def generate(self, request: GenerateVideoRequest,
                       owner: str | None = None) -> dict[str, Any]:
        """Submit a job and wait for it: the synchronous route's behaviour."""
        job, cached = await self.submit(request, owner=owner)
        self._waiting.add(job.id)
        try:
            job = await self._wait_or_drain(job.id)
        finally:
            self._waiting.discard(job.id)
        if job.status == "failed" and job.error_code == MODEL_UNLOADED:
            raise Unavailable(f"job {job.id} did not run: {job.error}", type="server_error",
                              code=MODEL_UNLOADED, retry_after_s=UNLOADED_RETRY_S)
        if job.status == "failed":
            raise JobFailed(f"job {job.id} failed: {job.error}", type="server_error",
                            code="generation_failed")
        if job.status == "cancelled":
            raise Conflict(f"job {job.id} was cancelled", code="cancelled")
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
                raise TimedOut(f"job {job_id} did not finish within "
                               f"{self.settings.request_timeout_s:.0f}s; it keeps running",
                               type="server_error", code="timeout") from exc
        waiter.cancel()
        raise Unavailable(f"the backend is shutting down; job {job_id} is kept and runs after "
                          f"the restart (GET /v1/videos/{job_id})", type="server_error",
                          code="shutting_down", retry_after_s=30)

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
            raise Conflict(f"job {job.id} has no result", code="not_completed")
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
