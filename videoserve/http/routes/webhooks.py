"""Webhook endpoints under /v1/webhook_endpoints, as the official ``openai`` SDK's
``client.webhooks`` calls them: create (the signing secret shown once), list, retrieve, update,
delete, rotate_secret and test; and /v1/webhook_event_types. An endpoint belongs to the API key
that made it: another key's is answered like one that does not exist. Deliveries themselves are
``videoserve.core.webhooks``'s."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from videoserve.core.webhook_urls import UrlRefused
from videoserve.core.webhooks import EVENT_TYPES, Endpoint, WebhookDispatcher
from videoserve.http.errors import ApiError
from videoserve.http.routes.deps import Owner
from videoserve.http.routes.docs import ERRORS, answers
from videoserve.http.schemas import (
    ErrorResponse,
    WebhookEndpointCreate,
    WebhookEndpointDeleted,
    WebhookEndpointList,
    WebhookEndpointObject,
    WebhookEndpointTestResult,
    WebhookEndpointUpdate,
    WebhookEndpointWithSecret,
    WebhookEventTypeList,
    WebhookRotateSecret,
    WebhookTestRequest,
    list_page,
)

router = APIRouter()


def webhooks(request: Request) -> WebhookDispatcher:
    # create_app includes this router only when given a dispatcher.
    return request.app.state.webhooks


Webhooks = Annotated[WebhookDispatcher, Depends(webhooks)]


def check_event_types(event_types: list[str], param: str = "event_types") -> list[str]:
    unknown = [t for t in event_types if t not in EVENT_TYPES]
    if unknown:
        raise ApiError(422, f"unknown event types {unknown}: this service sends "
                       f"{', '.join(EVENT_TYPES)}", param=param, code="invalid_event_type")
    return list(dict.fromkeys(event_types))


async def check_url(hooks: WebhookDispatcher, url: str) -> None:
    try:
        await hooks.check_url(url)
    except UrlRefused as exc:
        raise ApiError(422, f"webhook URL refused: {exc}", param="url",
                       code="invalid_webhook_url") from None


def find(hooks: WebhookDispatcher, endpoint_id: str, owner: str | None) -> Endpoint:
    endpoint = hooks.store.endpoint(endpoint_id, owner)
    if endpoint is None:
        raise ApiError(404, "no such webhook endpoint", type="not_found", code="not_found")
    return endpoint


@router.post("/v1/webhook_endpoints", response_model=None,
             responses=answers(WebhookEndpointWithSecret))
async def create_endpoint(body: WebhookEndpointCreate, hooks: Webhooks,
                          owner: Owner) -> dict[str, Any]:
    """Register a receiver for this key's video events; its signing secret is shown only
    here (and at rotation)."""
    event_types = check_event_types(body.event_types)
    await check_url(hooks, body.url)
    return hooks.store.add_endpoint(owner, body.name, body.url, event_types).view(True)


@router.get("/v1/webhook_endpoints", response_model=None,
            responses=answers(WebhookEndpointList))
async def list_endpoints(hooks: Webhooks, owner: Owner, limit: int = Query(20, ge=1, le=100),
                         after: str | None = None) -> dict[str, Any]:
    """This key's endpoints, newest first; page with ``after`` = the last id seen."""
    found, has_more = hooks.store.endpoints(owner, limit, after)
    return list_page([e.view() for e in found], has_more)


@router.get("/v1/webhook_endpoints/{webhook_endpoint_id}", response_model=None,
            responses=answers(WebhookEndpointObject))
async def get_endpoint(webhook_endpoint_id: str, hooks: Webhooks,
                       owner: Owner) -> dict[str, Any]:
    return find(hooks, webhook_endpoint_id, owner).view()


@router.post("/v1/webhook_endpoints/{webhook_endpoint_id}", response_model=None,
             responses=answers(WebhookEndpointObject))
async def update_endpoint(webhook_endpoint_id: str, body: WebhookEndpointUpdate,
                          hooks: Webhooks, owner: Owner) -> dict[str, Any]:
    """Change the name, URL (checked again) or the complete set of event types."""
    endpoint = find(hooks, webhook_endpoint_id, owner)
    event_types = check_event_types(body.event_types) if body.event_types is not None else None
    if body.url is not None:
        await check_url(hooks, body.url)
    return hooks.store.update_endpoint(endpoint, name=body.name, url=body.url,
                                       event_types=event_types).view()


@router.delete("/v1/webhook_endpoints/{webhook_endpoint_id}", response_model=None,
               responses=answers(WebhookEndpointDeleted))
async def delete_endpoint(webhook_endpoint_id: str, hooks: Webhooks,
                          owner: Owner) -> dict[str, Any]:
    """Delete the endpoint and the deliveries still pending for it."""
    endpoint = find(hooks, webhook_endpoint_id, owner)
    hooks.store.delete_endpoint(endpoint.id)
    return {"id": endpoint.id, "object": "webhook_endpoint.deleted", "deleted": True}


@router.post("/v1/webhook_endpoints/{webhook_endpoint_id}/rotate_secret", response_model=None,
             responses=answers(WebhookEndpointWithSecret))
async def rotate_secret(webhook_endpoint_id: str, hooks: Webhooks, owner: Owner,
                        body: WebhookRotateSecret | None = None) -> dict[str, Any]:
    """A new signing secret; with keep_old_secret_active_for_24_hours, deliveries carry a
    signature by each secret for 24 h."""
    endpoint = find(hooks, webhook_endpoint_id, owner)
    keep = body.keep_old_secret_active_for_24_hours if body is not None else False
    return hooks.store.rotate_secret(endpoint, keep).view(True)


@router.post("/v1/webhook_endpoints/{webhook_endpoint_id}/test", response_model=None,
             responses={**answers(WebhookEndpointTestResult),
                        502: {"model": ErrorResponse}, **ERRORS})
async def test_endpoint(webhook_endpoint_id: str, body: WebhookTestRequest, hooks: Webhooks,
                        owner: Owner) -> dict[str, Any]:
    """Send a signed sample event once; the receiver's status code (502 when it did not
    answer)."""
    endpoint = find(hooks, webhook_endpoint_id, owner)
    event_type = check_event_types([body.event_type], "event_type")[0]
    try:
        status = await hooks.test(endpoint, event_type)
    except UrlRefused as exc:
        raise ApiError(422, f"webhook URL refused: {exc}", param="url",
                       code="invalid_webhook_url") from None
    except OSError as exc:
        raise ApiError(502, f"the webhook endpoint did not answer: {exc}",
                       type="server_error", code="webhook_unreachable") from None
    return {"object": "webhook_endpoint.test", "webhook_endpoint_id": endpoint.id,
            "event_type": event_type, "status_code": status, "success": True}


@router.get("/v1/webhook_event_types", response_model=None,
            responses=answers(WebhookEventTypeList))
async def event_types() -> dict[str, Any]:
    return {"object": "list", "data": list(EVENT_TYPES)}
