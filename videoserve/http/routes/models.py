"""The models resource: /v1/models (each task's model; load, switch or unload one without a
restart) and, on its own router because it is included only when the app is given a placement
source, /v1/placement (where the ingress and each model's replicas run)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter

from videoserve.http.errors import ApiError
from videoserve.http.routes.deps import PlacementSource, Service
from videoserve.http.routes.docs import answers
from videoserve.http.schemas import ModelEntry, ModelList, ModelUpdateRequest, Placement

router = APIRouter()
placement_router = APIRouter()


@router.get("/v1/models", response_model=None, responses=answers(ModelList))
async def models(service: Service) -> dict[str, Any]:
    """Each task's model: engine, defaults, limits, state, and a switch in progress."""
    return {"object": "list", "data": service.models.describe()}


@router.put("/v1/models/{model_type}", status_code=202, response_model=None,
            responses=answers(ModelEntry, 202))
async def update_model(model_type: Literal["t2v", "i2v"], body: ModelUpdateRequest,
                       service: Service) -> dict[str, Any]:
    """Load another model folder or hub id for a task, change its engine or replica count,
    or load an unloaded task, without a restart. Answers at once (202); GET /v1/models
    shows the switch until the new model serves. Queued jobs wait for the new model;
    running ones finish on the old one."""
    changes = body.model_dump(exclude_none=True)
    if not changes:
        raise ApiError(422, "give at least one of model, engine, replicas", param="model")
    return service.update_model(model_type, **changes)


@router.delete("/v1/models/{model_type}", status_code=202, response_model=None,
               responses=answers(ModelEntry, 202))
async def unload_model(model_type: Literal["t2v", "i2v"], service: Service) -> dict[str, Any]:
    """Unload a task's model: its queued jobs fail, running ones finish, then its replicas
    stop. PUT loads one again."""
    return service.unload_model(model_type)


@placement_router.get("/v1/placement", response_model=None, responses=answers(Placement))
async def get_placement(placement: PlacementSource) -> dict[str, Any]:
    """The Ray node of the ingress and of each model's replicas (with their state), and
    each model's GPU share, speed mode and what it offloads and why (its measured memory
    need against the GPUs' free memory read at start)."""
    return await placement()
