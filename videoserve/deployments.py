"""Ray Serve wrappers: one generator class bound per task, and the FastAPI ingress.

No logic lives here: generators delegate to ``videoserve.worker``, the ingress to
``videoserve.service`` / ``videoserve.api`` and model switching to ``videoserve.models``.
Each task's generator replicas are a Serve application of their own (one per *generation*),
deployed by the ingress, so a model can be replaced without redeploying the ingress.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from videoserve.config import ModelSpec, Settings, Task
from videoserve.engines import create_engine
from videoserve.errors import public_reason
from videoserve.models import ModelManager, States, is_ready
from videoserve.protocol import Event, WorkItem
from videoserve.worker import EngineFactory, GeneratorWorker

log = logging.getLogger(__name__)
READINESS_POLL_S = 0.5
# /ready answers from replica states at most this old: it is public, and reading them from
# Serve costs far more than the answer (a flood of /ready slowed every other client down).
READY_MAX_AGE_S = 0.5

APP_NAME = "videoserve"
NAMESPACE = "videoserve"
# Every Ray node carries this label with its node id (Ray's own way to pin work to a node).
NODE_ID_LABEL = "ray.io/node-id"
# Ray gives the head node this resource (amount 1); a small share of it pins to the head.
HEAD_NODE_RESOURCE = "node:__internal_head__"


@ray.remote(num_cpus=0)
class CancelBoard:
    """Cancel requests for running jobs: generator replicas wait on it, the ingress signals it."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._cancelled: set[str] = set()

    async def cancel(self, job_id: str) -> None:
        self._cancelled.add(job_id)
        self._events.setdefault(job_id, asyncio.Event()).set()

    async def wait(self, job_id: str) -> bool:
        """Returns True as soon as ``job_id`` is cancelled, False once it is released."""
        await self._events.setdefault(job_id, asyncio.Event()).wait()
        return job_id in self._cancelled

    async def release(self, job_id: str) -> None:
        self._cancelled.discard(job_id)
        event = self._events.pop(job_id, None)
        if event is not None:
            event.set()


def board_name(app_name: str) -> str:
    return f"cancel-board-{app_name}"


class BoardSignal:
    """A generator replica's view of the board of the ingress that sent a job.

    The board is looked up when the job starts and kept for that job: it is owned by (and dies
    with) the ingress replica that created it, so a wait that fails means the job's ingress is
    gone and nobody will receive its result.
    """

    def __init__(self, app_name: str):
        self.app_name = app_name
        self._boards: dict[str, Any] = {}

    async def wait(self, job_id: str) -> bool:
        board = await asyncio.to_thread(ray.get_actor, board_name(self.app_name),
                                        namespace=NAMESPACE)
        self._boards[job_id] = board
        return await board.wait.remote(job_id)

    async def release(self, job_id: str) -> None:
        board = self._boards.pop(job_id, None)
        if board is not None:
            await board.release.remote(job_id)


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


def _deployment_state(status: Any) -> dict[str, Any]:
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
    return {"state": state, "replicas_running": running,
            "message": public_reason(message) if message else None}


def startup_failure(message: str) -> str:
    """The short reason a generation did not start, from Serve's deployment message (which
    holds the replica's traceback, colour codes and all)."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", message)
    errors = re.findall(r"^\s*((?:\w+\.)*\w*(?:Error|Exception)\b: .+)$", plain, re.MULTILINE)
    reason = errors[-1].strip() if errors else "see the backend log"
    return f"its replicas did not start ({reason[:300]})"


def _replica_nodes(apps: dict[str, str]) -> dict[str, list[dict[str, str]]]:
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


def _generation_states(app_name: str, live: set[tuple[str, int]]) -> States:
    applications = serve.status().applications
    return {(task, generation): _deployment_state(
                applications.get(generator_app(app_name, task, generation)))
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


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress()
class Ingress:
    """The HTTP entry point: owns the job queue and the generations of the generators."""

    def __init__(self, settings: Settings, engine_factory: EngineFactory | None = None):
        from videoserve.access_log import quiet_probe_access_logs
        from videoserve.metrics import ServiceMetrics
        from videoserve.service import VideoService

        quiet_probe_access_logs()
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
        self.service = VideoService(settings, self._dispatch, self.models,
                                    self._request_cancel, self.metrics)
        # The constructor runs on the replica's event loop: the runner's tasks live there.
        self.service.start()
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
            states = await asyncio.to_thread(_generation_states, self.app_name,
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

    async def ready(self) -> bool:
        """True once every task's model has a running replica (the backend waits for it)."""
        return is_ready(await self._readiness())

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "draining": self.service.draining, "node_id": self.node_id}

    async def placement(self) -> dict[str, Any]:
        """Which Ray node runs the ingress and each generator replica (GET /v1/placement)."""
        apps = {task: generator_app(self.app_name, task, slot.generation)
                for task, slot in self.models.slots.items() if slot.spec is not None}
        models = await asyncio.to_thread(_replica_nodes, apps)
        specs = {task: slot.spec for task, slot in self.models.slots.items() if slot.spec}
        return {"ingress": {"node_id": self.node_id},
                "models": {task: {"replicas": replicas, "device": specs[task].device,
                                  "speed": specs[task].speed, **specs[task].placement}
                           for task, replicas in models.items() if task in specs}}

    async def drain(self, timeout_s: float) -> dict[str, int]:
        """Stop accepting work and answer waiting requests (see VideoService.drain)."""
        return await self.service.drain(timeout_s)

    def __serve_build_asgi_app__(self) -> Any:
        from videoserve.api import create_app

        return create_app(self.service, self._readiness, self.metrics, self.placement)


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
    per configured task (see ``videoserve.models``).

    ``engine_factory`` replaces ``create_engine`` (tests use it to wrap engines with faults).
    ``ingress_node_id`` is the Ray node the ingress must run on (default: the head node).
    """
    ingress = Ingress.options(ray_actor_options=ingress_actor_options(ingress_node_id))
    return ingress.bind(settings, engine_factory)


def deploy(settings: Settings, name: str = APP_NAME, route_prefix: str = "/",
           engine_factory: EngineFactory | None = None, timeout_s: float = 600.0,
           ingress_node_id: str | None = None) -> Any:
    """Deploy the service and wait until every model has a running replica; its handle."""
    handle = serve.run(build_app(settings, engine_factory, ingress_node_id), name=name,
                       route_prefix=route_prefix)
    wait_ready(handle, timeout_s)
    return handle


def wait_ready(handle: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not handle.ready.remote().result(timeout_s=60):
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
