"""The ingress's job runner: the queue, dispatch to the generators, and every job transition.

Jobs wait in the durable job table, not in Ray Serve's queues: a job is dispatched only while
its task has a free generator slot (``capacity``: running replicas x their concurrent
requests), so Serve's own backpressure never refuses work that was accepted here. Admission
control happens once, at submit (``admit``). Knows nothing about Ray: generators are reached
through ``dispatch(task, item)``, which yields typed events
(``videoserve.core.sampling``); unit tests drive it with a fake.

Failure semantics: a job whose generator stream breaks (the replica died, the node went away)
or that was running when the backend stopped goes back to the queue once (``attempts``), then
fails with a reason. While the backend drains for shutdown, nothing changes state: what was
queued or running is picked up by the next start.

Every change goes through ``_put``; a ``JobObserver`` (``videoserve.core.metrics``) hears of new,
refused, started, progressing and finished jobs. Jobs queued, started and finished are logged at
INFO (progress is not: GET /v1/videos/{id}/events streams it).

A cancel answers at once: a queued job is cancelled there and then; a running one is marked
(``cancellation.requested_at``) and its generator asked to stop in the background; the job turns
``cancelled`` when the generator stops (or, past FORCE_CANCEL_S, when the runner ends its stream).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from videoserve.core.config import Task
from videoserve.core.errors import Busy, public_reason
from videoserve.core.jobs import Job, JobStore
from videoserve.core.sampling import (
    Cancelled,
    Event,
    Failed,
    Preview,
    Progress,
    Result,
    Started,
    WorkItem,
)

log = logging.getLogger(__name__)

Dispatch = Callable[[Task, WorkItem], AsyncIterator[Event]]
# How many jobs of a task the generators can run at once right now (0 while none is up).
Capacity = Callable[[Task], int]
# Asks the generator replica running a job to stop it at its next step.
RequestCancel = Callable[[str], Awaitable[None]]
MAX_ATTEMPTS = 2
WAKE_S = 1.0  # the dispatch loops also look at the queue this often (capacity changes)
DEFAULT_JOB_S = 30.0  # assumed job length until one has been measured
# A running job normally stops within a step of its cancel (seconds even for the 14B model);
# past this the runner ends the job's stream itself.
FORCE_CANCEL_S = 30.0
# The error code of jobs failed because their task's model went away (it may be loaded again).
MODEL_UNLOADED = "model_unloaded"
# Queued jobs that use the LoRAs of the job dispatched last go first, so that replicas switch
# LoRAs less often (each switch re-merges the DiT's weights); no job is passed over more than
# this many times, so first-come order is kept within that bound.
MAX_LORA_SKIPS = 2
# Whether a task has a model (serving, or being loaded) that its queued jobs can wait for.
HasModel = Callable[[Task], bool]


def lora_key(job: Job) -> tuple[tuple[str, float], ...]:
    """The LoRAs a job runs with, as a replica compares them (scale 0 is no LoRA)."""
    return tuple((lora.sha256, lora.scale) for lora in job.params.loras if lora.scale)


def pick_jobs(queued: list[Job], free: int, last: tuple | None,
              skips: dict[str, int]) -> list[Job]:
    """Up to ``free`` of the ``queued`` jobs (oldest first) to start now: the oldest, unless a
    later one has the LoRAs ``last`` and no job before it was passed over MAX_LORA_SKIPS times
    already. ``skips`` counts the passes per job id and is updated."""
    waiting, chosen = list(queued), []
    while waiting and len(chosen) < free:
        index = 0
        if last is not None and lora_key(waiting[0]) != last:
            for i, job in enumerate(waiting):
                if skips.get(job.id, 0) >= MAX_LORA_SKIPS:
                    break  # this one may not wait longer: nothing after it goes first
                if lora_key(job) == last:
                    index = i
                    break
        for passed in waiting[:index]:
            skips[passed.id] = skips.get(passed.id, 0) + 1
        job = waiting.pop(index)
        skips.pop(job.id, None)
        chosen.append(job)
        last = lora_key(job)
    return chosen


class JobObserver:
    """What the runner reports as jobs move (``videoserve.core.metrics`` counts it); does nothing.

    Calls come from the event loop, after the new state is stored."""

    def on_submitted(self, job: Job) -> None:
        """A new job was queued."""

    def on_refused(self, task: str, count: int) -> None:
        """``count`` new jobs were refused because the task's queue is full."""

    def on_started(self, job: Job) -> None:
        """A generator began the job (its ``started_at`` is set)."""

    def on_progress(self, job: Job) -> None:
        """The generator reported a stage or a step (``job.stage``, ``job.step``)."""

    def on_final(self, job: Job) -> None:
        """The job reached completed, failed or cancelled (reported once per job)."""


class ObserverFanOut(JobObserver):
    """Passes every runner report to each observer in turn; one that raises does not keep the
    others from hearing it."""

    def __init__(self, *observers: JobObserver):
        self.observers = list(observers)

    def add(self, observer: JobObserver) -> None:
        self.observers.append(observer)

    def _each(self, name: str, *args: Any) -> None:
        for observer in self.observers:
            try:
                getattr(observer, name)(*args)
            except Exception:  # noqa: BLE001
                log.exception("job observer %s failed in %s", type(observer).__name__, name)

    def on_submitted(self, job: Job) -> None:
        self._each("on_submitted", job)

    def on_refused(self, task: str, count: int) -> None:
        self._each("on_refused", task, count)

    def on_started(self, job: Job) -> None:
        self._each("on_started", job)

    def on_progress(self, job: Job) -> None:
        self._each("on_progress", job)

    def on_final(self, job: Job) -> None:
        self._each("on_final", job)


class JobRunner:
    """Owns the job state machine of one ingress."""

    def __init__(self, store: JobStore, dispatch: Dispatch, capacity: Capacity,
                 load_image: Callable[[Job], bytes | None],
                 save_result: Callable[[Job, Result], dict[str, Any]],
                 request_cancel: RequestCancel | None = None,
                 observer: JobObserver | None = None, has_model: HasModel | None = None,
                 save_preview: Callable[[Job, bytes], None] | None = None):
        self.store, self.dispatch, self.capacity = store, dispatch, capacity
        self.has_model = has_model or (lambda task: True)
        self.load_image, self.save_result = load_image, save_result
        self.save_preview = save_preview
        self.request_cancel = request_cancel
        self.observer = observer or JobObserver()
        self.stopping = False
        self._running: dict[str, asyncio.Task] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._loops: list[asyncio.Task] = []
        self._job_seconds: dict[str, float] = {}
        self._last_loras: dict[str, tuple] = {}  # per task: the LoRAs of the last job started
        self._lora_skips: dict[str, int] = {}  # queued job id -> times passed over
        self._stopping: set[asyncio.Task] = set()  # cancels being passed on to generators

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, tasks: tuple[Task, ...]) -> None:
        """Recover jobs left by a previous process, then dispatch until ``stop``."""
        self.recover(tasks)
        for task in tasks:
            self._wake[task] = asyncio.Event()
            self._loops.append(asyncio.create_task(self._dispatch_loop(task)))

    def recover(self, tasks: tuple[Task, ...]) -> None:
        """Jobs that were running when the backend stopped: queue them again, once. Jobs for a
        model this backend no longer serves fail (they would otherwise wait forever)."""
        for job in self.store.active():
            if job.task not in tasks:
                self._put(job.to("failed", error=f"the {job.task} model is not deployed "
                                 "since the backend restarted; submit the job again"))
            elif job.status == "in_progress":
                self._requeue_or_fail(job, "the backend stopped while this job was running")

    def stop(self) -> None:
        """Dispatch nothing more and leave every job's state as it is (for the next start)."""
        self.stopping = True
        for loop in self._loops:
            loop.cancel()

    def fail_queued(self, task: str, reason: str | None = None) -> int:
        """Fail every queued job of ``task`` (its model went away); how many."""
        reason = reason or (f"the {task} model was unloaded before this job started; submit "
                            "it again once a model is loaded")
        queued = [j for j in self.store.active() if j.task == task and j.status == "queued"]
        for job in queued:
            self._put(job.to("failed", error=reason, error_code=MODEL_UNLOADED))
        return len(queued)

    def wake(self, task: str | None = None) -> None:
        for name, event in self._wake.items():
            if task is None or name == task:
                event.set()

    # -- admission ---------------------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        """Queue a new (admitted) job."""
        job = self.store.add(job)
        log.info("job %s queued: %s %s, %d steps", job.id, job.task, job.model,
                 job.total_steps)
        self.observer.on_submitted(job)
        self.wake(job.task)
        return job

    def counts(self, task: str) -> tuple[int, int]:
        """(queued, running) jobs of a task."""
        active = [j for j in self.store.active() if j.task == task]
        running = sum(1 for j in active if j.status == "in_progress")
        return len(active) - running, running

    def admit(self, task: str, queue_limit: int, count: int = 1) -> None:
        """Refuse ``count`` new jobs (429 with Retry-After) when the task's queue is full."""
        queued, running = self.counts(task)
        if queued + count > queue_limit:
            wait = self.estimated_wait_s(task, queued + running)
            self.observer.on_refused(task, count)
            raise Busy(f"the {task} queue is full ({queued} jobs waiting, about "
                       f"{wait} s of work); retry later", type="server_error",
                       code="queue_full", retry_after_s=wait)

    def estimated_wait_s(self, task: str, jobs_ahead: int) -> int:
        per_job = self._job_seconds.get(task, DEFAULT_JOB_S)
        slots = max(self.capacity(task), 1)
        return max(1, math.ceil(per_job * jobs_ahead / slots))

    def queue_position(self, job: Job) -> int | None:
        if job.status != "queued":
            return None
        queued = [j.id for j in self.store.active() if j.task == job.task and j.status == "queued"]
        return queued.index(job.id) if job.id in queued else None

    # -- dispatch ----------------------------------------------------------------------------

    async def _dispatch_loop(self, task: Task) -> None:
        wake = self._wake[task]
        while not self.stopping:
            wake.clear()
            if not self.has_model(task):
                # Whichever way a job got queued for a task without a model (accepted while the
                # model went away, or retried after it did), nothing would ever run it.
                self.fail_queued(task)
            running = sum(1 for t in self._running.values() if t.get_name() == task)
            free = self.capacity(task) - running
            if free > 0:
                queued = [j for j in self.store.active() if j.task == task and j.status == "queued"]
                for gone in set(self._lora_skips) - {j.id for j in queued}:
                    del self._lora_skips[gone]  # cancelled or deleted while queued
                for job in pick_jobs(queued, free, self._last_loras.get(task), self._lora_skips):
                    self._last_loras[task] = lora_key(job)
                    self._start_job(job)
            try:
                await asyncio.wait_for(wake.wait(), WAKE_S)
            except TimeoutError:
                pass

    def _start_job(self, job: Job) -> None:
        job = self._put(job.to("in_progress"))
        self._running[job.id] = asyncio.create_task(self._run(job.id), name=job.task)

    async def _run(self, job_id: str) -> None:
        job = self.store.get(job_id)
        assert job is not None
        reason = "the generator ended the job without a result"
        try:
            image = await asyncio.to_thread(self.load_image, job)
            stream = self.dispatch(job.task, WorkItem(job.id, job.params, image,
                                                      preview=job.preview))
            async for event in stream:
                if await self._on_event(job_id, event):
                    break
        except asyncio.CancelledError:
            reason = "the job's stream was ended"  # by _force_cancel (or the loop stopping)
        except Exception as exc:  # noqa: BLE001 - the replica died or could not be reached
            reason = f"the generator replica was lost ({type(exc).__name__})"
            log.warning("job %s: %s: %s", job_id, reason, exc)
        finally:
            self._running.pop(job_id, None)
            self.wake(job.task)
        job = self.store.get(job_id)
        if job is None or job.status != "in_progress" or self.stopping:
            return
        if job.cancellation is not None:  # it was asked to stop: it stopped, not failed
            record = {**job.cancellation, "stopped_at_step": job.step,
                      "stopped_in_stage": job.stage}
            self._put(job.to("cancelled", cancellation=record, stage=None))
        else:
            self._requeue_or_fail(job, reason)

    def _requeue_or_fail(self, job: Job, reason: str) -> None:
        if not self.has_model(job.task):
            self._put(job.to("failed", error=f"{reason}, and the {job.task} model has been "
                             "unloaded since", error_code=MODEL_UNLOADED))
        elif job.attempts < MAX_ATTEMPTS:
            log.info("job %s: %s; queued again (attempt %d done)", job.id, reason, job.attempts)
            self._put(job.to("queued", error=f"retried after: {reason}"))
            self.wake(job.task)
        else:
            self._put(job.to("failed", error=f"{reason}; gave up after {job.attempts} "
                             "attempts"))

    async def _on_event(self, job_id: str, event: Event) -> bool:
        """Apply one generator event; True when the job has ended."""
        job = self.store.get(job_id)
        if job is None or job.done:
            return True  # cancelled or deleted while the event was on its way
        match event:
            case Started(model=model, engine=engine, synthetic=synthetic):
                # The generator names its model: after a switch it differs from the submit's.
                changes = ({"model": model, "engine": engine, "synthetic": synthetic}
                           if model else {})
                job = self._put(job.to("in_progress", started_at=time.time(), stage="starting",
                                       **changes))
                log.info("job %s started: %s %s (attempt %d)", job_id, job.task, job.model,
                         job.attempts)
                self.observer.on_started(job)
            case Progress(stage=stage, step=step, total_steps=total):
                job = self._put(job.to("in_progress", step=max(job.step, step),
                                       total_steps=total, stage=stage))
                self.observer.on_progress(job)
            case Preview(step=step, webp=webp):
                if self.save_preview is not None:
                    await asyncio.to_thread(self.save_preview, job, webp)
                    self._put(job.to("in_progress", preview_step=step))
            case Result():
                result = await asyncio.to_thread(self.save_result, job, event)
                self._learn(job)
                self._put(job.to("completed", result=result, step=job.total_steps,
                                 stage=None, error=None))
            case Cancelled():
                record = {**(job.cancellation or {}),
                          "cancel_received_at_step": event.cancel_received_at_step,
                          "stopped_at_step": event.stopped_at_step,
                          "stopped_in_stage": event.stopped_in_stage}
                self._put(job.to("cancelled", cancellation=record, stage=None))
            case Failed(message=message):
                # Clients get the reason without server internals; the log keeps it whole.
                log.warning("job %s failed: %s", job_id, message)
                self._put(job.to("failed", error=public_reason(message), stage=None))
        return self.store.get(job_id) is None or self.store.get(job_id).done

    def _put(self, job: Job) -> Job:
        """Store a job's new version. Every change the runner makes goes through here, so the
        observer hears of each job reaching a final state, once."""
        before = self.store.get(job.id)
        job = self.store.put(job)
        if job.done and not (before is not None and before.done):
            took = (f" in {job.finished_at - job.started_at:.1f}s"
                    if job.finished_at and job.started_at else "")
            log.info("job %s finished: %s%s at step %d/%d%s", job.id, job.status, took,
                     job.step, job.total_steps, f" ({job.error})" if job.error and
                     job.status == "failed" else "")
            self.observer.on_final(job)
        return job

    def _learn(self, job: Job) -> None:
        if job.started_at is None:
            return
        measured = time.time() - job.started_at
        before = self._job_seconds.get(job.task)
        self._job_seconds[job.task] = measured if before is None else 0.7 * before + 0.3 * measured

    # -- cancel ------------------------------------------------------------------------------

    async def cancel(self, job_id: str, wait_s: float = 0.0) -> Job | None:
        """Cancel a queued job at once. A running one is marked (``cancellation``) and its
        generator asked to stop in the background; answered at once (``wait_s`` 0) or once it
        stopped, waiting at most ``wait_s``. A second cancel keeps the first one's record."""
        job = self.store.get(job_id)
        if job is None or job.done:
            return job
        requested = {"requested_at": time.time(), "requested_at_step": job.step}
        if job.status == "queued":
            log.info("job %s: cancelled while queued", job_id)
            return self._put(job.to("cancelled", cancellation=requested))
        if job.cancellation is None:
            log.info("job %s: cancel requested at step %d", job_id, job.step)
            job = self._put(job.to("in_progress", cancellation=requested))
            stopping = asyncio.create_task(self._stop(job_id))
            self._stopping.add(stopping)
            stopping.add_done_callback(self._stopping.discard)
        if wait_s > 0:
            try:
                return await self.store.wait(job_id, wait_s)
            except (TimeoutError, KeyError):
                pass
        return self.store.get(job_id)

    async def _stop(self, job_id: str) -> None:
        """Pass a cancel on to the generator running the job, then make sure it ends."""
        if self.request_cancel is not None:
            try:
                await self.request_cancel(job_id)
            except Exception as exc:  # noqa: BLE001 - _force_cancel still ends the job
                log.warning("job %s: could not pass the cancel on to its generator: %s",
                            job_id, exc)
        await self._force_cancel(job_id, FORCE_CANCEL_S)

    async def _force_cancel(self, job_id: str, after_s: float) -> None:
        """If the generator has not stopped a cancelled job by then, end its stream: Serve
        cancels the request on the replica, whose worker stops the engine at the next step."""
        try:
            await self.store.wait(job_id, after_s)
        except KeyError:
            return  # deleted
        except TimeoutError:
            task = self._running.get(job_id)
            if task is not None:
                log.warning("job %s: the generator did not stop it; ending its stream", job_id)
                task.cancel()
