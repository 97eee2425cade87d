"""The contract every engine implements: load a model once, turn one request into frames."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from videoserve.core.sampling import SamplingParams
from videoserve.engines.preview import PreviewFn

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
class LoraFile:
    """One LoRA of a generation, as the replica reads it (``videoserve.engines.lora``)."""

    id: str
    path: str
    sha256: str  # the file's when the job was admitted: a file changed since is refused
    scale: float


@dataclass(frozen=True)
class GenerationParams(SamplingParams):
    """A fully resolved and validated request plus its image (already fitted to the size)
    and the files of its LoRAs."""

    image: Image.Image | None = None
    lora_files: tuple[LoraFile, ...] = ()


@dataclass
class GenerationOutput:
    """A finished video, encoded in the process that held its frames."""

    mp4: bytes  # H.264 yuv420p, +faststart
    num_frames: int
    height: int
    width: int
    inference_time: float  # prompt to last decoded frame
    encoding_time: float  # MP4 encoding not hidden behind decoding


class Engine(abc.ABC):
    """A loaded model, owned by one generator replica. Created, used and closed from that
    replica's one engine thread: ``generate`` is never called concurrently."""

    name: str  # the engine's name in specs and in the generator's info ("diffusers", ...)

    @abc.abstractmethod
    def generate(
        self, params: GenerationParams, progress: ProgressFn, should_cancel: CancelFn,
        preview: PreviewFn | None = None,
    ) -> GenerationOutput:
        """One video. Raises GenerationCancelled once ``should_cancel()`` is True, and
        GenerationError (or any exception) for a failed request: the replica lives on.
        ``preview`` (when given) receives live previews of the denoising steps
        (``videoserve.engines.preview``); an engine without them never calls it."""

    def close(self) -> None:  # noqa: B027 - a no-op by design, not a missing override
        """Release the model (GPU memory, child processes) when the replica shuts down."""

    @property
    def healthy(self) -> bool:
        """False when the engine can no longer generate: the replica's health check fails and
        Serve replaces it. A failed request alone does not make an engine unhealthy."""
        return True

    def stats(self) -> dict[str, Any]:
        """Extra fields for the generator's info (JSON-serialisable)."""
        return {}

    @property
    def load_breakdown(self) -> dict[str, float]:
        """Seconds spent in each stage of the load, logged once the model is loaded."""
        return {}
