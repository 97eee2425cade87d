"""The HTTP routes, one module-level ``APIRouter`` per resource, included by
``videoserve.http.app.create_app``:

* ``generate``: POST /generate_video (generate and wait) and its legacy MP4 download;
* ``videos``: the asynchronous jobs API under /v1/videos, in the shape of OpenAI's videos API
  (with each job's live preview and event stream);
* ``models``: /v1/models (describe, load, switch, unload) and /v1/placement;
* ``loras``: GET /v1/loras (the LoRA folder);
* ``webhooks``: /v1/webhook_endpoints (included only with a webhook dispatcher);
* ``health``: /health, /ready and /metrics.

Handlers reach the service and the app's callbacks through the dependencies in ``deps``, which
read what ``create_app`` put on ``app.state``; ``docs`` holds what they declare in the OpenAPI
document."""
