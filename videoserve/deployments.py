"""Ray Serve wrappers: one generator class bound per task, and the FastAPI ingress.

No logic lives here: generators delegate to ``videoserve.worker`` and the ingress to
``videoserve.service`` / ``videoserve.api``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from videoserve.config import ModelSpec, Settings, Task
from videoserve.engines import create_engine
from videoserve.errors import public_reason
from videoserve.protocol import Event, WorkItem
from videoserve.worker import EngineFactory, GeneratorWorker

log = logging.getLogger(__name__)
READINESS_POLL_S = 0.5

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


# A health check a second: a replica that died is out of /ready and of the dispatch capacity
# within about two seconds. The check itself is a cheap call on the replica's event loop.
@serve.deployment(
    health_check_period_s=1, health_check_timeout_s=60, graceful_shutdown_timeout_s=30
)
class Generator:
    """A replica holding one loaded model (T2V or I2V)."""

    def __init__(self, spec: ModelSpec, engine_factory: EngineFactory | None = None):
        app_name = serve.get_replica_context().app_name
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


def _replica_nodes(app_name: str, names: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    """The node and state of each replica of each task's deployment."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeInstanceDetails

    # serve.status() reads these same details from the controller but drops the replicas.
    details = ServeInstanceDetails(**_get_global_client().get_serve_details())
    app = details.applications.get(app_name)
    placement: dict[str, list[dict[str, str]]] = {}
    for task, name in names.items():
        deployment = app.deployments.get(name) if app else None
        replicas = deployment.replicas if deployment else []
        placement[task] = sorted(({"node_id": r.node_id or "", "state": str(r.state.value)}
                                  for r in replicas), key=lambda r: (r["node_id"], r["state"]))
    return placement


def _replica_counts(app_name: str, names: dict[str, str]) -> dict[str, dict[str, Any]]:
    status = serve.status().applications.get(app_name)
    states: dict[str, dict[str, Any]] = {}
    for task, name in names.items():
        deployment = status.deployments.get(name) if status else None
        if deployment is None:
            states[task] = {"state": "NOT_DEPLOYED", "replicas_running": 0}
            continue
        replicas = {str(k.value if hasattr(k, "value") else k): v
                    for k, v in deployment.replica_states.items()}
        running = replicas.get("RUNNING", 0)
        state = "RUNNING" if running else (
            "UNHEALTHY" if str(deployment.status.value) in ("UNHEALTHY", "DEPLOY_FAILED")
            else "LOADING")
        # /ready is public: Serve's message may carry pids, addresses and actor ids.
        message = public_reason(deployment.message) if deployment.message else None
        states[task] = {"state": state, "replicas_running": running, "message": message}
    return states


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress()
class Ingress:
    """The HTTP entry point; holds a handle per generator and owns the job queue."""

    def __init__(self, settings: Settings, handles: dict[Task, DeploymentHandle]):
        from videoserve.service import VideoService

        self.settings, self.handles = settings, handles
        self.app_name = serve.get_replica_context().app_name
        self.node_id = ray.get_runtime_context().get_node_id()
        self.board = self._new_board()
        self.states: dict[str, dict[str, Any]] = {}
        self.service = VideoService(settings, self._dispatch, self._capacity,
                                    self._request_cancel)
        # The constructor runs on the replica's event loop: the runner's tasks live there.
        self.service.start()
        self._poller = asyncio.get_running_loop().create_task(self._poll_readiness())

    def _new_board(self) -> Any:
        return CancelBoard.options(name=board_name(self.app_name), namespace=NAMESPACE,
                                   get_if_exists=True).remote()

    async def _request_cancel(self, job_id: str) -> None:
        try:
            await self.board.cancel.remote(job_id)
        except ray.exceptions.RayActorError:
            self.board = self._new_board()  # its creator (an older ingress) is gone
            await self.board.cancel.remote(job_id)

    def _dispatch(self, task: Task, item: WorkItem) -> AsyncIterator[Event]:
        return self.handles[task].options(stream=True).run.remote(item)

    def _capacity(self, task: Task) -> int:
        running = self.states.get(task, {}).get("replicas_running", 0)
        return running * self.settings.models[task].max_ongoing_requests

    async def _poll_readiness(self) -> None:
        names = {task: generator_name(task) for task in self.handles}
        while True:
            try:
                self.states = await asyncio.to_thread(_replica_counts, self.app_name, names)
            except Exception:  # noqa: BLE001 - the controller is busy; keep the last answer
                log.warning("could not read the deployments' status", exc_info=True)
            self.service.runner.wake()
            await asyncio.sleep(READINESS_POLL_S)

    async def _readiness(self) -> dict[str, dict[str, Any]]:
        # Asked now rather than from the last poll: right after a deploy, /ready must not
        # answer from a state up to a poll interval old.
        names = {task: generator_name(task) for task in self.handles}
        self.states = await asyncio.to_thread(_replica_counts, self.app_name, names)
        return self.states

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "draining": self.service.draining, "node_id": self.node_id}

    async def placement(self) -> dict[str, Any]:
        """Which Ray node runs the ingress and each generator replica (GET /v1/placement)."""
        names = {task: generator_name(task) for task in self.handles}
        models = await asyncio.to_thread(_replica_nodes, self.app_name, names)
        return {"ingress": {"node_id": self.node_id},
                "models": {task: {"replicas": replicas} for task, replicas in models.items()}}

    async def drain(self, timeout_s: float) -> dict[str, int]:
        """Stop accepting work and answer waiting requests (see VideoService.drain)."""
        return await self.service.drain(timeout_s)

    def __serve_build_asgi_app__(self) -> Any:
        from videoserve.api import create_app

        return create_app(self.service, self._readiness, self.placement)


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
    """The whole service as one Serve application: generators for each configured task.

    ``engine_factory`` replaces ``create_engine`` (tests use it to wrap engines with faults).
    ``ingress_node_id`` is the Ray node the ingress must run on (default: the head node).
    """
    handles = {
        task: Generator.options(
            name=generator_name(task),
            num_replicas=spec.replicas,
            max_ongoing_requests=spec.max_ongoing_requests,
            # The ingress queues jobs and sends a generator no more than it can run, so Serve's
            # own queue never has to refuse one (it only holds work while a replica restarts).
            max_queued_requests=-1,
            ray_actor_options={"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus,
                               "resources": dict(spec.resources)},
        ).bind(spec, engine_factory)
        for task, spec in settings.models.items()
    }
    ingress = Ingress.options(ray_actor_options=ingress_actor_options(ingress_node_id))
    return ingress.bind(settings, handles)
