"""What runs inside a generator replica: one engine, one generation at a time, events out.

The engine is created and used from one dedicated thread (engines are not thread-safe, and the
diffusers engine's torch state is per thread). ``run`` streams events back to the caller:
``started``, ``progress`` (each stage start and each denoising step), then exactly one of
``result`` (with the MP4 bytes the engine encoded, so no shared filesystem is needed between
nodes), ``cancelled`` or ``error``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from videoserve.core.config import ModelSpec
from videoserve.core.loras import LORA_SUFFIX
from videoserve.core.media import png_to_image, remove_orphaned_temp_files
from videoserve.core.sampling import (
    Cancelled,
    Event,
    Failed,
    Preview,
    Progress,
    Result,
    SamplingParams,
    Started,
    WorkItem,
)
from videoserve.engines import Engine, GenerationCancelled, GenerationParams, create_engine
from videoserve.engines.base import GenerationError, LoraFile

log = logging.getLogger(__name__)

EngineFactory = Callable[[ModelSpec], Engine]


class CancelSignal(Protocol):
    """Where the ingress's cancel requests for running jobs arrive."""

    async def wait(self, job_id: str) -> bool:
        """True when ``job_id`` is cancelled; False once released. Raises when the ingress that
        owns the job is gone (its result has nobody to go to)."""

    async def release(self, job_id: str) -> None: ...


def lora_files(spec: ModelSpec, params: SamplingParams) -> tuple[LoraFile, ...]:
    """Where this replica reads a job's LoRAs: the ingress's LoRA folder, at the same path."""
    if not params.loras:
        return ()
    if spec.lora_dir is None:
        raise GenerationError("this replica has no LoRA folder")
    folder = Path(spec.lora_dir)
    return tuple(LoraFile(lora.id, str(folder / (lora.id + LORA_SUFFIX)), lora.sha256,
                          lora.scale) for lora in params.loras)


@dataclass
class _Run:
    """Where one generation has got to (written by the engine thread, read on cancel)."""

    step: int = 0
    stage: str | None = None
    cancel_received_at: int | None = None
    orphaned: bool = False


class GeneratorWorker:
    """Owns one loaded engine and runs work items on its dedicated thread."""

    def __init__(self, spec: ModelSpec, engine_factory: EngineFactory = create_engine,
                 cancel_signal: CancelSignal | None = None):
        self.spec = spec
        self.cancel_signal = cancel_signal
        self.generations = 0
        self.orphans_stopped = 0  # jobs stopped because their ingress was gone
        self.last_orphan: dict[str, Any] | None = None
        # A replica killed while encoding leaves its temp MP4; the one replacing it removes it.
        remove_orphaned_temp_files()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{spec.task}-engine")
        # Wall-clock start: set against the backend's own start it shows how long the replica
        # waited for Ray and Serve before its model began to load.
        self.load_started_at = time.time()
        start = time.perf_counter()
        self.engine: Engine = self._executor.submit(engine_factory, spec).result()
        self.load_time = time.perf_counter() - start
        breakdown = self.engine.load_breakdown
        log.info("%s model %s loaded in %.1fs%s", spec.task, spec.model, self.load_time,
                 f" ({breakdown})" if breakdown else "")

    def check_health(self) -> None:
        if not self.engine.healthy:
            raise RuntimeError(f"{self.spec.task} engine is not usable")

    def info(self) -> dict[str, Any]:
        stats = self.engine.stats()
        return {**self.spec.describe(), "load_time": round(self.load_time, 3),
                "load_started_at": self.load_started_at, "pid": os.getpid(),
                "generations": self.generations, "orphans_stopped": self.orphans_stopped,
                "last_orphan": self.last_orphan,
                **stats}

    async def run(self, item: WorkItem) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event | None] = asyncio.Queue()
        cancel = threading.Event()

        def emit(event: Event | None) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        run = _Run()
        self._executor.submit(self._generate, item, emit, cancel, run)
        watcher = asyncio.create_task(self._watch_cancel(item.job_id, cancel, run))
        try:
            while (event := await events.get()) is not None:
                yield event
        finally:
            # Finished, or the caller went away or cancelled: stop the engine at its next step.
            cancel.set()
            watcher.cancel()
            if self.cancel_signal is not None:
                asyncio.ensure_future(self._release(item.job_id))

    async def _release(self, job_id: str) -> None:
        try:
            await self.cancel_signal.release(job_id)
        except Exception:  # noqa: BLE001 - the board went with its ingress; nothing to release
            pass

    async def _watch_cancel(self, job_id: str, cancel: threading.Event, run: _Run) -> None:
        if self.cancel_signal is None:
            return
        try:
            if await self.cancel_signal.wait(job_id):
                cancel.set()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the ingress that owns this job is gone
            log.warning("job %s: its ingress is gone; stopping it at the next step", job_id)
            run.orphaned = True
            self.orphans_stopped += 1
            cancel.set()

    def _generate(self, item: WorkItem, emit: Callable[[Event | None], None],
                  cancel: threading.Event, run: _Run) -> None:
        try:
            if cancel.is_set():
                emit(Cancelled(0, None, None))
                return
            emit(Started(self.spec.model, self.spec.engine, self.spec.synthetic))
            image = png_to_image(item.image_png) if item.image_png else None
            params = GenerationParams(
                **{f.name: getattr(item.params, f.name) for f in fields(SamplingParams)},
                image=image, lora_files=lora_files(self.spec, item.params))

            def progress(stage: str, step: int, total: int) -> None:
                run.step, run.stage = step, stage
                emit(Progress(stage, step, total))

            def should_cancel() -> bool:
                # The step is recorded when the engine takes the cancel in, not when it reached
                # this replica: the engine has then read every step its pipeline reported, so
                # the record is the step the cancel really met.
                if not cancel.is_set():
                    return False
                if run.cancel_received_at is None:
                    run.cancel_received_at = run.step
                return True

            def preview(step: int, webp: bytes) -> None:
                emit(Preview(step, webp))

            self.generations += 1
            output = self.engine.generate(params, progress, should_cancel,
                                          preview if item.preview else None)
            emit(Result(output.mp4, output.num_frames, output.height, output.width,
                        output.inference_time, output.encoding_time))
        except GenerationCancelled:
            if run.orphaned:
                self.last_orphan = {"job_id": item.job_id, "stopped_at_step": run.step,
                                    "noticed_at_step": run.cancel_received_at}
            emit(Cancelled(run.step, run.stage, run.cancel_received_at,
                           "orphaned" if run.orphaned else "cancelled"))
        except Exception as exc:  # noqa: BLE001 - reported to the client; the replica lives on
            log.exception("generation %s failed", item.job_id)
            emit(Failed(f"{type(exc).__name__}: {exc}"))
        finally:
            emit(None)

    def close(self) -> None:
        self._executor.submit(self.engine.close).result()
        self._executor.shutdown(wait=False, cancel_futures=True)
