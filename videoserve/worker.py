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
from dataclasses import dataclass
from typing import Any, Protocol

from videoserve.config import ModelSpec
from videoserve.engines import GenerationCancelled, GenerationParams, create_engine
from videoserve.media import png_to_image

log = logging.getLogger(__name__)

EngineFactory = Callable[[ModelSpec], Any]


class CancelSignal(Protocol):
    """Where the ingress's cancel requests for running jobs arrive."""

    async def wait(self, job_id: str) -> bool:
        """True when ``job_id`` is cancelled; False once released."""

    async def release(self, job_id: str) -> None: ...


@dataclass(frozen=True)
class WorkItem:
    """One generation as sent from the ingress to a generator replica."""

    job_id: str
    # Every GenerationParams field but the image, which travels as PNG bytes.
    params: dict[str, Any]
    image_png: bytes | None = None

    @property
    def fps(self) -> int:
        return self.params["fps"]

    def to_params(self) -> GenerationParams:
        image = png_to_image(self.image_png) if self.image_png else None
        return GenerationParams(**self.params, image=image)


class GeneratorWorker:
    """Owns one loaded engine and runs work items on its dedicated thread."""

    def __init__(self, spec: ModelSpec, engine_factory: EngineFactory = create_engine,
                 cancel_signal: CancelSignal | None = None):
        self.spec = spec
        self.cancel_signal = cancel_signal
        self.generations = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{spec.task}-engine")
        start = time.perf_counter()
        self.engine = self._executor.submit(engine_factory, spec).result()
        self.load_time = time.perf_counter() - start
        log.info("%s model %s loaded in %.1fs", spec.task, spec.model, self.load_time)

    def check_health(self) -> None:
        healthy = getattr(self.engine, "healthy", True)
        if not healthy:
            raise RuntimeError(f"{self.spec.task} engine is not usable")

    def info(self) -> dict[str, Any]:
        stats = getattr(self.engine, "stats", dict)()
        return {**self.spec.describe(), "load_time": round(self.load_time, 3), "pid": os.getpid(),
                "generations": self.generations, **stats}

    async def run(self, item: WorkItem) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        cancel = threading.Event()

        def emit(event: dict[str, Any] | None) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        reached = {"step": 0, "stage": None, "cancel_received_at": None}
        self._executor.submit(self._generate, item, emit, cancel, reached)
        watcher = asyncio.create_task(self._watch_cancel(item.job_id, cancel, reached))
        try:
            while (event := await events.get()) is not None:
                yield event
        finally:
            # Finished, or the caller went away or cancelled: stop the engine at its next step.
            cancel.set()
            watcher.cancel()
            if self.cancel_signal is not None:
                asyncio.ensure_future(self.cancel_signal.release(item.job_id))

    async def _watch_cancel(self, job_id: str, cancel: threading.Event, reached: dict) -> None:
        if self.cancel_signal is None:
            return
        try:
            if await self.cancel_signal.wait(job_id):
                reached["cancel_received_at"] = reached["step"]
                cancel.set()
        except Exception:  # noqa: BLE001 - a lost cancel board must not fail the job
            log.warning("cancel board unreachable; job %s can only be dropped", job_id)

    def _generate(self, item: WorkItem, emit: Callable, cancel: threading.Event,
                  reached: dict[str, Any]) -> None:
        try:
            if cancel.is_set():
                emit({"type": "cancelled"})
                return
            emit({"type": "started", "time": time.time()})
            params = item.to_params()

            def progress(stage: str, step: int, total: int) -> None:
                reached["step"], reached["stage"] = step, stage
                emit({"type": "progress", "stage": stage, "step": step, "total_steps": total})

            self.generations += 1
            output = self.engine.generate(params, progress, cancel.is_set)
            emit({
                "type": "result",
                "mp4": output.mp4,
                "num_frames": output.num_frames,
                "height": output.height,
                "width": output.width,
                "inference_time": output.inference_time,
                "encoding_time": output.encoding_time,
            })
        except GenerationCancelled:
            emit({"type": "cancelled", "stopped_at_step": reached["step"],
                  "stopped_in_stage": reached["stage"],
                  "cancel_received_at_step": reached["cancel_received_at"]})
        except Exception as exc:  # noqa: BLE001 - reported to the client; the replica lives on
            log.exception("generation %s failed", item.job_id)
            emit({"type": "error", "message": f"{type(exc).__name__}: {exc}"})
        finally:
            emit(None)

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            self._executor.submit(close).result()
        self._executor.shutdown(wait=False, cancel_futures=True)
