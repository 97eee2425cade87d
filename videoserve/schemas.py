"""Every request and response body the HTTP API speaks, and the one error shape."""

from __future__ import annotations

import unicodedata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

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
