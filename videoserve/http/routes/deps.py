"""What the route handlers need from the app they serve, as FastAPI dependencies.

``create_app`` puts the service and the callbacks it was given on ``app.state``; a handler asks
for them by annotating a parameter with one of the aliases below, so the routers can be
module-level instead of closures over ``create_app``'s arguments."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request

from videoserve.core.metrics import ServiceMetrics
from videoserve.core.service import VideoService
from videoserve.http.security import request_owner

# Returns per-model readiness: {"t2v": {"state": "RUNNING", "replicas_running": 1, ...}, ...}
ReadinessFn = Callable[[], Awaitable[dict[str, dict[str, Any]]]]
# Returns where the ingress and each model's replicas run (Ray node ids).
PlacementFn = Callable[[], Awaitable[dict[str, Any]]]


def service(request: Request) -> VideoService:
    return request.app.state.service


def readiness(request: Request) -> ReadinessFn:
    return request.app.state.readiness


def metrics(request: Request) -> ServiceMetrics:
    # Only the /metrics router asks for it, and create_app includes that one only when given.
    return request.app.state.metrics


def placement(request: Request) -> PlacementFn:
    # Likewise only asked for by the /v1/placement router, included only when given.
    return request.app.state.placement


Service = Annotated[VideoService, Depends(service)]
Readiness = Annotated[ReadinessFn, Depends(readiness)]
Metrics = Annotated[ServiceMetrics, Depends(metrics)]
PlacementSource = Annotated[PlacementFn, Depends(placement)]
# The caller's owner hash (None without API keys), put on the request by ApiKeyAuth.
Owner = Annotated[str | None, Depends(request_owner)]
