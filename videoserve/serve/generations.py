"""Each task's generator replicas as a Serve application of its own (one per *generation*), so a
model can be replaced without redeploying the ingress: the replica class, how a generation is
deployed and deleted, and the state of each as /ready and /v1/placement report it."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import serve

from videoserve.core.config import ModelSpec, Task
from videoserve.core.errors import public_reason
from videoserve.core.model_switch import States
from videoserve.core.sampling import Event, WorkItem
from videoserve.engines import create_engine
from videoserve.serve.cancel import BoardSignal
from videoserve.serve.worker import EngineFactory, GeneratorWorker

log = logging.getLogger(__name__)


def generator_name(task: Task) -> str:
    return f"{task}_generator"


def generator_app(app_name: str, task: str, generation: int) -> str:
    """The Serve application holding one generation of a task's generator replicas."""
    return f"{app_name}--{task}-g{generation}"


# A health check a second: a replica that died is out of /ready and of the dispatch capacity
# within about two seconds. The check itself is a cheap call on the replica's event loop.
@serve.deployment(
    health_check_period_s=1, health_check_timeout_s=60, graceful_shutdown_timeout_s=30
)
class Generator:
    """A replica holding one loaded model (T2V or I2V)."""

    def __init__(self, spec: ModelSpec, engine_factory: EngineFactory | None = None,
                 board_app: str | None = None):
        from videoserve.http.access_log import forward_service_logs

        forward_service_logs()  # "model ... loaded in ..." and the engine's INFO lines
        # The cancel board belongs to the ingress's application, not this generation's.
        app_name = board_app or serve.get_replica_context().app_name
        self.worker = GeneratorWorker(spec, engine_factory or create_engine,
                                      BoardSignal(app_name))

    async def run(self, item: WorkItem) -> AsyncIterator[Event]:
        async for event in self.worker.run(item):
            yield event

    def info(self) -> dict[str, Any]:
        return {**self.worker.info(), "node_id": ray.get_runtime_context().get_node_id()}

    def check_health(self) -> None:
        self.worker.check_health()

    def __del__(self) -> None:
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.close()


def deployment_state(status: Any, public: bool = True) -> dict[str, Any]:
    """A generation's state from its Serve application's status. ``public=False`` keeps the
    message's paths and addresses, for the operator's log rather than /ready."""
    deployment = next(iter(status.deployments.values()), None) if status else None
    if deployment is None:
        return {"state": "LOADING", "replicas_running": 0, "message": None}
    replicas = {str(k.value if hasattr(k, "value") else k): v
                for k, v in deployment.replica_states.items()}
    running = replicas.get("RUNNING", 0)
    state = "RUNNING" if running else (
        "UNHEALTHY" if str(deployment.status.value) in ("UNHEALTHY", "DEPLOY_FAILED")
        else "LOADING")
    message = deployment.message or None
    if message and state == "UNHEALTHY":
        message = startup_failure(message)
    # /ready is public: Serve's message may carry pids, addresses and actor ids.
    if message and public:
        message = public_reason(message)
    return {"state": state, "replicas_running": running, "message": message}


def startup_failure(message: str) -> str:
    """The short reason a generation did not start, from Serve's deployment message (which
    holds the replica's traceback, colour codes and all)."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", message)
    errors = re.findall(r"^\s*((?:\w+\.)*\w*(?:Error|Exception)\b: .+)$", plain, re.MULTILINE)
    reason = errors[-1].strip() if errors else "see the backend log"
    return f"its replicas did not start ({reason[:300]})"


def replica_nodes(apps: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    """The node and state of each generator replica, per task (``apps``: task -> the
    application of its serving generation)."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeInstanceDetails

    # serve.status() reads these same details from the controller but drops the replicas.
    details = ServeInstanceDetails(**_get_global_client().get_serve_details())
    placement: dict[str, list[dict[str, str]]] = {}
    for task, app_name in apps.items():
        app = details.applications.get(app_name)
        deployment = app.deployments.get(generator_name(task)) if app else None
        replicas = deployment.replicas if deployment else []
        placement[task] = sorted(({"node_id": r.node_id or "", "state": str(r.state.value)}
                                  for r in replicas), key=lambda r: (r["node_id"], r["state"]))
    return placement


def generation_states(app_name: str, live: set[tuple[str, int]], public: bool = True) -> States:
    applications = serve.status().applications
    return {(task, generation): deployment_state(
                applications.get(generator_app(app_name, task, generation)), public)
            for task, generation in live}


def generator_apps(app_name: str) -> list[str]:
    """Names of the generator applications of ``app_name`` that Serve holds now."""
    return [name for name in serve.status().applications if name.startswith(f"{app_name}--")]


class ServeDeployer:
    """Deploys and deletes generations as Serve applications (called from the ingress)."""

    def __init__(self, app_name: str, engine_factory: EngineFactory | None):
        self.app_name, self.engine_factory = app_name, engine_factory

    async def deploy(self, task: Task, spec: ModelSpec, generation: int) -> None:
        target = serve.RunTarget(target=generator(spec, self.engine_factory, self.app_name),
                                 name=generator_app(self.app_name, task, generation),
                                 route_prefix=None)
        log.info("deploying %s generation %d: %s via %s", task, generation, spec.model,
                 spec.engine)
        # Not waiting for replicas: the ingress's readiness poll follows them.
        await asyncio.to_thread(serve.run_many, [target],
                                wait_for_ingress_deployment_creation=False,
                                wait_for_applications_running=False)

    async def delete(self, task: Task, generation: int) -> None:
        name = generator_app(self.app_name, task, generation)
        log.info("deleting %s generation %d", task, generation)
        await asyncio.to_thread(serve.delete, name, _blocking=False)

    async def exists(self, task: Task, generation: int) -> bool:
        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(generator_app(self.app_name, task, generation))
        return app is not None and str(getattr(app.status, "value", app.status)) != "DELETING"

    def has_room(self, spec: ModelSpec) -> bool:
        available = ray.available_resources()
        if spec.num_gpus > 0:
            return available.get("GPU", 0.0) + 1e-6 >= spec.num_gpus * spec.replicas
        return available.get("CPU", 0.0) + 1e-6 >= spec.num_cpus * spec.replicas


def generator(spec: ModelSpec, engine_factory: EngineFactory | None,
              board_app: str) -> serve.Application:
    """One generation of a task's generator replicas, as a Serve application."""
    return Generator.options(
        name=generator_name(spec.task),
        num_replicas=spec.replicas,
        max_ongoing_requests=spec.max_ongoing_requests,
        # The ingress queues jobs and sends a generator no more than it can run, so Serve's
        # own queue never has to refuse one (it only holds work while a replica restarts).
        max_queued_requests=-1,
        # A model that cannot load fails its generation within a few tries (Serve's default
        # retries for minutes); a switch to it is then rolled back.
        max_constructor_retry_count=3,
        ray_actor_options={"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus,
                           "resources": dict(spec.resources)},
    ).bind(spec, engine_factory, board_app)
