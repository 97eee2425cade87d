"""Engines turn one validated request into frames. GPU libraries load only inside them."""

from __future__ import annotations

from pathlib import Path

from videoserve.core.config import TINY_MODEL_IDS, ModelSpec
from videoserve.engines.base import (
    Engine,
    GenerationCancelled,
    GenerationError,
    GenerationOutput,
    GenerationParams,
)

__all__ = [
    "Engine",
    "GenerationCancelled",
    "GenerationError",
    "GenerationOutput",
    "GenerationParams",
    "create_engine",
    "resolve_model_path",
]


def resolve_model_path(model: str) -> Path | str:
    """A local folder for built-in and on-disk models; hub ids are passed through unchanged."""
    for task, model_id in TINY_MODEL_IDS.items():
        if model == model_id:
            from videoserve.devtools.tiny_models import ensure_tiny_models

            return ensure_tiny_models()[task]
    path = Path(model).expanduser()
    if path.exists():
        return path
    # A path-shaped name that is not there is a typo, not a hub id: say so rather than ask
    # the hub for it (hub ids look like "org/name").
    if model.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"model folder {model} does not exist")
    return model


def warmup_params(spec: ModelSpec) -> GenerationParams:
    """A short generation at the model's default size (compiled kernels and autotuned
    convolutions are per shape): two steps, a plain grey image for I2V."""
    from PIL import Image

    d = spec.defaults
    image = Image.new("RGB", (d.width, d.height), (128, 128, 128)) if spec.task == "i2v" else None
    return GenerationParams(prompt="warm-up", negative_prompt=d.negative_prompt, seed=0,
                            guidance_scale=d.guidance_scale, num_frames=d.num_frames,
                            height=d.height, width=d.width,
                            num_inference_steps=min(2, d.num_inference_steps), fps=d.fps,
                            image=image)


def create_engine(spec: ModelSpec) -> Engine:
    """Load the engine a spec names. Slow: called once per replica."""
    path = resolve_model_path(spec.model)
    if spec.engine == "diffusers":
        from videoserve.engines.diffusers.engine import DiffusersEngine

        return DiffusersEngine(Path(path) if isinstance(path, Path) else path, spec.task,
                               spec.device, spec.engine_options)
    if spec.engine == "fastvideo":
        from videoserve.engines.fastvideo.engine import FastVideoEngine

        return FastVideoEngine(str(path), spec.task, spec.device, spec.engine_options,
                               warmup=warmup_params(spec))
    raise ValueError(f"unknown engine {spec.engine!r}")
