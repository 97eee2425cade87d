"""Engines turn one validated request into frames. GPU libraries load only inside them."""

from __future__ import annotations

from pathlib import Path

from videoserve.config import TINY_MODEL_IDS, ModelSpec
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
            from videoserve.tiny_models import ensure_tiny_models

            return ensure_tiny_models()[task]
    path = Path(model).expanduser()
    return path if path.exists() else model


def create_engine(spec: ModelSpec) -> Engine:
    """Load the engine a spec names. Slow: called once per replica."""
    path = resolve_model_path(spec.model)
    if spec.engine == "diffusers":
        from videoserve.engines.diffusers_engine import DiffusersEngine

        return DiffusersEngine(Path(path) if isinstance(path, Path) else path, spec.task,
                               spec.device, spec.engine_options)
    if spec.engine == "fastvideo":
        from videoserve.engines.fastvideo_engine import FastVideoEngine

        return FastVideoEngine(str(path), spec.task, spec.device, spec.engine_options)
    raise ValueError(f"unknown engine {spec.engine!r}")
