"""The video jobs API in the shape of OpenAI's videos API (as SGLang and vLLM-Omni serve it).

OpenAI's ``model``, ``size`` ("WxH"), ``seconds`` and ``input_reference`` map onto this
service's own parameters, which are accepted alongside them.
"""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from videoserve.core.config import ModelSpec
from videoserve.core.jobs import Job
from videoserve.core.request import GenerateVideoRequest
from videoserve.http.errors import ApiError
from videoserve.http.schemas import VideoCreateRequest

SIZE = re.compile(r"^\s*([0-9]+)\s*[xX×]\s*([0-9]+)\s*$")
# More digits than any accepted size has; longer numbers are refused before int() sees them
# (int() of thousands of digits raises, and costs time).
SIZE_DIGITS = 5
# The forms of OpenAI's input_reference understood here: an image (data URL or base64), as a
# string or as {"image_url": ...} / {"url": ...}. Uploaded file ids are not.
REFERENCE_KEYS = ("image_url", "url")


# Multipart form fields arrive as text; these become integers before (strict) validation.
INT_FIELDS = tuple(name for name, info in GenerateVideoRequest.model_fields.items()
                   if info.annotation == int | None)
INTEGER = re.compile(r"^\s*[+-]?\d{1,12}\s*$")


async def read_create_body(request: Request) -> dict[str, Any]:
    """The fields of a JSON or multipart/form-data POST (files become data URLs)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                kind = value.content_type or "image/png"
                value = f"data:{kind};base64," + base64.b64encode(data).decode()
            elif key in INT_FIELDS and INTEGER.match(value):
                value = int(value)
            elif key == "loras":
                value = form_json(key, value)
            fields[key] = value
        return fields
    try:
        body = await request.json()
    except RecursionError as exc:
        raise ApiError(400, "the body is nested too deeply", code="invalid_json") from exc
    except ValueError as exc:
        raise ApiError(422, "the body is not valid JSON", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise ApiError(422, "the body must be a JSON object", code="invalid_json")
    return body


def form_json(key: str, value: str) -> Any:
    """A form field that holds JSON (``loras``: a JSON array of {"id", "scale"})."""
    try:
        return json.loads(value)
    except ValueError:
        raise ApiError(422, f"{key}: a form field must hold JSON, e.g. "
                       '[{"id": "my-lora", "scale": 1.0}]', param=key) from None


def parse_create(fields: dict[str, Any], loc: tuple = ("body",)) -> VideoCreateRequest:
    """Validate a create body; errors are 422s naming the field (``loc`` prefixes it)."""
    reference = reference_image(fields.pop("input_reference", None))
    if reference is not None:
        if fields.get("image"):
            raise ApiError(422, "give either input_reference or image", param="input_reference")
        fields["image"] = reference
    try:
        return VideoCreateRequest.model_validate(fields)
    except ValidationError as exc:
        errors = [{**e, "loc": (*loc, *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from None


def reference_image(reference: Any) -> str | None:
    """The image of an ``input_reference``; 422 for a form this service does not take (a file
    id, say), rather than a video made without it."""
    if reference is None:
        return None
    if isinstance(reference, dict) and len(reference) == 1 and set(reference) < set(
            REFERENCE_KEYS):
        reference = next(iter(reference.values()))
    if isinstance(reference, str) and reference:
        return reference
    raise ApiError(422, "input_reference must be an image: a data URL or base64 string, or "
                   '{"image_url": ...}; file ids are not supported', param="input_reference",
                   code="unsupported_input_reference")


def parse_size(size: str) -> tuple[int, int]:
    """(width, height) of a ``WIDTHxHEIGHT`` size."""
    match = SIZE.match(size)
    if not match:
        raise ApiError(422, "size must look like WIDTHxHEIGHT, e.g. 832x480", param="size",
                       code="invalid_value")
    if any(len(number.lstrip("0")) > SIZE_DIGITS for number in match.groups()):
        raise ApiError(422, "size: width and height must be at most 4096", param="size",
                       code="invalid_value")
    return int(match.group(1)), int(match.group(2))


def to_generate_request(create: VideoCreateRequest,
                        models: dict[str, ModelSpec]) -> GenerateVideoRequest:
    """Map OpenAI's fields onto the service's own request (``models``: those served now)."""
    fields = create.model_dump(exclude={"model", "size", "seconds"}, exclude_none=True)
    task = fields.get("model_type")
    if create.model is not None:
        # A task name is always understood (the service says if its model is unloaded).
        matches = [create.model] if create.model in ("t2v", "i2v") else [
            t for t, s in models.items() if create.model == s.model]
        if not matches:
            names = ", ".join(s.model for s in models.values())
            raise ApiError(404, f"model {create.model!r} is not deployed here (models: {names}; "
                           "or use t2v / i2v)", param="model", code="model_not_found")
        if task and task != matches[0]:
            raise ApiError(422, f"model {create.model!r} is not a {task} model", param="model")
        task = fields["model_type"] = matches[0]
    if create.size is not None:
        fields["width"], fields["height"] = parse_size(create.size)
    if create.seconds is not None:
        if create.num_frames is not None:
            raise ApiError(422, "give either seconds or num_frames", param="seconds")
        task = task or ("i2v" if create.has_image else "t2v")
        spec = models.get(task)
        fps = create.fps or (spec.defaults.fps if spec else 16)
        fields["num_frames"] = 4 * max(0, round(float(create.seconds) * fps / 4)) + 1
    try:
        return GenerateVideoRequest.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])}
                                      for e in exc.errors()]) from None


def _stage(job: Job) -> str:
    if job.status == "in_progress":
        return job.stage or "starting"
    return job.status


def progress_detail(job: Job, queue_position: int | None) -> dict[str, Any]:
    eta = None
    if job.status == "in_progress" and job.started_at and job.step > 0:
        per_step = (time.time() - job.started_at) / job.step
        eta = round(per_step * max(job.total_steps - job.step, 0), 2)
    return {"step": job.step, "total_steps": job.total_steps, "stage": _stage(job),
            "queue_position": queue_position, "eta_s": eta,
            "estimated": job.estimated_progress}


def video_object(job: Job, queue_position: int | None = None,
                 cached: bool = False) -> dict[str, Any]:
    """A job as the videos API shows it."""
    p = job.params
    if job.status == "completed":
        percent = 100
    elif job.total_steps:
        percent = min(99, int(100 * job.step / job.total_steps))
    else:
        percent = 0
    error = None
    if job.status in ("failed", "cancelled"):
        code = (job.error_code or "generation_failed") if job.status == "failed" else "cancelled"
        error = {"code": code, "message": job.error or f"the job was {job.status}"}
    elif job.error:  # a retried job says why it was retried
        error = {"code": "retried", "message": job.error}
    return {
        "id": job.id,
        "object": "video",
        "status": job.status,
        "progress": percent,
        "progress_detail": progress_detail(job, queue_position),
        "model": job.model,
        "model_type": job.task,
        "engine": job.engine,
        "synthetic": job.synthetic,
        "size": f"{p.width}x{p.height}",
        "seconds": f"{p.num_frames / p.fps:.3g}",
        **p.to_dict(),
        "attempts": job.attempts,
        "created_at": int(job.created_at),
        "completed_at": int(job.finished_at) if job.status == "completed" and job.finished_at
        else None,
        "expires_at": None,
        "remixed_from_video_id": None,
        "error": error,
        "cancellation": job.cancellation,
        "result": job.result,
        "cached": cached,
    }
