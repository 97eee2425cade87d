"""The Serve applications a backend is made of: the FastAPI ingress (which owns the job queue and
deploys the generator generations, ``videoserve.serve.generations``) and deploy/undeploy.

The ingress delegates to ``videoserve.core.service`` / ``videoserve.http.app``, model switching to
``videoserve.core.model_switch``; generator replicas run ``videoserve.serve.worker``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from videoserve.core.config import ModelSpec, Settings, Task
from videoserve.core.model_switch import (
    FAILED_STATES,
    ModelManager,
    StartupFailed,
    failed_to_start,
    is_ready,
)
from videoserve.core.sampling import Event, WorkItem
from videoserve.serve.cancel import NAMESPACE, CancelBoard, board_name
from videoserve.serve.generations import (
    ServeDeployer,
    generation_states,
    generator_app,
    generator_apps,
    generator_name,
    replica_nodes,
)
from videoserve.serve.worker import EngineFactory

log = logging.getLogger(__name__)
READINESS_POLL_S = 0.5
# /ready answers from replica states at most this old: it is public, and reading them from
# Serve costs far more than the answer (a flood of /ready slowed every other client down).
READY_MAX_AGE_S = 0.5

APP_NAME = "videoserve"
# Every Ray node carries this label with its node id (Ray's own way to pin work to a node).
NODE_ID_LABEL = "ray.io/node-id"
# Ray gives the head node this resource (amount 1); a small share of it pins to the head.
HEAD_NODE_RESOURCE = "node:__internal_head__"


class FreshWithin:
    """Runs ``read`` only when its last run started ``max_age_s`` ago or more; concurrent
    callers wait for one run rather than start their own."""

    def __init__(self, read: Callable[[], Awaitable[Any]], max_age_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.read, self.max_age_s, self.clock = read, max_age_s, clock
        self._started: float | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> None:
        async with self._lock:
            if self._started is None or self.clock() - self._started >= self.max_age_s:
                self._started = self.clock()
                await self.read()


def local_model_folder(spec: ModelSpec) -> Path | None:
    """The folder ``spec``'s replicas load, when it is on this node (to check LoRAs against
    its layers); None for a Hub id fastvideo resolves itself, or a folder not here."""
    from videoserve.engines import model_source

    try:
        source = model_source(spec)
    except (OSError, ValueError):
        return None
    return source if isinstance(source, Path) and source.is_dir() else None


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress()
class Ingress:
    """The HTTP entry point: owns the job queue and the generations of the generators."""

    def __init__(self, settings: Settings, engine_factory: EngineFactory | None = None):
        from videoserve.core.metrics import ServiceMetrics
        from videoserve.core.service import VideoService
        from videoserve.http.access_log import forward_service_logs, quiet_probe_access_logs

        quiet_probe_access_logs()
        forward_service_logs()
        # Replicas read LoRAs from the same folder the ingress lists (same path on each node).
        lora_dir = str(settings.loras_dir)
        settings = replace(settings, models={task: replace(spec, lora_dir=lora_dir)
                                             for task, spec in settings.models.items()})
        self.settings = settings
        self.app_name = serve.get_replica_context().app_name
        self.node_id = ray.get_runtime_context().get_node_id()
        self.board = self._new_board()
        self._handles: dict[tuple[str, int], DeploymentHandle] = {}
        self._on_generation: dict[str, tuple[str, int]] = {}  # running job -> its generation
        self.models = ModelManager(settings.models, ServeDeployer(self.app_name, engine_factory),
                                   settings.output_path / "models.json", settings.run_id,
                                   self._running_on, settings.model_dir)
        # The gauges read the runner's queue and the replica states when Prometheus scrapes.
        self.metrics = ServiceMetrics(
            lambda: {t: s.model for t, s in self.service.current_specs().items()},
            lambda t: self.service.runner.counts(t), self.models.readiness)
        from videoserve.core.runner import ObserverFanOut
        from videoserve.core.webhooks import WebhookDispatcher

        observers = ObserverFanOut(self.metrics)
        self.service = VideoService(settings, self._dispatch, self.models,
                                    self._request_cancel, observers, local_model_folder)
        # After the service: its job table checks the database file before anything writes.
        self.webhooks = WebhookDispatcher(settings.output_path / "jobs.sqlite3",
                                          settings.webhook_allow_hosts,
                                          settings.webhook_retry_initial_s,
                                          on_result=self.metrics.on_webhook)
        observers.add(self.webhooks)
        # The constructor runs on the replica's event loop: the runner's tasks live there.
        self.service.start()
        self.webhooks.start()
        loop = asyncio.get_running_loop()
        self._models_started = loop.create_task(self._start_models())
        self._poller = loop.create_task(self._poll_readiness())
        self._fresh_states = FreshWithin(self._refresh_states, READY_MAX_AGE_S)

    async def _start_models(self) -> None:
        await self.models.start()
        # Generations this ingress does not know (a switch cut short by a restart, or an
        # earlier run's) would hold replicas for nothing.
        live = {generator_app(self.app_name, t, g) for t, g in self.models.known_generations()}
        for name in await asyncio.to_thread(generator_apps, self.app_name):
            if name not in live:
                log.info("deleting the leftover generator application %s", name)
                await asyncio.to_thread(serve.delete, name, _blocking=False)

    def _new_board(self) -> Any:
        return CancelBoard.options(name=board_name(self.app_name), namespace=NAMESPACE,
                                   get_if_exists=True).remote()

    async def _request_cancel(self, job_id: str) -> None:
        try:
            await self.board.cancel.remote(job_id)
        except ray.exceptions.RayActorError:
            self.board = self._new_board()  # its creator (an older ingress) is gone
            await self.board.cancel.remote(job_id)

    def _running_on(self, task: Task, generation: int) -> int:
        return sum(1 for where in self._on_generation.values() if where == (task, generation))

    def _handle(self, task: Task, generation: int) -> DeploymentHandle:
        key = (task, generation)
        if key not in self._handles:
            self._handles[key] = serve.get_deployment_handle(
                generator_name(task), app_name=generator_app(self.app_name, task, generation))
        return self._handles[key]

    async def _dispatch(self, task: Task, item: WorkItem) -> AsyncIterator[Event]:
        # The serving generation at dispatch time runs the job to its end, even if a switch
        # replaces it meanwhile (the old generation is deleted after its last job).
        slot = self.models.slots[task]
        if slot.spec is None:
            raise RuntimeError(f"no {task} model is loaded")
        where = (task, slot.generation)
        self._on_generation[item.job_id] = where
        try:
            stream = self._handle(*where).options(stream=True).run.remote(item)
            async for event in stream:
                yield event
        finally:
            self._on_generation.pop(item.job_id, None)
            self.models.job_ended()

    async def _poll_readiness(self) -> None:
        while await self._refresh_states():
            self.service.runner.wake()
            await asyncio.sleep(READINESS_POLL_S)

    async def _refresh_states(self) -> bool:
        """Read the generations' states from Serve; False once this replica is shutting down."""
        try:
            states = await asyncio.to_thread(generation_states, self.app_name,
                                             self.models.known_generations())
            self.models.observe(states)
        except RuntimeError as exc:
            if "after shutdown" in str(exc):  # the replica's thread pool is gone: it is stopping
                return False
            log.warning("could not read the deployments' status", exc_info=True)
        except Exception:  # noqa: BLE001 - the controller is busy; keep the last answer
            log.warning("could not read the deployments' status", exc_info=True)
        return True

    async def _readiness(self) -> dict[str, dict[str, Any]]:
        # Not only from the poll, which can lag by a poll interval plus a slow status read.
        # Unloads and switches change the slots at once: only replica states can be stale.
        await self._fresh_states()
        return self.models.readiness()

    async def start_status(self) -> dict[str, Any]:
        """What the backend waits on at start: ``ready`` (every task's model has a running
        replica) and ``failed``, the reason per task whose model failed to start. The reasons
        keep the paths that /ready hides from clients: they go to the operator's log, where a
        mistyped path should show."""
        readiness = await self._readiness()
        failed = {(task, self.models.slots[task].generation)
                  for task in failed_to_start(readiness)}
        reasons: dict[str, str] = {}
        if failed:
            states = await asyncio.to_thread(generation_states, self.app_name, failed, False)
            reasons = {task: state["message"] or "its replicas did not start"
                       for (task, _), state in states.items()
                       if state["state"] in FAILED_STATES}
        return {"ready": is_ready(readiness), "failed": reasons}

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "draining": self.service.draining, "node_id": self.node_id}

    async def placement(self) -> dict[str, Any]:
        """Which Ray node runs the ingress and each generator replica (GET /v1/placement)."""
        apps = {task: generator_app(self.app_name, task, slot.generation)
                for task, slot in self.models.slots.items() if slot.spec is not None}
        models = await asyncio.to_thread(replica_nodes, apps)
        specs = {task: slot.spec for task, slot in self.models.slots.items() if slot.spec}
        return {"ingress": {"node_id": self.node_id},
                "models": {task: {"replicas": replicas, "device": specs[task].device,
                                  "speed": specs[task].speed, **specs[task].placement}
                           for task, replicas in models.items() if task in specs}}

    async def drain(self, timeout_s: float) -> dict[str, int]:
        """Stop accepting work and answer waiting requests (see VideoService.drain)."""
        return await self.service.drain(timeout_s)

    def __serve_build_asgi_app__(self) -> Any:
        from videoserve.http.app import create_app

        return create_app(self.service, self._readiness, self.metrics, self.placement,
                          self.webhooks)


def ingress_actor_options(node_id: str | None) -> dict[str, Any]:
    """Pin the ingress to one node: it owns the job table (SQLite) and the videos under the
    output path, which must stay on one machine's disk across restarts of the ingress.

    Serve deployments take no scheduling strategy (NodeAffinitySchedulingStrategy), but they do
    take a label selector, and every node is labelled with its id: ``node_id`` is the node of
    the backend process. The built-in ``node:<ip>`` resource would not do: nodes that share a
    machine share its IP. Without a node id (``serve run``'s builder runs before it connects to
    Ray) the ingress goes to the head node, which is the only node of a local Ray.
    """
    if node_id:
        return {"num_cpus": 0, "label_selector": {NODE_ID_LABEL: node_id}}
    return {"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001}}


def build_app(settings: Settings, engine_factory: EngineFactory | None = None,
              ingress_node_id: str | None = None) -> serve.Application:
    """The service's Serve application: the ingress, which deploys a generator application
    per configured task (see ``videoserve.core.model_switch``).

    ``engine_factory`` replaces ``create_engine`` (tests use it to wrap engines with faults).
    ``ingress_node_id`` is the Ray node the ingress must run on (default: the head node).
    """
    ingress = Ingress.options(ray_actor_options=ingress_actor_options(ingress_node_id))
    return ingress.bind(settings, engine_factory)


def deploy(settings: Settings, name: str = APP_NAME, route_prefix: str = "/",
           engine_factory: EngineFactory | None = None, timeout_s: float = 600.0,
           ingress_node_id: str | None = None) -> Any:
    """Deploy the service and wait until every model has a running replica (``wait_ready``);
    its handle."""
    handle = serve.run(build_app(settings, engine_factory, ingress_node_id), name=name,
                       route_prefix=route_prefix)
    wait_ready(handle, timeout_s)
    return handle


def wait_ready(handle: Any, timeout_s: float) -> None:
    """Until every model has a running replica. A model that failed to start raises
    StartupFailed with its reason at once: Serve retries no more, so the timeout (an hour for
    the backend, for a cold disk) would only delay the same answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = handle.start_status.remote().result(timeout_s=60)
        if status["ready"]:
            return
        if status["failed"]:
            raise StartupFailed(status["failed"])
        if time.monotonic() > deadline:
            raise TimeoutError(f"the models were not running after {timeout_s:.0f} s")
        time.sleep(READINESS_POLL_S)


def undeploy(name: str = APP_NAME) -> None:
    """Delete the service's application and its generator applications."""
    children = generator_apps(name)
    serve.delete(name)
    for child in children + generator_apps(name):
        serve.delete(child)


def generator_handle(app_name: str, task: Task) -> DeploymentHandle:
    """A handle to the newest generation of ``task``'s generators (for tests and tools)."""
    prefix = f"{app_name}--{task}-g"
    names = [n for n in generator_apps(app_name) if n.startswith(prefix)]
    if not names:
        raise LookupError(f"no {task} generator application under {app_name}")
    newest = max(names, key=lambda n: int(n[len(prefix):]))
    return serve.get_deployment_handle(generator_name(task), app_name=newest)
