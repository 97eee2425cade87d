"""The contract every engine implements: load a model once, turn one request into frames."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

# progress(step, total_steps): called after each finished denoising step.
ProgressFn = Callable[[int, int], None]
# should_cancel(): polled between steps; True stops the generation with GenerationCancelled.
CancelFn = Callable[[], bool]


class GenerationCancelled(Exception):
    """The generation stopped early because its job was cancelled."""


class GenerationError(RuntimeError):
    """The engine failed on this request; the engine is still usable unless it says otherwise."""


@dataclass(frozen=True)
class GenerationParams:
    """A fully resolved and validated request (defaults applied, image already fitted)."""

    prompt: str
    negative_prompt: str
    seed: int
    guidance_scale: float
    num_frames: int
    height: int
    width: int
    num_inference_steps: int
    fps: int
    image: Image.Image | None = None


@dataclass
class GenerationOutput:
    frames: np.ndarray  # (T, H, W, 3) uint8
    inference_time: float


class Engine(Protocol):
    """A loaded model. ``generate`` is called from one thread at a time."""

    name: str

    def generate(
        self, params: GenerationParams, progress: ProgressFn, should_cancel: CancelFn
    ) -> GenerationOutput: ...

    def close(self) -> None: ...
