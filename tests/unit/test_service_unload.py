"""VideoService against an unload, over a fake deployer: no job is left waiting for a model
that is not coming, and requests waiting on one get a 503 that says so."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.helpers import png_b64
from tests.unit.test_models import SPECS, FakeDeployer
from videoserve.core.config import Settings
from videoserve.core.errors import ServiceError
from videoserve.core.model_switch import ModelManager
from videoserve.core.request import GenerateVideoRequest
from videoserve.core.service import VideoService
from videoserve.http.errors import as_api_error

SMALL = {"num_frames": 5, "height": 16, "width": 16, "num_inference_steps": 1}


async def no_generator(task, item):
    raise AssertionError("nothing is dispatched: no replica is up")
    yield  # an async generator, like the real dispatch


def new_service(tmp_path) -> VideoService:
    models = ModelManager(dict(SPECS), FakeDeployer(), tmp_path / "models.json", "run-1",
                          lambda task, generation: 0)
    return VideoService(Settings(models=dict(SPECS), output_path=tmp_path), no_generator,
                        models)


async def until(predicate, timeout: float = 5.0) -> None:
    async def poll():
        while not predicate():
            await asyncio.sleep(0.005)
    await asyncio.wait_for(poll(), timeout)


def test_a_waiting_generate_request_gets_503_model_unloaded(tmp_path):
    async def main():
        service = new_service(tmp_path)
        service.start()  # no replica ever comes up: the job stays queued until the unload
        waiting = asyncio.create_task(service.generate(GenerateVideoRequest(prompt="x", **SMALL)))
        await until(lambda: service.runner.counts("t2v") == (1, 0))
        service.unload_model("t2v")
        with pytest.raises(ServiceError) as info:
            await waiting
        service.runner.stop()
        return info.value
    error = asyncio.run(main())
    answer = as_api_error(error)  # what the client sees
    assert (answer.status, answer.code) == (503, "model_unloaded"), (answer.status, answer.message)
    assert int(answer.headers["Retry-After"]) > 0 and "unloaded" in answer.message


def test_an_i2v_create_decoding_its_image_during_the_unload_is_not_queued(tmp_path, monkeypatch):
    from videoserve.core import service as service_module

    decoding, release = threading.Event(), threading.Event()
    fitted = service_module.fitted_png

    def slow_fit(*args):
        decoding.set()
        release.wait(10)
        return fitted(*args)

    monkeypatch.setattr(service_module, "fitted_png", slow_fit)

    async def main():
        service = new_service(tmp_path)
        service.start()
        create = asyncio.create_task(service.submit(GenerateVideoRequest(
            prompt="x", image=png_b64(), **SMALL)))
        await until(decoding.is_set)
        service.unload_model("i2v")
        release.set()
        try:
            await create
        except ServiceError as exc:
            outcome = exc
        else:
            outcome = None
        left = service.runner.counts("i2v")
        service.runner.stop()
        return outcome, left
    outcome, (queued, running) = asyncio.run(main())
    assert queued == running == 0, "a job was left queued for the unloaded i2v model"
    assert outcome is not None
    assert (as_api_error(outcome).status, outcome.code) == (404, "model_not_found")
    assert "unloaded" in outcome.message
