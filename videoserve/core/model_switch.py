"""The models an ingress serves, and switching them while it runs.

Each task's generator replicas form one *generation* (a Serve application of its own, so it
can be replaced without touching the ingress). ``PUT /v1/models/{task}`` starts a switch:

1. Blue-green where the cluster has room for both: the new generation is deployed while the old
   one keeps running its jobs; dispatch of the task's *queued* jobs is held until the new
   generation's replicas are up, then it goes to the new generation. Jobs already running
   finish on the old one, which is deleted once its last job has ended. ``/ready`` never drops.
2. Where the cluster has no room for both (a GPU holding one model), the old generation is
   drained (its running jobs finish, queued ones wait), deleted, and the new one deployed; the
   task is not ready while it loads.

A new generation that fails to come up is deleted again and the old one keeps serving (blue-
green), or the previous model is deployed again (drained path). ``DELETE`` unloads a task: its
queued jobs fail with a reason, running ones finish first.

Knows nothing about Ray: a ``Deployer`` deploys and deletes generations; the ingress feeds the
generations' replica states in (``observe``). The serving models are written to a small JSON
file next to the job table, so an ingress that Serve restarts picks up the switched models
rather than the ones it was started with.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from videoserve.core.config import (
    ENGINES,
    TINY_MODEL_IDS,
    Limits,
    ModelSpec,
    SamplingDefaults,
    Task,
    fastvideo_cpu_allowed,
    is_synthetic,
)
from videoserve.core.errors import Conflict, Forbidden, InvalidInput, NotFound, public_reason
from videoserve.core.media import write_atomic

log = logging.getLogger(__name__)

MAX_REPLICAS = 64
# A generation that has not come up by then is given up (loading the 14B model takes ~1 min).
DEPLOY_TIMEOUT_S = 1800.0
FAILED_STATES = ("UNHEALTHY",)
# A Hugging Face Hub id: org/name.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")

# Replica states of live generations, as the ingress reads them from Serve.
States = dict[tuple[str, int], dict[str, Any]]


class Deployer(Protocol):
    async def deploy(self, task: Task, spec: ModelSpec, generation: int) -> None: ...

    async def delete(self, task: Task, generation: int) -> None: ...

    async def exists(self, task: Task, generation: int) -> bool:
        """Whether the generation's replicas are deployed (and not being deleted)."""
        ...

    def has_room(self, spec: ModelSpec) -> bool:
        """Whether the cluster can place ``spec``'s replicas beside everything running now."""
        ...


def is_ready(readiness: dict[str, dict[str, Any]]) -> bool:
    """/ready's verdict on ``ModelManager.readiness()``: every loaded model has a running
    replica (and some model is loaded)."""
    loaded = [state for state in readiness.values() if state["state"] != "UNLOADED"]
    return bool(loaded) and all(state["state"] == "RUNNING" for state in loaded)


def failed_to_start(readiness: dict[str, dict[str, Any]]) -> list[str]:
    """The tasks whose model is in a failed state in ``ModelManager.readiness()``: Serve gave up
    starting its replicas (after ``max_constructor_retry_count`` tries), so waiting for them
    longer brings nothing."""
    return [task for task, state in readiness.items() if state["state"] in FAILED_STATES]


class StartupFailed(RuntimeError):
    """Models whose replicas did not start, Serve having given up retrying them."""

    def __init__(self, reasons: dict[str, str]):
        self.reasons = reasons  # task -> why
        super().__init__("; ".join(f"the {task} model could not be loaded: {reason}"
                                   for task, reason in sorted(reasons.items())))


def spec_to_dict(spec: ModelSpec) -> dict[str, Any]:
    return asdict(spec)


def spec_from_dict(data: dict[str, Any]) -> ModelSpec:
    data = dict(data)
    data["defaults"] = SamplingDefaults(**data["defaults"])
    data["limits"] = Limits(**data["limits"])
    data["loras"] = tuple((str(i), float(v)) for i, v in data.get("loras") or ())
    known = ModelSpec.__dataclass_fields__
    return ModelSpec(**{k: v for k, v in data.items() if k in known})


def allowed_model(name: str, model_dir: Path | None, known: set[str]) -> str:
    """What a switch to ``name`` loads: a model started with, a folder under ``model_dir``
    (as its real path) or a Hub id. Anything else is refused with one message, whatever is or
    is not at that path, so that the API tells nothing about the server's files."""
    if name in known:
        return name
    hub_id = HUB_ID.fullmatch(name) is not None and ".." not in name
    folder = _folder_in(model_dir, name) if model_dir is not None else None
    # Inside model_dir a missing folder is the admin's own typo: its switch fails with the
    # reason. An org/name that is no folder there is a Hub id.
    if folder is not None and (folder.is_dir() or not hub_id):
        return str(folder)
    if hub_id:
        return name
    where = "under --model_dir" if model_dir is not None else "under --model_dir (none is set)"
    raise Forbidden(f"model must be a Hub id (org/name), a model this backend started "
                    f"with, or a model folder {where}", param="model", code="model_not_allowed")


def _folder_in(model_dir: Path, name: str) -> Path | None:
    """``name`` (absolute, or relative to ``model_dir``) as a path inside ``model_dir``."""
    if "\x00" in name:
        return None
    try:
        # Judged by the name first: a path outside is refused before anything on disk is read.
        candidate = Path(os.path.normpath(model_dir / Path(name).expanduser()))
        if candidate == model_dir or not candidate.is_relative_to(model_dir):
            return None
        real, root = Path(os.path.realpath(candidate)), model_dir.resolve()
        inside = real != root and real.is_relative_to(root)  # a symlink inside may lead out
    except (OSError, RuntimeError, ValueError):  # an unknown ~user, a name too long
        return None
    return real if inside else None


@dataclass
class Slot:
    """One task's models: the generation serving it and a switch in progress."""

    task: Task
    spec: ModelSpec | None  # the model of the serving generation (None: unloaded)
    generation: int = 0  # the serving generation (0: none)
    pending: ModelSpec | None = None  # the model a switch is bringing up
    pending_generation: int = 0
    hold: bool = False  # queued jobs wait (the serving generation is being replaced)
    retiring: set[int] = field(default_factory=set)  # replaced, deleted after their last job
    unloaded: ModelSpec | None = None  # the model before an unload (a later PUT starts from it)
    last_switch: dict[str, Any] | None = None  # how the last switch ended

    def state(self, states: States) -> str:
        if self.pending is not None:
            return "switching"
        if self.spec is None:
            return "unloaded"
        return states.get((self.task, self.generation), {}).get("state", "LOADING").lower()


class ModelManager:
    """The serving generation of each task, and the switches between them."""

    def __init__(self, specs: dict[Task, ModelSpec], deployer: Deployer, state_path: Path,
                 run_id: str, running_jobs: Callable[[Task, int], int],
                 model_dir: Path | None = None):
        self.deployer = deployer
        # What a switch may load besides Hub ids: the models started with, the built-in ones
        # and the folders under model_dir.
        self.model_dir = model_dir
        self.known_models = {s.model for s in specs.values()} | set(TINY_MODEL_IDS.values())
        self.state_path, self.run_id = state_path, run_id
        # Jobs of a task still running on a given generation (the ingress tracks them).
        self.running_jobs = running_jobs
        self.slots: dict[Task, Slot] = {task: Slot(task, spec) for task, spec in specs.items()}
        self.states: States = {}
        self._changed = asyncio.Event()
        self._tasks: dict[Task, asyncio.Task] = {}
        self._next_generation = 1

    # -- start -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Deploy each task's first generation, or adopt the generations of an ingress that ran
        before this one in the same backend run (Serve restarted it)."""
        saved = self._load()
        if saved is not None:
            # Generation numbers never repeat, even across runs: a Serve instance that outlived
            # the last run may still hold its applications.
            self._next_generation = saved["next_generation"]
        if saved is not None and saved["run_id"] == self.run_id:
            for task, entry in saved["tasks"].items():
                self.slots[task] = Slot(task, spec_from_dict(entry["spec"]) if entry["spec"]
                                        else None, entry["generation"])
            log.info("models adopted from this run: %s", {t: (s.spec.model if s.spec else None,
                     s.generation) for t, s in self.slots.items()})
            # A switch that was in flight when the ingress died is not resumed: its generation
            # (if any) is deleted by the ingress's cleanup of unknown generations. A generation
            # that is gone (its application was deleted with the ingress's) is deployed again.
            for slot in self.slots.values():
                if slot.spec is not None and not await self.deployer.exists(slot.task,
                                                                             slot.generation):
                    slot.generation = self._take_generation()
                    await self.deployer.deploy(slot.task, slot.spec, slot.generation)
            self._save()
            return
        for slot in self.slots.values():
            slot.generation = self._take_generation()
            await self.deployer.deploy(slot.task, slot.spec, slot.generation)
        self._save()

    def known_generations(self) -> set[tuple[str, int]]:
        """Generations this manager serves, loads or retires (everything else may go)."""
        live: set[tuple[str, int]] = set()
        for slot in self.slots.values():
            if slot.spec is not None:
                live.add((slot.task, slot.generation))
            if slot.pending is not None:
                live.add((slot.task, slot.pending_generation))
            live.update((slot.task, g) for g in slot.retiring)
        return live

    # -- what dispatch needs -----------------------------------------------------------------

    def serving(self, task: Task) -> tuple[ModelSpec, int] | None:
        """The model and generation new jobs of ``task`` go to; None while they must wait."""
        slot = self.slots.get(task)
        if slot is None or slot.spec is None or slot.hold:
            return None
        return slot.spec, slot.generation

    def capacity(self, task: Task) -> int:
        serving = self.serving(task)
        if serving is None:
            return 0
        spec, generation = serving
        running = self.states.get((task, generation), {}).get("replicas_running", 0)
        return running * spec.max_ongoing_requests

    def spec(self, task: Task) -> ModelSpec | None:
        """The model requests of ``task`` are validated against (the pending one mid-switch,
        since queued jobs will run on it)."""
        slot = self.slots.get(task)
        if slot is None:
            return None
        return slot.pending or slot.spec

    def readiness(self) -> dict[str, dict[str, Any]]:
        """Per task, for /ready: RUNNING while some generation can run its jobs."""
        out: dict[str, dict[str, Any]] = {}
        for task, slot in self.slots.items():
            if slot.spec is None and slot.pending is None:
                out[task] = {"state": "UNLOADED", "replicas_running": 0, "message": None}
                continue
            current = self.states.get((task, slot.generation), {}) if slot.spec else {}
            entry = {"state": current.get("state", "LOADING"),
                     "replicas_running": current.get("replicas_running", 0),
                     "message": current.get("message")}
            if slot.pending is not None:
                pending = self.states.get((task, slot.pending_generation), {})
                if entry["state"] != "RUNNING":
                    entry = {"state": pending.get("state", "LOADING"),
                             "replicas_running": pending.get("replicas_running", 0),
                             "message": pending.get("message")}
                entry["switching_to"] = slot.pending.model
            out[task] = entry
        return out

    def observe(self, states: States) -> None:
        """The replica states of the live generations, read from Serve (every poll)."""
        self.states = states
        self._changed.set()

    def job_ended(self) -> None:
        self._changed.set()

    # -- describe ----------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """GET /v1/models: each task's serving model, and a switch in progress."""
        data = []
        for task, slot in self.slots.items():
            # An unloaded task still shows its last model (with state "unloaded").
            spec = slot.spec or slot.pending or slot.unloaded
            entry: dict[str, Any] = {"object": "model", **(spec.describe() if spec else
                                                           {"id": None, "task": task})}
            entry["state"] = slot.state(self.states)
            entry["generation"] = slot.generation or None
            if slot.pending is not None:
                entry["id"] = slot.spec.model if slot.spec else None
                entry["switching_to"] = {"id": slot.pending.model, "engine": slot.pending.engine,
                                         "replicas": slot.pending.replicas,
                                         "generation": slot.pending_generation}
            if slot.last_switch is not None:
                entry["last_switch"] = slot.last_switch
            data.append(entry)
        return data

    def describe_task(self, task: Task) -> dict[str, Any]:
        return next(d for d in self.describe() if d["task"] == task)

    # -- switching ---------------------------------------------------------------------------

    def update(self, task: Task, model: str | None = None, engine: str | None = None,
               replicas: int | None = None) -> dict[str, Any]:
        """Start switching ``task`` to another model, engine or replica count (202)."""
        slot = self._slot(task)
        if slot.pending is not None or task in self._tasks:
            raise Conflict(f"the {task} model is already being switched; wait until "
                           "GET /v1/models shows it serving", code="switch_in_progress")
        base = slot.spec or slot.unloaded
        if base is None:
            raise InvalidInput(f"no {task} model was ever deployed here; name one with model",
                               param="model")
        if model is not None and model.strip():
            # Before anything changes: a refused model leaves the task serving as it was.
            model = allowed_model(model.strip(), self.model_dir, self.known_models)
        new = self._changed_spec(base, model, engine, replicas)
        if slot.spec is not None and new == slot.spec:
            return self.describe_task(task)  # nothing to change
        slot.pending, slot.pending_generation = new, self._take_generation()
        # From the 202 on, queued jobs wait for the new model rather than start on the old.
        slot.hold = slot.spec is not None
        slot.last_switch = None
        self._tasks[task] = asyncio.create_task(self._switch(slot), name=f"switch-{task}")
        return self.describe_task(task)

    def _slot(self, task: Task) -> Slot:
        slot = self.slots.get(task)
        if slot is None:
            raise NotFound(f"this backend was not started with a {task} model "
                           "(see --tasks)", param="model_type", code="model_not_found")
        return slot

    @staticmethod
    def _changed_spec(base: ModelSpec, model: str | None, engine: str | None,
                      replicas: int | None) -> ModelSpec:
        changes: dict[str, Any] = {}
        if model is not None:
            if not model.strip():
                raise InvalidInput("model must name a model folder or hub id", param="model")
            changes.update(model=model.strip(), synthetic=is_synthetic(model.strip()))
            if model.strip() != base.model:
                changes["local_path"] = None  # the folder fetched at start is the old model's
        if engine is not None and engine != base.engine:
            if engine not in ENGINES:
                raise InvalidInput(f"engine must be one of {', '.join(ENGINES)}",
                                   param="engine")
            if engine == "fastvideo" and base.num_gpus == 0 and not fastvideo_cpu_allowed():
                raise InvalidInput("the fastvideo engine needs a GPU and this model is placed "
                                   "on the CPU", param="engine")
            # Engine options belong to an engine: the new one starts from its plain defaults
            # (the fastvideo engine offloads nothing unless its options say so).
            changes.update(engine=engine, engine_options={})
        if replicas is not None:
            if not 1 <= replicas <= MAX_REPLICAS:
                raise InvalidInput(f"replicas must be between 1 and {MAX_REPLICAS}",
                                   param="replicas")
            changes["replicas"] = replicas
        return replace(base, **changes)

    def unload(self, task: Task) -> dict[str, Any]:
        """Stop serving ``task``: queued jobs fail, running ones finish, then its replicas go."""
        slot = self._slot(task)
        if slot.pending is not None or task in self._tasks:
            raise Conflict(f"the {task} model is being switched; unload it afterwards",
                           code="switch_in_progress")
        if slot.spec is None:
            return self.describe_task(task)
        slot.unloaded = slot.spec
        slot.retiring.add(slot.generation)
        slot.spec, slot.generation, slot.hold = None, 0, False
        slot.last_switch = {"action": "unloaded", "at": time.time()}
        self._save()
        self._tasks[task] = asyncio.create_task(self._retire(slot), name=f"unload-{task}")
        return self.describe_task(task)

    async def _switch(self, slot: Slot) -> None:
        new, generation = slot.pending, slot.pending_generation
        assert new is not None
        old = slot.spec
        started = time.monotonic()
        try:
            if old is None or self.deployer.has_room(new):
                outcome = await self._blue_green(slot, new, generation)
            else:
                outcome = await self._replace_in_place(slot, new, generation)
        except Exception as exc:  # noqa: BLE001 - recorded on the slot, the service goes on
            log.exception("switching the %s model failed", slot.task)
            outcome = f"failed: {public_reason(str(exc))}"
            slot.pending, slot.hold = None, False
        finally:
            self._tasks.pop(slot.task, None)
        slot.last_switch = {"to": new.model, "engine": new.engine, "replicas": new.replicas,
                            "result": outcome, "seconds": round(time.monotonic() - started, 1)}
        log.info("%s model switch to %s: %s", slot.task, new.model, outcome)

    async def _blue_green(self, slot: Slot, new: ModelSpec, generation: int) -> str:
        await self.deployer.deploy(slot.task, new, generation)
        error = await self._wait_running(slot.task, generation)
        if error is not None:
            slot.pending, slot.hold = None, False
            await self.deployer.delete(slot.task, generation)
            return f"failed: {error}; still serving {slot.spec.model if slot.spec else 'nothing'}"
        if slot.spec is not None:
            slot.retiring.add(slot.generation)
        slot.spec, slot.generation, slot.pending, slot.hold = new, generation, None, False
        self._save()
        await self._retire(slot)
        return "serving"

    async def _replace_in_place(self, slot: Slot, new: ModelSpec, generation: int) -> str:
        old, old_generation = slot.spec, slot.generation
        assert old is not None
        await self._until(lambda: self.running_jobs(slot.task, old_generation) == 0)
        await self.deployer.delete(slot.task, old_generation)
        await self.deployer.deploy(slot.task, new, generation)
        error = await self._wait_running(slot.task, generation)
        if error is None:
            slot.spec, slot.generation, slot.pending, slot.hold = new, generation, None, False
            self._save()
            return "serving"
        # The old model comes back under a new generation.
        await self.deployer.delete(slot.task, generation)
        back = self._take_generation()
        await self.deployer.deploy(slot.task, old, back)
        slot.spec, slot.generation, slot.pending, slot.hold = old, back, None, False
        self._save()
        return f"failed: {error}; {old.model} deployed again"

    async def _retire(self, slot: Slot) -> None:
        """Delete each replaced generation once no job runs on it any more."""
        for generation in sorted(slot.retiring):
            await self._until(lambda g=generation: self.running_jobs(slot.task, g) == 0)
            await self.deployer.delete(slot.task, generation)
            slot.retiring.discard(generation)
        self._tasks.pop(slot.task, None)

    async def _wait_running(self, task: Task, generation: int) -> str | None:
        """None once ``generation`` has a running replica; the reason when it cannot start."""
        deadline = time.monotonic() + DEPLOY_TIMEOUT_S
        while True:
            state = self.states.get((task, generation), {})
            if state.get("state") == "RUNNING":
                return None
            if state.get("state") in FAILED_STATES:
                return state.get("message") or "its replicas did not start"
            if time.monotonic() > deadline:
                return f"not running after {DEPLOY_TIMEOUT_S:.0f} s"
            await self._next_change()

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._next_change()

    async def _next_change(self) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), 1.0)
        except TimeoutError:
            pass

    def _take_generation(self) -> int:
        generation = self._next_generation
        self._next_generation += 1
        return generation

    # -- persistence -------------------------------------------------------------------------

    def _save(self) -> None:
        data = {"run_id": self.run_id, "next_generation": self._next_generation,
                "tasks": {task: {"generation": slot.generation,
                                 "spec": spec_to_dict(slot.spec) if slot.spec else None}
                          for task, slot in self.slots.items()}}
        write_atomic(self.state_path, json.dumps(data, indent=1).encode())

    def _load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and "next_generation" in data else None
