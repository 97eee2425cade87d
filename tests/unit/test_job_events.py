"""Watching a job: the store's change notification, the event stream (GET /v1/videos/{id}/events)
over a fake dispatch, a cancel that answers at once, and the log lines jobs and polls make."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
from starlette.testclient import TestClient

from tests.unit.test_runner import PARAMS, FakeGenerators, add, finished, make_runner, until
from tests.unit.test_service_unload import new_service
from videoserve.core.jobs import Job, JobStore, new_job_id
from videoserve.core.sampling import Cancelled, Progress, Result, Started
from videoserve.http.access_log import ProbeAccessFilter, forward_service_logs
from videoserve.http.app import create_app
from videoserve.http.job_events import KEEPALIVE, job_events, parse_last_event_id
from videoserve.http.security import owner_of


def parse(chunk: str) -> dict:
    """One event of the stream as {"id", "event", "data"} (a comment as {"comment"})."""
    if chunk.startswith(":"):
        return {"comment": chunk[1:].strip()}
    fields = dict(line.split(": ", 1) for line in chunk.strip().splitlines())
    return {"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])}


def watcher(runner) -> SimpleNamespace:
    """What job_events needs of the service."""
    return SimpleNamespace(jobs=runner.store, queue_position=runner.queue_position)


async def collect(stream, into: list[dict], delay_s: float = 0.0) -> None:
    async for chunk in stream:
        into.append(parse(chunk))
        await asyncio.sleep(delay_s)


def test_changes_wake_waiters_and_versions_grow(tmp_path):
    async def main():
        store = JobStore(tmp_path / "jobs.sqlite3")
        job = store.add(Job(id=new_job_id(), task="t2v", model="m", engine="e", synthetic=True,
                            params=PARAMS, total_steps=3))
        first = store.version(job.id)
        assert await store.changed(job.id, first, 0.01) == first  # nothing changed: timeout
        waiter = asyncio.create_task(store.changed(job.id, first, 5))
        await asyncio.sleep(0.01)
        store.put(job.to("in_progress"))
        second = await waiter
        store.put(store.get(job.id).to("in_progress", step=1))
        third = store.version(job.id)
        return first, second, third, store._watchers
    first, second, third, watchers = asyncio.run(main())
    assert first < second < third
    assert second > time.time_ns() // 1_000_000 - 60_000  # milliseconds: they outlive a restart
    assert watchers == {}  # waiters leave nothing behind


def test_progress_events_then_the_final_job_object(tmp_path):
    async def main():
        fake = FakeGenerators()
        fake.gate.clear()
        runner = make_runner(tmp_path, fake)
        job = add(runner)
        runner.start(("t2v",))
        events: list[dict] = []
        reader = asyncio.create_task(collect(job_events(watcher(runner), job.id), events))
        await until(lambda: fake.started == [job.id] and events)
        fake.scripts[job.id] = [Started(), Progress("denoising", 1, 3),
                                Progress("denoising", 2, 3), Progress("denoising", 3, 3),
                                Result(b"mp4", 5, 16, 16, 0.1, 0.01)]
        fake.gate.set()
        await asyncio.wait_for(reader, 5)  # the stream ends after the final event
        runner.stop()
        return events
    events = asyncio.run(main())
    assert [e["event"] for e in events[:-1]] == ["progress"] * (len(events) - 1)
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids))
    first = events[0]["data"]
    assert set(first) == {"step", "total_steps", "stage", "queue_position", "eta_s",
                          "preview_step"}
    assert first["preview_step"] is None
    steps = [e["data"]["step"] for e in events[:-1]]
    assert steps == sorted(steps)
    final = events[-1]
    assert final["event"] == "completed" and final["data"]["object"] == "video"
    assert final["data"]["status"] == "completed" and final["data"]["progress"] == 100


def test_a_client_that_fell_behind_gets_each_kept_state_not_a_backlog(tmp_path):
    from videoserve.core.jobs import HISTORY

    async def events_after(changes: int) -> list[dict]:
        runner = make_runner(tmp_path / str(changes), FakeGenerators())
        job = runner.store.put(add(runner).to("in_progress", total_steps=changes))
        stream = job_events(watcher(runner), job.id)
        seen = [parse(await anext(stream))]
        for step in range(1, changes + 1):  # changes while the client reads nothing
            job = runner.store.put(job.to("in_progress", step=step, stage="denoising"))
        runner.store.put(job.to("in_progress", preview_step=changes - 2))
        runner.store.put(runner.store.get(job.id).to("cancelled"))
        async for event in stream:
            seen.append(parse(event))
        return seen

    behind = asyncio.run(events_after(50))
    assert [e["data"]["step"] for e in behind[:-1]] == list(range(51)) + [50]  # every step
    assert behind[-2]["data"]["preview_step"] == 48
    assert [e["id"] for e in behind] == sorted({e["id"] for e in behind})
    assert behind[-1]["event"] == "cancelled" and behind[-1]["data"]["status"] == "cancelled"
    far = asyncio.run(events_after(300))  # further behind than the kept states
    steps = [e["data"]["step"] for e in far[1:-1]]
    assert len(steps) < HISTORY and steps == sorted(steps) and steps[-1] == 300


def test_last_event_id_resumes_and_the_final_event_is_always_sent(tmp_path):
    async def main():
        runner = make_runner(tmp_path, FakeGenerators())
        job = runner.store.put(add(runner).to("in_progress", step=1, stage="denoising"))
        seen = parse(await anext(job_events(watcher(runner), job.id)))
        # Reconnecting with that id: nothing is sent again until the job changes.
        resumed = job_events(watcher(runner), job.id, seen["id"], keepalive_s=0.05)
        quiet = await anext(resumed)
        runner.store.put(job.to("in_progress", step=2))
        after = parse(await anext(resumed))
        final = runner.store.put(runner.store.get(job.id).to("completed", step=3))
        last = parse(await anext(resumed))
        # After the final event: a reconnect with its id gets it again, at once.
        again = [parse(c) async for c in job_events(watcher(runner), job.id, last["id"])]
        return seen, quiet, after, last, again, final
    seen, quiet, after, last, again, final = asyncio.run(main())
    assert quiet == KEEPALIVE  # a comment line, not an event
    assert after["event"] == "progress" and after["data"]["step"] == 2
    assert seen["id"] < after["id"] < last["id"]
    assert last["event"] == "completed" and last["data"]["id"] == final.id
    assert again == [last]


def test_last_event_id_values():
    assert parse_last_event_id(None) == 0 and parse_last_event_id("") == 0
    assert parse_last_event_id(" 1700000000123 ") == 1700000000123
    assert parse_last_event_id("abc") == 0 and parse_last_event_id("-5") == 0
    assert parse_last_event_id("9" * 40) == 0


def test_cancel_answers_at_once_and_the_job_turns_cancelled_when_it_stops(tmp_path):
    async def main():
        fake = FakeGenerators()
        fake.gate.clear()
        stop_requested = asyncio.Event()

        async def request_cancel(job_id: str) -> None:
            await asyncio.sleep(1.0)  # a slow cancel board must not hold the answer up
            stop_requested.set()

        runner = make_runner(tmp_path, fake)
        runner.request_cancel = request_cancel
        job = add(runner)
        fake.scripts[job.id] = [Started(), Progress("denoising", 1, 3),
                                Cancelled(2, "denoising", 1)]
        runner.start(("t2v",))
        await until(lambda: fake.started == [job.id])
        start = time.monotonic()
        answer = await runner.cancel(job.id)
        took = time.monotonic() - start
        again = await runner.cancel(job.id)  # a second cancel keeps the first record
        fake.gate.set()
        await until(lambda: finished(runner, job))
        await asyncio.wait_for(stop_requested.wait(), 5)
        runner.stop()
        return answer, again, took, runner.store.get(job.id)
    answer, again, took, final = asyncio.run(main())
    assert took < 0.2, took
    assert answer.status == "in_progress" and answer.cancellation["requested_at"]
    assert again.cancellation == answer.cancellation
    assert final.status == "cancelled" and final.cancellation["stopped_at_step"] == 2
    assert final.cancellation["requested_at"] == answer.cancellation["requested_at"]


def test_a_job_start_and_finish_are_logged_at_info(tmp_path, caplog):
    async def main():
        fake = FakeGenerators()
        runner = make_runner(tmp_path, fake)
        job = runner.submit(Job(id=new_job_id(), task="t2v", model="m", engine="e",
                                synthetic=True, params=PARAMS,
                                total_steps=3))
        runner.start(("t2v",))
        await until(lambda: finished(runner, job))
        runner.stop()
        return job
    with caplog.at_level(logging.INFO, logger="videoserve"):
        job = asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records
             if r.name == "videoserve.core.runner" and r.levelno == logging.INFO]
    assert any(line.startswith(f"job {job.id} queued") for line in lines), lines
    assert any(line.startswith(f"job {job.id} started") for line in lines), lines
    assert any(line.startswith(f"job {job.id} finished: completed") for line in lines), lines


def access_line(message: str, route: str) -> logging.LogRecord:
    record = logging.LogRecord("ray.serve.polls", logging.INFO, __file__, 1, message, None, None)
    record.serve_access_log, record.route = True, route
    return record


@pytest.mark.parametrize(("message", "route", "quiet"), [
    ("GET /v1/videos/{job_id} 200 1.2ms", "/v1/videos/{job_id}", True),
    ("127.0.0.1:5000 GET /app/v1/videos/{job_id} 200 1.2ms", "/app/v1/videos/{job_id}", True),
    ("GET /v1/videos/{job_id}/preview 200 1.2ms", "/v1/videos/{job_id}/preview", True),
    ("GET /v1/videos/{job_id}/events 200 9000.0ms", "/v1/videos/{job_id}/events", True),
    ("CALL start_status OK 3.1ms", "", True),
    ("CALL ready OK 3.1ms", "", True),
    ("DELETE /v1/videos/{job_id} 200 1.2ms", "/v1/videos/{job_id}", False),
    ("POST /v1/videos/{job_id}/cancel 200 1.2ms", "/v1/videos/{job_id}/cancel", False),
    ("POST /v1/videos 200 1.2ms", "/v1/videos", False),
    ("GET /v1/videos 200 1.2ms", "/v1/videos", False),
    ("CALL placement OK 3.1ms", "", False),
])
def test_polls_are_logged_at_debug_changes_at_info(message, route, quiet):
    logging.getLogger("ray.serve.polls").setLevel(logging.INFO)
    record = access_line(message, route)
    assert ProbeAccessFilter().filter(record) is (not quiet)
    assert record.levelname == ("DEBUG" if quiet else "INFO")


def test_service_logs_reach_the_serve_logger_once():
    caught: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record):
            caught.append(record)

    target = logging.getLogger("videoserve.test.target")
    target.addHandler(Catch())
    name = "videoserve.test.source"
    try:
        forward_service_logs(name, "videoserve.test.target")
        forward_service_logs(name, "videoserve.test.target")
        logging.getLogger(name + ".runner").info("job x started")
        logging.getLogger(name + ".runner").debug("not this")
    finally:
        logging.getLogger(name).handlers.clear()
        target.handlers.clear()
    assert [r.getMessage() for r in caught] == ["job x started"]


# -- the route ---------------------------------------------------------------------------------

async def no_readiness() -> dict:
    return {}


def http_client(service) -> TestClient:
    return TestClient(create_app(service, no_readiness), base_url="http://127.0.0.1:8000")


def stored_job(service, **changes) -> Job:
    return service.jobs.add(Job(id=new_job_id(), task="t2v", model="m", engine="e",
                                synthetic=True, params=PARAMS,
                                total_steps=3, **changes))


def test_the_route_answers_a_final_job_at_once_and_404s(tmp_path):
    service = new_service(tmp_path)
    job = stored_job(service)
    service.jobs.put(job.to("cancelled"))
    with http_client(service) as client:
        response = client.get(f"/v1/videos/{job.id}/events")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [parse(c + "\n\n") for c in response.text.strip().split("\n\n")]
        assert [e["event"] for e in events] == ["cancelled"]
        assert events[0]["data"] == client.get(f"/v1/videos/{job.id}").json()
        for unknown in ("video_" + "0" * 24, "nope"):
            missing = client.get(f"/v1/videos/{unknown}/events")
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_the_route_hides_another_keys_job(tmp_path):
    service = new_service(tmp_path)
    service.settings = replace(service.settings, api_keys=("key-a", "key-b"))
    job = stored_job(service, owner=owner_of("key-a"))
    service.jobs.put(job.to("in_progress").to("completed"))
    with http_client(service) as client:
        other = client.get(f"/v1/videos/{job.id}/events",
                           headers={"Authorization": "Bearer key-b"})
        assert other.status_code == 404
        mine = client.get(f"/v1/videos/{job.id}/events",
                          headers={"Authorization": "Bearer key-a"})
        assert mine.status_code == 200 and "event: completed" in mine.text
