"""The fastvideo engine: FastVideo's ``VideoGenerator`` (0.2.x), on CUDA GPUs.

The generator lives in a child process (``fastvideo_host``) so that fastvideo's worker failures
(which signal their parent with SIGQUIT) end that child, never the replica. After such a failure
the request gets an error and the next request reloads the model in a fresh child.

Progress: fastvideo exposes no per-step callback, so progress is an estimate from the measured
seconds per step of earlier generations (jobs show it as ``"estimated": true``).
Cancel: a cancelled job that has not reached the generator never runs; one already running
finishes on the GPU and its result is discarded (stopping mid-way would need a model reload).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from videoserve.config import FASTVIDEO_OFFLOAD_FLAGS
from videoserve.engines.base import (
    CancelFn,
    GenerationCancelled,
    GenerationError,
    GenerationOutput,
    GenerationParams,
    ProgressFn,
)

log = logging.getLogger(__name__)
POLL_S = 0.25


def check_params(task: str, params: GenerationParams) -> None:
    """Refuse what would make a fastvideo worker fail (and cost a model reload)."""
    if params.height % 16 or params.width % 16:
        raise GenerationError("height and width must be multiples of 16")
    if params.num_frames % 4 != 1:
        raise GenerationError("num_frames must be of the form 4k+1")
    if task == "i2v" and params.image is None:
        raise GenerationError("image-to-video needs an image")
    if task == "t2v" and params.image is not None:
        raise GenerationError("text-to-video takes no image")


class FastVideoEngine:
    """Owns the child process that holds the loaded ``VideoGenerator``."""

    name = "fastvideo"

    def __init__(self, model_path: str, task: str, device: str, options: dict[str, Any]):
        self.model_path, self.task, self.device = model_path, task, device
        self.options = self._generator_options(options)
        self.healthy = False
        self.load_time = 0.0
        self._seconds_per_unit: float | None = None  # measured: s / (step * frame * pixel)
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Any = None
        self._start_child()

    @staticmethod
    def _generator_options(options: dict[str, Any]) -> dict[str, Any]:
        opts = dict(options)
        env = {"FASTVIDEO_ATTENTION_BACKEND": opts.pop("attention_backend")} if (
            "attention_backend" in opts) else {}
        env.update(opts.pop("env", {}))
        for flag in FASTVIDEO_OFFLOAD_FLAGS:
            opts.setdefault(flag, False)
        opts.setdefault("num_gpus", 1)
        opts["env"] = env
        return opts

    def _start_child(self) -> None:
        from videoserve.engines.fastvideo_host import serve_forever

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        start = time.perf_counter()
        self._proc = ctx.Process(target=serve_forever, args=(child, self.model_path,
                                                             dict(self.options)),
                                 name=f"fastvideo-{self.task}", daemon=False)
        self._proc.start()
        child.close()
        self._conn = parent
        message = self._recv_message(timeout=None)
        if message is None or message["type"] != "ready":
            detail = message.get("message") if message else "the process exited during load"
            self._stop_child()
            raise GenerationError(f"fastvideo failed to load {self.model_path}: {detail}")
        self.load_time = time.perf_counter() - start
        self.healthy = True
        log.info("fastvideo %s loaded %s in %.1fs", self.task, self.model_path, self.load_time)

    def _recv_message(self, timeout: float | None) -> dict[str, Any] | None:
        """The next message from the child; None if it died; raise TimeoutError if none yet."""
        if timeout is not None and not self._conn.poll(timeout):
            raise TimeoutError
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            return None

    def _stop_child(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._conn.close()
        if self._proc is not None:
            self._proc.join(timeout=60)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout=10)
        self._proc = self._conn = None
        self.healthy = False

    def _request_kwargs(self, params: GenerationParams, image_path: str | None) -> dict[str, Any]:
        kwargs = dict(prompt=params.prompt, negative_prompt=params.negative_prompt or None,
                      seed=params.seed, guidance_scale=params.guidance_scale,
                      num_frames=params.num_frames, height=params.height, width=params.width,
                      num_inference_steps=params.num_inference_steps, fps=params.fps,
                      save_video=False, return_frames=True)
        if image_path is not None:
            kwargs["image_path"] = image_path
        return kwargs

    def generate(
        self, params: GenerationParams, progress: ProgressFn, should_cancel: CancelFn
    ) -> GenerationOutput:
        check_params(self.task, params)
        with tempfile.TemporaryDirectory(prefix="videoserve-in-") as tmp:
            image_path = None
            if params.image is not None:
                image_path = str(Path(tmp) / "input.png")
                params.image.save(image_path)
            return self.run(self._request_kwargs(params, image_path), params, progress,
                            should_cancel)

    def run(self, kwargs: dict[str, Any], params: GenerationParams, progress: ProgressFn,
            should_cancel: CancelFn) -> GenerationOutput:
        """Send one already-checked request to the child and wait for its frames."""
        with self._lock:
            if should_cancel():
                raise GenerationCancelled()
            if self._proc is None or not self._proc.is_alive():
                self._stop_child()
                self._start_child()
            start = time.perf_counter()
            self._conn.send({"kwargs": kwargs})
            message = self._wait(params, progress, start)
            if message is None or message["type"] == "error":
                fatal = message is None or message.get("fatal", True)
                reason = message["message"] if message else "fastvideo process exited"
                if fatal:
                    # The workers are gone; the next request loads a fresh generator.
                    self._stop_child()
                raise GenerationError(f"fastvideo generation failed: {reason}")
            shape = tuple(message["shape"])
            frames = np.frombuffer(self._conn.recv_bytes(), dtype=np.uint8).reshape(shape)
            elapsed = time.perf_counter() - start
            self._learn_speed(params, elapsed)
            progress(params.num_inference_steps, params.num_inference_steps)
            if should_cancel():
                raise GenerationCancelled()
            return GenerationOutput(frames=frames, inference_time=elapsed)

    def _units(self, params: GenerationParams) -> float:
        return params.num_inference_steps * params.num_frames * params.height * params.width

    def _learn_speed(self, params: GenerationParams, elapsed: float) -> None:
        measured = elapsed / self._units(params)
        previous = self._seconds_per_unit
        self._seconds_per_unit = measured if previous is None else 0.5 * (previous + measured)

    def _wait(self, params: GenerationParams, progress: ProgressFn,
              start: float) -> dict[str, Any] | None:
        total, reported = params.num_inference_steps, 0
        while True:
            try:
                return self._recv_message(timeout=POLL_S)
            except TimeoutError:
                if self._seconds_per_unit is None:
                    continue
                expected = self._seconds_per_unit * self._units(params)
                step = min(int(total * (time.perf_counter() - start) / expected), total - 1)
                if step > reported:
                    reported = step
                    progress(step, total)

    def close(self) -> None:
        self._stop_child()
