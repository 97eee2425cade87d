"""The one generation request (``GenerateVideoRequest``) and its field rules: validated once here
(frames 4k+1, sizes multiples of 16, prompts with something visible), whichever route sent it."""

from __future__ import annotations

import unicodedata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from videoserve.core.loras import MAX_LORAS, MAX_SCALE

MAX_PROMPT_CHARS = 2000


SEED_MAX = 2**32 - 1


# Categories that draw nothing on their own: controls, format characters (zero-width spaces
# and joiners, bidi marks), separators, unassigned and private-use code points, lone marks.
INVISIBLE_CATEGORIES = {"Cc", "Cf", "Cn", "Co", "Cs", "Zs", "Zl", "Zp", "Mn", "Me"}


# Letters and symbols that render blank all the same (Hangul fillers, the Braille blank).
BLANK_CHARACTERS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}


# Wan's frame and size rules (its VAE compresses time 4x after the first frame, space 8x, and
# the DiT patches 2x2), in one place: the request validators below and the engines' own checks
# (for callers that skip the HTTP API) both use these.
SIZE_MULTIPLE = 16
FRAMES_RULE = "of the form 4k+1 (e.g. 9, 17, 61, 81)"


def valid_frames(count: int) -> bool:
    return count % 4 == 1


def valid_side(pixels: int) -> bool:
    return pixels % SIZE_MULTIPLE == 0


def check_frames(value: int | None) -> int | None:
    if value is not None and not valid_frames(value):
        raise ValueError(f"num_frames must be {FRAMES_RULE}")
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
    if value is not None and not valid_side(value):
        raise ValueError(f"must be a multiple of {SIZE_MULTIPLE}")
    return value


class LoraChoice(BaseModel):
    """One LoRA of a request: a file of the server's LoRA folder (GET /v1/loras) and its
    strength (0 is the base model)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    scale: float = Field(default=1.0, ge=0.0, le=MAX_SCALE)

    _number = field_validator("scale", mode="before")(refuse_bool)


def check_loras(value: list[LoraChoice] | None) -> list[LoraChoice] | None:
    if value is None:
        return None
    if len(value) > MAX_LORAS:
        raise ValueError(f"at most {MAX_LORAS} LoRAs per request")
    ids = [choice.id for choice in value]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"each LoRA may be named once; repeated: {', '.join(repeated)}")
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
    preview: bool | None = Field(
        default=None, description="live previews while it denoises (GET "
        "/v1/videos/{id}/preview); default on unless the server runs with --no_preview")
    loras: list[LoraChoice] | None = Field(
        default=None, description=f"LoRA adapters and their strengths (at most {MAX_LORAS}; "
        "GET /v1/loras lists them); unset: the model's default LoRAs, [] none")

    _frames = field_validator("num_frames")(check_frames)
    _size = field_validator("height", "width")(check_multiple_of_16)
    _number = field_validator("guidance_scale", mode="before")(refuse_bool)
    _loras = field_validator("loras")(check_loras)

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
