"""The probes and the scrape: /health (liveness), /ready (every loaded model has a running
replica) and, on its own router because it is included only when the app is given metrics,
/metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from videoserve.core.metrics import CONTENT_TYPE
from videoserve.core.model_switch import is_ready
from videoserve.http.routes.deps import Metrics, Readiness, Service
from videoserve.http.routes.docs import answers
from videoserve.http.schemas import ErrorResponse, Health, ReadyResponse

router = APIRouter()
metrics_router = APIRouter()


@router.get("/health", response_model=None, responses=answers(Health))
async def health() -> dict[str, str]:
    """Liveness: the ingress answers."""
    return {"status": "ok"}


@router.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def ready(service: Service, readiness: Readiness) -> JSONResponse:
    """503 until every loaded model has a running replica (also while a model is replaced
    on a GPU that cannot hold both; a switch with room for both never drops it)."""
    states = await readiness()
    specs = service.current_specs()
    models = {task: {"task": task, "model": specs[task].model if task in specs else None,
                     **state} for task, state in states.items()}
    ready = is_ready(states)
    return JSONResponse({"ready": ready, "models": models}, status_code=200 if ready else 503)


@metrics_router.get("/metrics", response_class=Response, responses={
    200: {"description": "Prometheus text format",
          "content": {CONTENT_TYPE: {"schema": {"type": "string"}}}},
    401: {"model": ErrorResponse}})
async def prometheus_metrics(metrics: Metrics) -> Response:
    """Prometheus text format; needs the API key like every other route."""
    # On the event loop, not in a thread: the gauges read the runner's live job table.
    return Response(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})
