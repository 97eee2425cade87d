"""The HTTP API's bodies besides the generation request (``videoserve.core.request``): the
OpenAI-shaped create and batch requests, every response model and the one error shape."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from videoserve.core.config import Limits, SamplingDefaults
from videoserve.core.request import GenerateVideoRequest, refuse_bool


class VideoCreateRequest(GenerateVideoRequest):
    """Body of POST /v1/videos: OpenAI's fields plus every field of /generate_video."""

    model: str | None = Field(default=None, description="t2v, i2v or a deployed model id")
    size: str | None = Field(default=None, description="WIDTHxHEIGHT, e.g. 832x480")
    seconds: float | None = Field(default=None, gt=0, le=60,
                                  description="duration; mapped to num_frames at the model's fps")
    _seconds = field_validator("seconds", mode="before")(refuse_bool)


class BatchRequest(BaseModel):
    """Body of POST /v1/videos/batch."""

    model_config = ConfigDict(extra="forbid")

    requests: list[dict[str, Any]] = Field(min_length=1, max_length=64)


class AppliedLora(BaseModel):
    """A LoRA a job ran with: its id, strength and the sha256 of the file used."""

    id: str
    scale: float
    sha256: str


class GenerateVideoResponse(BaseModel):
    """Body returned by POST /generate_video once the video is written."""

    id: str
    video_id: str
    status: Literal["completed"] = "completed"
    video_url: str
    output_path: str
    model_type: Literal["t2v", "i2v"]
    model: str
    engine: str
    synthetic: bool
    prompt: str
    negative_prompt: str
    seed: int
    num_frames: int
    height: int
    width: int
    fps: int
    num_inference_steps: int
    guidance_scale: float
    loras: list[AppliedLora] = Field(default_factory=list)
    inference_time: float
    encoding_time: float
    total_time: float
    queue_time: float
    attempts: int = 1
    cached: bool = False


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    """The one error shape: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorBody


class ModelState(BaseModel):
    task: Literal["t2v", "i2v"]
    model: str | None  # None once the task's model was unloaded
    state: str
    replicas_running: int = 0
    message: str | None = None
    switching_to: str | None = None


class ModelUpdateRequest(BaseModel):
    """Body of PUT /v1/models/{model_type}: any of the three; the rest stays as it is."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=4096,
                              description="a Diffusers-format model folder or hub id")
    engine: Literal["fastvideo", "diffusers"] | None = None
    replicas: StrictInt | None = Field(None, ge=1, le=64)


class ReadyResponse(BaseModel):
    ready: bool
    models: dict[str, ModelState]


class Described(BaseModel):
    model_config = ConfigDict(extra="allow")


class ProgressDetail(Described):
    step: int
    total_steps: int
    stage: str = Field(description="the engine's stage while in progress, else the status")
    queue_position: int | None = Field(description="1 for the next job to start; None once it "
                                       "left the queue")
    eta_s: float | None = Field(description="seconds left, from the pace of the steps so far")
    estimated: bool = Field(description="kept for old records; always false now")


class VideoError(Described):
    code: str
    message: str


class VideoResult(Described):
    """What a completed job wrote (sizes and frames as decoded)."""

    output_path: str
    video_url: str
    num_frames: int
    height: int
    width: int
    inference_time: float
    encoding_time: float
    queue_time: float
    total_time: float


class VideoObject(Described):
    """A video job, in the shape of OpenAI's video object plus this service's parameters."""

    id: str
    object: Literal["video"] = "video"
    status: Literal["queued", "in_progress", "completed", "failed", "cancelled"]
    progress: int = Field(ge=0, le=100)
    progress_detail: ProgressDetail
    model: str
    model_type: Literal["t2v", "i2v"]
    engine: str
    synthetic: bool
    size: str = Field(description="WIDTHxHEIGHT")
    seconds: str
    prompt: str
    negative_prompt: str
    seed: int
    guidance_scale: float
    num_frames: int
    height: int
    width: int
    num_inference_steps: int
    fps: int
    loras: list[AppliedLora] = Field(default_factory=list)
    attempts: int
    created_at: int
    completed_at: int | None
    expires_at: int | None
    remixed_from_video_id: str | None
    error: VideoError | None = Field(description="why it failed or was cancelled; on a job that "
                                     "was retried, why")
    cancellation: dict[str, Any] | None
    result: VideoResult | None
    cached: bool = Field(description="true when an earlier identical job answered")


class ListPage(Described):
    """A page of a list, as OpenAI's list endpoints answer (``data`` is each list's own)."""

    object: Literal["list"] = "list"
    first_id: str | None
    last_id: str | None
    has_more: bool


def list_page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A ListPage of objects that have an ``id``."""
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


class VideoList(ListPage):
    data: list[VideoObject]


class BatchCreated(Described):
    object: Literal["list"] = "list"
    ids: list[str] = Field(description="the jobs' ids, in the order of the requests")


class VideoDeleted(Described):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = Field(description="false when the job was still running: it is cancelled "
                          "instead, and shown in video")
    status: str | None = None
    video: VideoObject | None = None


class ModelSwitch(Described):
    id: str
    engine: str
    replicas: int
    generation: int | None


class ModelEntry(Described):
    """A task's model; a task never deployed shows only id (None), task, state and
    generation."""

    object: Literal["model"] = "model"
    id: str | None
    task: Literal["t2v", "i2v"]
    engine: str | None = None
    device: str | None = None
    replicas: int | None = None
    synthetic: bool | None = None
    speed: str | None = None
    # The dataclasses the backend describes its models with: their fields are written once.
    defaults: SamplingDefaults | None = None
    limits: Limits | None = None
    loras: list[dict[str, Any]] = Field(default_factory=list, description="the LoRAs (id, "
                                        "scale) every request that names none runs with")
    state: str
    generation: int | None
    switching_to: ModelSwitch | None = None
    last_switch: dict[str, Any] | None = None


class LoraEntry(Described):
    """A file of the LoRA folder."""

    id: str = Field(description="the file name without .safetensors")
    object: Literal["lora"] = "lora"
    tasks: list[Literal["t2v", "i2v"]] = Field(description="the loaded models it fits")
    rank: int | None
    format: Literal["diffusers", "wan"] | None
    bytes: int
    sha256: str | None
    error: str | None = Field(default=None, description="why the file cannot be used")


class LoraList(Described):
    object: Literal["list"] = "list"
    data: list[LoraEntry]


class ModelList(Described):
    object: Literal["list"] = "list"
    data: list[ModelEntry]


class ModelPlacement(Described):
    replicas: list[dict[str, Any]] = Field(description="each replica's node_id and state")
    device: str
    speed: str


class Placement(Described):
    ingress: dict[str, Any] = Field(description="node_id: the Ray node of the ingress")
    models: dict[str, ModelPlacement]


class Health(BaseModel):
    status: Literal["ok"]


# -- webhooks (the shapes of the openai SDK's types/webhooks) -----------------------------------

class WebhookEndpointCreate(BaseModel):
    """Body of POST /v1/webhook_endpoints."""

    name: str = Field(min_length=1, max_length=256)
    url: str = Field(min_length=1, max_length=2048,
                     description="https URL of a public address (or a --webhook_allow_hosts host)")
    event_types: list[str] = Field(min_length=1, max_length=16,
                                   description="video.completed, video.failed, video.cancelled")


class WebhookEndpointUpdate(BaseModel):
    """Body of POST /v1/webhook_endpoints/{id}: the fields given are changed."""

    name: str | None = Field(default=None, min_length=1, max_length=256)
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    event_types: list[str] | None = Field(default=None, min_length=1, max_length=16)


class WebhookRotateSecret(BaseModel):
    keep_old_secret_active_for_24_hours: bool = False


class WebhookTestRequest(BaseModel):
    event_type: str


class WebhookEndpointObject(Described):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    name: str
    url: str
    event_types: list[str]
    created_at: int
    updated_at: int | None
    signing_secret_hint: str | None


class WebhookEndpointWithSecret(WebhookEndpointObject):
    signing_secret: str = Field(description="whsec_...; shown only at creation and rotation")


class WebhookEndpointList(ListPage):
    data: list[WebhookEndpointObject]


class WebhookEndpointDeleted(Described):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool


class WebhookEndpointTestResult(Described):
    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"
    webhook_endpoint_id: str
    event_type: str
    status_code: int = Field(description="the receiver's answer")
    success: Literal[True] = True


class WebhookEventTypeList(Described):
    object: Literal["list"] = "list"
    data: list[str]
