"""The LoRA resource: GET /v1/loras lists the server's LoRA folder (requests name its files
in ``loras``)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from videoserve.http.routes.deps import Service
from videoserve.http.routes.docs import answers
from videoserve.http.schemas import LoraList

router = APIRouter()


@router.get("/v1/loras", response_model=None, responses=answers(LoraList))
async def loras(service: Service) -> dict[str, Any]:
    """The LoRA files of the server's folder: id (the file name without .safetensors), the
    loaded models whose layers they fit (tasks), rank, key format, size and sha256. A file
    that cannot be used is listed with its error. New files show up without a restart."""
    # The first listing of a large file reads it whole (its sha256): off the event loop.
    return {"object": "list", "data": await asyncio.to_thread(service.list_loras)}
