"""The service's FastAPI app: its state, middlewares, error handlers and OpenAPI document, and
the routers of ``videoserve.http.routes``. Each route validates, calls the service, and shapes
the response."""

from __future__ import annotations

import copy
import warnings
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from videoserve import __version__
from videoserve.core.metrics import ServiceMetrics
from videoserve.core.service import VideoService
from videoserve.core.webhooks import WebhookDispatcher
from videoserve.http.body_limits import BodyBudget, BodyRules, BodySizeLimit
from videoserve.http.errors import install_error_handlers
from videoserve.http.routes import generate, health, loras, models, videos, webhooks
from videoserve.http.routes.deps import PlacementFn, ReadinessFn
from videoserve.http.security import ApiKeyAuth, RequestGuard
from videoserve.http.video_file import VideoFile

# Importable from here as before: the MP4 response, and the types of create_app's callbacks.
__all__ = ["PlacementFn", "ReadinessFn", "VideoFile", "add_middlewares", "create_app",
           "document_head"]


def add_middlewares(app: FastAPI, settings: Any) -> None:
    """Outermost first: the Host, Origin and body-type guard, CORS for the allowed origins only,
    the API key check, then the body limits (so an unauthenticated body takes no budget)."""
    rules = BodyRules(settings.max_body_bytes, settings.body_idle_timeout_s,
                      settings.body_timeout_s, settings.body_min_timeout_s)
    app.add_middleware(BodySizeLimit, rules=rules, budget=BodyBudget(
        settings.max_inflight_body_bytes, settings.max_client_body_bytes))
    app.add_middleware(ApiKeyAuth, keys=settings.api_keys, admin_keys=settings.admin_api_keys,
                       allow_model_management=settings.allow_model_management)
    app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                       allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE"],
                       allow_headers=["Authorization", "Content-Type", "Idempotency-Key",
                                      "Range"],
                       expose_headers=["Retry-After", "Content-Range", "Accept-Ranges"])
    app.add_middleware(RequestGuard, allowed_origins=settings.cors_origins,
                       allowed_hosts=settings.allowed_hosts)


def create_app(service: VideoService, readiness: ReadinessFn,
               metrics: ServiceMetrics | None = None,
               placement: PlacementFn | None = None,
               webhook_dispatcher: WebhookDispatcher | None = None) -> FastAPI:
    """The service's FastAPI app (OpenAPI at /docs; Prometheus metrics at /metrics if given;
    /v1/webhook_endpoints with a ``videoserve.core.webhooks.WebhookDispatcher``)."""
    app = FastAPI(
        title="videoserve",
        version=__version__,
        description="Text-to-video and image-to-video generation with FastVideo Wan models.",
    )
    # What the routes' dependencies (videoserve.http.routes.deps) hand to the handlers.
    app.state.service, app.state.readiness = service, readiness
    app.state.metrics, app.state.placement = metrics, placement
    app.state.webhooks = webhook_dispatcher
    install_error_handlers(app)
    add_middlewares(app, service.settings)
    # In this order: it is the order of the OpenAPI document's paths.
    app.include_router(generate.router)
    app.include_router(videos.router)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(loras.router)
    if metrics is not None:
        app.include_router(health.metrics_router)
    if placement is not None:
        app.include_router(models.placement_router)
    if webhook_dispatcher is not None:
        app.include_router(webhooks.router)
    document_head(app)
    return app


def document_head(app: FastAPI) -> None:
    """Give each HEAD operation its own id, and answers without a body, in ``/openapi.json``.

    HEAD shares its route with GET (one route keeps the 405's Allow header naming both), and a
    route has one operation id, which OpenAPI requires to be unique per operation."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Duplicate Operation ID", UserWarning)
            schema = build()
        for operations in schema["paths"].values():
            if "head" in operations:
                head = operations["head"] = copy.deepcopy(operations["head"])
                head["operationId"] += "_head"
                head["summary"] += " (headers only)"
                for answer in head["responses"].values():
                    answer.pop("content", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
