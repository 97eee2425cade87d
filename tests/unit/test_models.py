"""ModelManager without Ray: a fake deployer whose generations come up (or fail) on command."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from videoserve.core.errors import ServiceError
from videoserve.core.model_switch import ModelManager
from videoserve.http.errors import as_api_error
from videoserve.serve.presets import build_specs

SPECS = build_specs("tiny", gpu_count=0)


class FakeDeployer:
    """Records deploys and deletes; ``room`` says whether both generations fit at once."""

    def __init__(self, room: bool = True, failing: tuple[str, ...] = ()):
        self.room, self.failing = room, failing
        self.log: list[tuple] = []
        self.live: dict[tuple[str, int], str] = {}  # generation -> model

    async def deploy(self, task, spec, generation):
        self.log.append(("deploy", task, generation, spec.model))
        self.live[(task, generation)] = spec.model

    async def delete(self, task, generation):
        self.log.append(("delete", task, generation))
        self.live.pop((task, generation), None)

    async def exists(self, task, generation):
        return (task, generation) in self.live

    def has_room(self, spec):
        return self.room

    def states(self):
        return {key: {"state": "UNHEALTHY" if model in self.failing else "RUNNING",
                      "replicas_running": 0 if model in self.failing else 1,
                      "message": "its replicas did not start (boom)"}
                for key, model in self.live.items()}


async def settle(manager: ModelManager, deployer: FakeDeployer, until) -> None:
    """Feed the deployer's states to the manager until ``until()`` (as the ingress's poll)."""
    for _ in range(500):
        manager.observe(deployer.states())
        if until():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the manager did not settle")


def new_manager(tmp_path, deployer, running=lambda task, generation: 0) -> ModelManager:
    return ModelManager(dict(SPECS), deployer, tmp_path / "models.json", "run-1", running)


def test_blue_green_keeps_the_old_generation_until_its_last_job(tmp_path):
    async def main():
        deployer, jobs_on = FakeDeployer(room=True), {("t2v", 1): 1}
        manager = new_manager(tmp_path, deployer, lambda t, g: jobs_on.get((t, g), 0))
        await manager.start()
        await settle(manager, deployer, lambda: manager.capacity("t2v") == 1)
        described = manager.update("t2v", model="org/other-model")
        assert described["switching_to"]["id"] == "org/other-model"
        assert manager.capacity("t2v") == 0  # queued jobs wait for the new model
        await settle(manager, deployer,
                     lambda: manager.slots["t2v"].spec.model == "org/other-model")
        assert ("t2v", 1) in deployer.live  # a job still runs on the old generation
        assert manager.readiness()["t2v"]["state"] == "RUNNING"
        jobs_on.clear()
        manager.job_ended()
        await settle(manager, deployer, lambda: ("t2v", 1) not in deployer.live)
        assert deployer.log[-2:] == [("deploy", "t2v", 3, "org/other-model"), ("delete", "t2v", 1)]
        assert manager.describe_task("t2v")["last_switch"]["result"] == "serving"

    asyncio.run(main())


def test_without_room_the_old_generation_goes_first_and_a_failure_brings_it_back(tmp_path):
    async def main():
        deployer = FakeDeployer(room=False, failing=("org/broken",))
        manager = new_manager(tmp_path, deployer)
        await manager.start()
        await settle(manager, deployer, lambda: manager.capacity("t2v") == 1)
        old = manager.slots["t2v"].spec.model
        manager.update("t2v", model="org/broken")
        await settle(manager, deployer, lambda: manager.slots["t2v"].last_switch is not None)
        # Drained and deleted first, then the new one; it failed, so the old model came back.
        assert deployer.log[2:] == [("delete", "t2v", 1), ("deploy", "t2v", 3, "org/broken"),
                                    ("delete", "t2v", 3), ("deploy", "t2v", 4, old)]
        result = manager.slots["t2v"].last_switch["result"]
        assert result.startswith("failed: its replicas did not start (boom)"), result
        assert manager.slots["t2v"].spec.model == old and manager.slots["t2v"].generation == 4

    asyncio.run(main())


def test_unload_then_load_again_and_validation(tmp_path):
    async def main():
        deployer = FakeDeployer()
        manager = new_manager(tmp_path, deployer)
        await manager.start()
        await settle(manager, deployer, lambda: manager.capacity("i2v") == 1)
        for changes in ({"replicas": 0}, {"model": " "}):
            with pytest.raises(ServiceError) as refused:
                manager.update("i2v", **changes)
            assert as_api_error(refused.value).status == 422
        assert manager.unload("i2v")["state"] == "unloaded"
        await settle(manager, deployer, lambda: ("i2v", 2) not in deployer.live)
        assert manager.spec("i2v") is None and manager.readiness()["i2v"]["state"] == "UNLOADED"
        manager.update("i2v", replicas=2)  # from the model it had
        await settle(manager, deployer, lambda: manager.capacity("i2v") == 1)
        assert manager.spec("i2v") == replace(SPECS["i2v"], replicas=2)

    asyncio.run(main())


def test_a_restarted_ingress_adopts_the_switched_models_of_its_run(tmp_path):
    async def main():
        deployer = FakeDeployer()
        first = new_manager(tmp_path, deployer)
        await first.start()
        first.update("t2v", model="org/other-model")
        await settle(first, deployer, lambda: first.slots["t2v"].spec.model == "org/other-model")
        again = new_manager(tmp_path, deployer)  # same run id: Serve restarted the ingress
        await again.start()
        assert again.slots["t2v"].spec.model == "org/other-model"
        assert again.slots["t2v"].generation == first.slots["t2v"].generation
        # The same run deployed again after its applications were deleted: nothing to adopt.
        deployer.live.pop(("t2v", again.slots["t2v"].generation))
        third = new_manager(tmp_path, deployer)
        await third.start()
        assert third.slots["t2v"].generation > again.slots["t2v"].generation
        assert deployer.live[("t2v", third.slots["t2v"].generation)] == "org/other-model"
        fresh = ModelManager(dict(SPECS), deployer, tmp_path / "models.json", "run-2",
                             lambda t, g: 0)
        await fresh.start()  # a new run starts from its own settings, with new generations
        assert fresh.slots["t2v"].spec == SPECS["t2v"]
        assert fresh.slots["t2v"].generation > first.slots["t2v"].generation

    asyncio.run(main())


def test_a_switch_loads_only_hub_ids_start_models_and_folders_under_model_dir(tmp_path):
    model_dir, outside = tmp_path / "models", tmp_path / "outside"
    (model_dir / "mine").mkdir(parents=True)
    (outside / "no-config").mkdir(parents=True)
    (outside / "model").mkdir()
    (outside / "model" / "config.json").write_text("{}")
    (outside / "bad-json").mkdir()
    (outside / "bad-json" / "config.json").write_text("{")
    (model_dir / "escape").symlink_to(outside / "model")
    refused_names = ["/etc/shadow", "/etc/passwd", "/nonexistent/model", str(outside / "model"),
                     str(outside / "no-config"), str(outside / "bad-json"), "../outside/model",
                     "mine/../../outside/model", "escape", str(model_dir / "escape"),
                     str(model_dir / "escape" / "sub"), "~/model", "org/.."]

    async def main():
        deployer = FakeDeployer()
        manager = ModelManager(dict(SPECS), deployer, tmp_path / "models.json", "run-1",
                               lambda task, generation: 0, model_dir)
        await manager.start()
        await settle(manager, deployer, lambda: manager.capacity("t2v") == 1)
        before = list(deployer.log)
        messages = set()
        for name in refused_names:
            with pytest.raises(ServiceError) as refused:
                manager.update("t2v", model=name)
            answer = as_api_error(refused.value)
            assert (answer.status, answer.code) == (403, "model_not_allowed"), name
            messages.add(refused.value.message)
        # One message for all: whether a path exists, or what it holds, is never told.
        assert len(messages) == 1 and "/" not in messages.pop().replace("org/name", "")
        # Refused before anything changed: nothing deployed or deleted, the task stays ready.
        assert deployer.log == before and manager.slots["t2v"].pending is None
        assert manager.readiness()["t2v"]["state"] == "RUNNING"
        assert manager.update("t2v", model="mine")["switching_to"]["id"] == str(
            (model_dir / "mine").resolve())
        await settle(manager, deployer, lambda: manager.slots["t2v"].pending is None)
        root = model_dir.resolve()
        for allowed, loads in (("FastVideo/FastWan2.1-T2V-1.3B-Diffusers", None),
                               (SPECS["t2v"].model, None), (str(model_dir / "mine"), "mine"),
                               ("not-there-yet", "not-there-yet")):
            manager.update("t2v", model=allowed)
            await settle(manager, deployer, lambda: manager.slots["t2v"].pending is None)
            assert manager.slots["t2v"].spec.model == (str(root / loads) if loads else allowed)

    asyncio.run(main())


def test_without_model_dir_no_folder_may_be_loaded(tmp_path):
    (tmp_path / "folder").mkdir()

    async def main():
        manager = new_manager(tmp_path, FakeDeployer())
        await manager.start()
        for name in (str(tmp_path / "folder"), "folder", "a/b/c"):
            with pytest.raises(ServiceError) as refused:
                manager.update("t2v", model=name)
            assert as_api_error(refused.value).status == 403
            assert "none is set" in refused.value.message

    asyncio.run(main())
