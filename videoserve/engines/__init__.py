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
    "model_source",
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


def model_source(spec: ModelSpec) -> Path | str:
    """What a replica loads: the folder the backend fetched a Hub model into (its
    ``local_path``), else ``resolve_model_path(spec.model)``."""
    if spec.local_path is None:
        return resolve_model_path(spec.model)
    path = Path(spec.local_path)
    if not path.is_dir():
        # The backend fetched it on its own node: in a cluster, this one may not have it.
        raise FileNotFoundError(
            f"model {spec.model}: its folder {spec.local_path} (where the backend fetched it) "
            "does not exist on this node; in a Ray cluster every GPU node needs it at the same "
            "path (shared storage, or the same Hugging Face cache: run `ray_serve_backend.py "
            "--download_only` with the same flags on each node)")
    return path


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
    path = model_source(spec)
    if spec.engine == "diffusers":
        from videoserve.engines.diffusers.engine import DiffusersEngine

        return DiffusersEngine(Path(path) if isinstance(path, Path) else path, spec.task,
                               spec.device, spec.engine_options)
    if spec.engine == "fastvideo":
        from videoserve.engines.fastvideo.engine import FastVideoEngine

        # A fetched Hub model keeps its id for fastvideo's choice of pipeline config.
        return FastVideoEngine(str(path), spec.task, spec.device, spec.engine_options,
                               warmup=warmup_params(spec),
                               hub_id=spec.model if spec.local_path else None)
    raise ValueError(f"unknown engine {spec.engine!r}")
