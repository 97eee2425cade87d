"""Engine wrappers that fail on purpose, to show that a failed generation spares the replica."""

from __future__ import annotations

from typing import Any

from videoserve.core.config import ModelSpec
from videoserve.engines import Engine, GenerationError, create_engine

FAIL_MARKER = "<<fail this generation>>"


class FailOnMarker(Engine):
    """Delegates to a real engine, but raises for prompts containing ``FAIL_MARKER``."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.name = engine.name

    def generate(self, params, progress, should_cancel, preview=None):
        if FAIL_MARKER in params.prompt:
            progress("denoising", 1, params.num_inference_steps)
            raise GenerationError("injected engine failure")
        return self.engine.generate(params, progress, should_cancel, preview)

    @property
    def healthy(self) -> bool:
        return self.engine.healthy

    def stats(self) -> dict[str, Any]:
        return self.engine.stats()

    @property
    def load_breakdown(self) -> dict[str, float]:
        return self.engine.load_breakdown

    def close(self) -> None:
        self.engine.close()


def fail_on_marker(spec: ModelSpec) -> FailOnMarker:
    return FailOnMarker(create_engine(spec))


class CrashFastVideoWorker(FailOnMarker):
    """For the fastvideo engine: on the marker, send fastvideo an I2V request with no image.

    This skips the engine's own checks, so a real fastvideo worker raises and signals its parent
    with SIGQUIT, exactly as a worker failure would.
    """

    def generate(self, params, progress, should_cancel, preview=None):
        if FAIL_MARKER in params.prompt:
            kwargs = self.engine._request_kwargs(params, image_path=None)
            return self.engine.run(kwargs, params, progress, should_cancel)
        return self.engine.generate(params, progress, should_cancel, preview)


def crash_fastvideo_worker(spec: ModelSpec) -> CrashFastVideoWorker:
    return CrashFastVideoWorker(create_engine(spec))
