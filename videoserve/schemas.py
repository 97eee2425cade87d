"""Every request and response body the HTTP API speaks, and the one error shape."""

from __future__ import annotations

import unicodedata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from videoserve.config import Limits, SamplingDefaults

MAX_PROMPT_CHARS = 2000
SEED_MAX = 2**32 - 1
# Categories that draw nothing on their own: controls, format characters (zero-width spaces
# and joiners, bidi marks), separators, unassigned and private-use code points, lone marks.
INVISIBLE_CATEGORIES = {"Cc", "Cf", "Cn", "Co", "Cs", "Zs", "Zl", "Zp", "Mn", "Me"}
# Letters and symbols that render blank all the same (Hangul fillers, the Braille blank).
BLANK_CHARACTERS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}


def check_frames(value: int | None) -> int | None:
    if value is not None and value % 4 != 1:
        raise ValueError("num_frames must be of the form 4k+1 (e.g. 9, 17, 61, 81)")
    return value


def refuse_bool(value: Any) -> Any:
    # JSON true is not the number 1 (pydantic's floats would take it as 1.0).
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


def has_visible_character(text: str) -> bool:
    return any(not char.isspace() and char not in BLANK_CHARACTERS
               and unicodedata.category(char) not in INVISIBLE_CATEGORIES for char in text)


def check_multiple_of_16(value: int | None) -> int | None:
    if value is not None and value % 16:
        raise ValueError("must be a multiple of 16")
    return value


class GenerateVideoRequest(BaseModel):
    """Body of POST /generate_video. Unset parameters take the chosen model's defaults."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model_type: Literal["t2v", "i2v"] | None = Field(
        default=None, description="t2v or i2v; when unset, i2v if an image is given, else t2v"
    )
    image_path: str | None = Field(
        default=None, description="An image file inside the backend's input directory (I2V)"
    )
    image: str | None = Field(
        default=None, description="Base64 image or data URL (I2V), for clients on other machines"
    )
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    # Integers are strict: true, 9.0 and "9" are refused (multipart form fields are converted
    # before validation, see videos.read_create_body); floats take integers.
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX, strict=True)
    randomize_seed: bool = False
    guidance_scale: float | None = Field(default=None, ge=0.0, le=50.0)
    num_frames: int | None = Field(default=None, ge=1, le=1025, strict=True)
    height: int | None = Field(default=None, ge=16, le=4096, strict=True)
    width: int | None = Field(default=None, ge=16, le=4096, strict=True)
    num_inference_steps: int | None = Field(default=None, ge=1, le=1000, strict=True)
    fps: int | None = Field(default=None, ge=1, le=120, strict=True)

    _frames = field_validator("num_frames")(check_frames)
    _size = field_validator("height", "width")(check_multiple_of_16)
    _number = field_validator("guidance_scale", mode="before")(refuse_bool)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be blank")
        if not has_visible_character(value):
            raise ValueError("prompt has no visible characters")
        return value

    @property
    def has_image(self) -> bool:
        return bool(self.image or self.image_path)


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


# Response shapes below document the routes that return plain dicts (``responses=`` only, no
# ``response_model``): FastAPI neither filters nor coerces those answers, and ``extra="allow"``
# says in the schema that a key added later is part of the answer too.


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


class VideoList(Described):
    object: Literal["list"] = "list"
    data: list[VideoObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


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
    state: str
    generation: int | None
    switching_to: ModelSwitch | None = None
    last_switch: dict[str, Any] | None = None


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
