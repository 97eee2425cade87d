"""The contract every engine implements: load a model once, turn one request into frames."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from videoserve.protocol import SamplingParams

# progress(stage, step, total_steps): called when a stage starts ("encoding_prompt",
# "encoding_image", "denoising", "decoding", "encoding_video") and after each denoising step.
ProgressFn = Callable[[str, int, int], None]
# should_cancel(): polled between steps; True stops the generation with GenerationCancelled.
CancelFn = Callable[[], bool]


class GenerationCancelled(Exception):
    """The generation stopped early because its job was cancelled."""


class GenerationError(RuntimeError):
    """The engine failed on this request; the engine is still usable unless it says otherwise."""


@dataclass(frozen=True)
class GenerationParams(SamplingParams):
    """A fully resolved and validated request plus its image (already fitted to the size)."""

    image: Image.Image | None = None


@dataclass
class GenerationOutput:
    """A finished video, encoded in the process that held its frames."""

    mp4: bytes  # H.264 yuv420p, +faststart
    num_frames: int
    height: int
    width: int
    inference_time: float  # prompt to last decoded frame
    encoding_time: float  # MP4 encoding not hidden behind decoding


class Engine(Protocol):
    """A loaded model. ``generate`` is called from one thread at a time."""

    name: str

    def generate(
        self, params: GenerationParams, progress: ProgressFn, should_cancel: CancelFn
    ) -> GenerationOutput: ...

    def close(self) -> None: ...
