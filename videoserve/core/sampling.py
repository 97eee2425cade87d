"""What travels from the route to the engine and back, typed once.

``SamplingParams`` is a request resolved against its model's defaults and limits (the way vLLM's
``to_sampling_params`` turns a request into one object): it is built once by ``resolve`` and
carried unchanged through the job record, the queue, the generator replica and the engine.
A sampling parameter is declared in ``schemas.GenerateVideoRequest`` (what clients may send)
and here (its resolved type); model defaults (``config.SamplingDefaults``) and limits
(``config.Limits``, named ``max_<field>``) are found by name.

Between a generator replica and the ingress, events are frozen dataclasses handled with
``match``: ``Started``, ``Progress``, ``Preview``, ``Result``, ``Cancelled``, ``Failed``.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, fields
from typing import Any

from videoserve.core.config import ModelSpec
from videoserve.core.errors import InvalidInput
from videoserve.core.request import SEED_MAX


@dataclass(frozen=True)
class LoraRef:
    """A LoRA applied to one generation: its id in the LoRA folder, its strength, and the
    sha256 of the file it was checked against (a replica refuses a file changed since)."""

    id: str
    scale: float
    sha256: str


@dataclass(frozen=True)
class SamplingParams:
    """One generation's parameters, resolved and within the model's limits."""

    prompt: str
    negative_prompt: str
    seed: int
    guidance_scale: float
    num_frames: int
    height: int
    width: int
    num_inference_steps: int
    fps: int
    # Resolved by the service against the LoRA folder (``videoserve.core.loras``).
    loras: tuple[LoraRef, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["loras"] = [asdict(lora) for lora in self.loras]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplingParams:
        values = {f.name: data[f.name] for f in fields(cls) if f.name != "loras"}
        # Jobs stored before LoRAs existed have none.
        loras = tuple(LoraRef(**lora) for lora in data.get("loras") or ())
        return cls(**values, loras=loras)


# Taken from the request when given, else from the model's SamplingDefaults (same names).
DEFAULTED = tuple(f.name for f in fields(SamplingParams)
                  if f.name not in ("prompt", "seed", "loras"))


def resolve(request: Any, spec: ModelSpec) -> SamplingParams:
    """Apply the model's defaults to a request and check its limits (422 names the field)."""
    values: dict[str, Any] = {"prompt": request.prompt}
    for name in DEFAULTED:
        given = getattr(request, name, None)
        values[name] = given if given is not None else getattr(spec.defaults, name)
    explicit = request.seed is not None and not request.randomize_seed
    values["seed"] = request.seed if explicit else secrets.randbelow(SEED_MAX + 1)
    params = SamplingParams(**values)
    check_limits(params, spec)
    return params


def check_limits(params: SamplingParams, spec: ModelSpec) -> None:
    limits = spec.limits
    for name in DEFAULTED:
        bound = getattr(limits, f"max_{name}", None)
        if bound is not None and getattr(params, name) > bound:
            raise InvalidInput(f"{name}: at most {bound} for model {spec.model}", param=name,
                               code="out_of_range")
    if params.height * params.width > limits.max_pixels:
        raise InvalidInput(f"width: height x width must be at most {limits.max_pixels} pixels "
                           f"for model {spec.model}", param="width", code="out_of_range")


@dataclass(frozen=True)
class WorkItem:
    """One generation as sent from the ingress to a generator replica."""

    job_id: str
    params: SamplingParams
    image_png: bytes | None = None
    preview: bool = True  # live previews of the denoising (GET /v1/videos/{id}/preview)


@dataclass(frozen=True)
class Started:
    # The model of the replica that took the job (it may differ from the one the job was
    # submitted under when the model was switched meanwhile).
    model: str = ""
    engine: str = ""
    synthetic: bool = False


@dataclass(frozen=True)
class Progress:
    stage: str  # encoding_prompt, encoding_image, denoising, decoding, encoding_video
    step: int
    total_steps: int


@dataclass(frozen=True)
class Preview:
    """The latent of a denoising step as a small WebP (at most ~2 a second)."""

    step: int
    webp: bytes


@dataclass(frozen=True)
class Result:
    mp4: bytes
    num_frames: int
    height: int
    width: int
    inference_time: float
    encoding_time: float


@dataclass(frozen=True)
class Cancelled:
    stopped_at_step: int
    stopped_in_stage: str | None
    cancel_received_at_step: int | None
    # "cancelled" (asked to) or "orphaned" (nobody is waiting for the result any more).
    reason: str = "cancelled"


@dataclass(frozen=True)
class Failed:
    message: str


Event = Started | Progress | Preview | Result | Cancelled | Failed
