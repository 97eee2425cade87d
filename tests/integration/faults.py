"""Engine wrappers that fail on purpose, to show that a failed generation spares the replica."""

from __future__ import annotations

from typing import Any

from videoserve.config import ModelSpec
from videoserve.engines import GenerationError, create_engine

FAIL_MARKER = "<<fail this generation>>"


class FailOnMarker:
    """Delegates to a real engine, but raises for prompts containing ``FAIL_MARKER``."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.name = engine.name

    def generate(self, params, progress, should_cancel):
        if FAIL_MARKER in params.prompt:
            progress(1, params.num_inference_steps)
            raise GenerationError("injected engine failure")
        return self.engine.generate(params, progress, should_cancel)

    def close(self) -> None:
        self.engine.close()


def fail_on_marker(spec: ModelSpec) -> FailOnMarker:
    return FailOnMarker(create_engine(spec))
