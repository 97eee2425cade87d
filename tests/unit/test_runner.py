"""The job runner's state machine with a fake dispatch: no Ray, no engines."""

from __future__ import annotations

import asyncio

import pytest

from videoserve.core.errors import ServiceError
from videoserve.core.jobs import InvalidTransition, Job, JobStore, new_job_id
from videoserve.core.runner import JobObserver, JobRunner
from videoserve.core.sampling import Cancelled, Failed, Progress, Result, SamplingParams, Started
from videoserve.http.errors import as_api_error

PARAMS = SamplingParams(prompt="p", negative_prompt="", seed=1, guidance_scale=1.0,
                        num_frames=5, height=16, width=16, num_inference_steps=3, fps=8)


class FakeGenerators:
    """Dispatch that records each item and plays a script per job: a list of events, or an
    exception to raise (a dead replica), or a tuple of those (one per attempt); ``gate`` holds
    jobs until released."""

    def __init__(self, capacity: int = 1):
        self.slots = capacity
        self.started: list[str] = []
        self.scripts: dict[str, list] = {}
        self.gate = asyncio.Event()
        self.gate.set()
        self.running = 0
        self.max_running = 0

    def capacity(self, task: str) -> int:
        return self.slots

    async def dispatch(self, task, item):
        self.started.append(item.job_id)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await self.gate.wait()
            script = self.scripts.get(item.job_id, [])
            if isinstance(script, tuple):  # one script per attempt
                script, self.scripts[item.job_id] = script[0], script[1:]
            if isinstance(script, Exception):
                raise script
            for event in script or [Started(), Progress("denoising", 3, 3),
                                    Result(b"mp4", 5, 16, 16, 0.1, 0.01)]:
                yield event
        finally:
            self.running -= 1


def make_runner(tmp_path, fake: FakeGenerators, store: JobStore | None = None) -> JobRunner:
    store = store or JobStore(tmp_path / "jobs.sqlite3")
    return JobRunner(store, fake.dispatch, fake.capacity, lambda job: None,
                     lambda job, result: {"bytes": len(result.mp4)})


def add(runner: JobRunner, **changes) -> Job:
    job = Job(id=new_job_id(), task="t2v", model="m", engine="e", synthetic=True,
              params=PARAMS, total_steps=3, **changes)
    return runner.store.add(job)


async def until(predicate, timeout: float = 5.0) -> None:
    async def poll():
        while not predicate():
            await asyncio.sleep(0.005)
    await asyncio.wait_for(poll(), timeout)


def finished(runner: JobRunner, *jobs: Job) -> bool:
    return all(runner.store.get(j.id).done for j in jobs)


def test_jobs_run_in_order_never_beyond_capacity(tmp_path):
    async def main():
        fake = FakeGenerators(capacity=2)
        runner = make_runner(tmp_path, fake)
        jobs = [add(runner) for _ in range(5)]
        runner.start(("t2v",))
        await until(lambda: finished(runner, *jobs))
        runner.stop()
        assert fake.started == [j.id for j in jobs]
        assert fake.max_running == 2
        for job in jobs:
            done = runner.store.get(job.id)
            assert done.status == "completed" and done.result == {"bytes": 3}
            assert done.attempts == 1 and done.step == 3
    asyncio.run(main())


def test_nothing_is_dispatched_while_no_replica_is_up(tmp_path):
    async def main():
        fake = FakeGenerators(capacity=0)
        runner = make_runner(tmp_path, fake)
        job = add(runner)
        runner.start(("t2v",))
        await asyncio.sleep(0.1)
        assert fake.started == [] and runner.store.get(job.id).status == "queued"
        fake.slots = 1
        runner.wake()
        await until(lambda: finished(runner, job))
        runner.stop()
        assert runner.store.get(job.id).status == "completed"
    asyncio.run(main())


def run_one(tmp_path, script) -> tuple[Job, list[str]]:
    """One job through a runner whose generator plays ``script``; (final job, dispatches)."""
    async def main():
        fake = FakeGenerators()
        runner = make_runner(tmp_path, fake)
        job = add(runner)
        fake.scripts[job.id] = script
        runner.start(("t2v",))
        await until(lambda: finished(runner, job))
        runner.stop()
        return runner.store.get(job.id), fake.started
    return asyncio.run(main())


def test_a_lost_replica_is_retried_once(tmp_path):
    # The first attempt's replica dies, the second attempt works.
    job, started = run_one(tmp_path, (ConnectionError("replica died"), []))
    assert started == [job.id, job.id]
    assert job.status == "completed" and job.attempts == 2


def test_a_job_failing_twice_fails_with_the_reason(tmp_path):
    job, started = run_one(tmp_path, ConnectionError("gone"))
    assert started == [job.id, job.id]
    assert job.status == "failed" and job.attempts == 2
    assert job.error == ("the generator replica was lost (ConnectionError); gave up after 2 "
                         "attempts")


def test_engine_failure_and_cancel_events_end_the_job_without_retry(tmp_path):
    async def main():
        fake = FakeGenerators(capacity=2)
        runner = make_runner(tmp_path, fake)
        failed, cancelled = add(runner), add(runner)
        fake.scripts[failed.id] = [Started(), Failed("ValueError: bad")]
        fake.scripts[cancelled.id] = [Started(), Progress("denoising", 1, 3),
                                      Cancelled(2, "denoising", 1)]
        runner.start(("t2v",))
        await until(lambda: finished(runner, failed, cancelled))
        runner.stop()
        return runner.store.get(failed.id), runner.store.get(cancelled.id), fake.started
    failed, cancelled, started = asyncio.run(main())
    assert failed.status == "failed" and failed.error == "ValueError: bad"
    assert cancelled.status == "cancelled" and cancelled.cancellation["stopped_at_step"] == 2
    assert started.count(failed.id) == 1 and started.count(cancelled.id) == 1


def test_a_queued_job_cancelled_never_runs(tmp_path):
    async def main():
        fake = FakeGenerators()
        fake.gate.clear()
        runner = make_runner(tmp_path, fake)
        first, second = add(runner), add(runner)
        runner.start(("t2v",))
        await until(lambda: fake.started == [first.id])
        stopped = await runner.cancel(second.id)
        fake.gate.set()
        await until(lambda: finished(runner, first))
        await asyncio.sleep(0.05)
        runner.stop()
        return stopped, fake.started
    stopped, started = asyncio.run(main())
    assert stopped.status == "cancelled" and stopped.id not in started


def test_restart_requeues_running_jobs_once_and_keeps_the_order(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    runner = make_runner(tmp_path, FakeGenerators(), store)
    once = runner.store.put(add(runner).to("in_progress"))
    twice = runner.store.put(add(runner, attempts=1).to("in_progress"))
    waiting = add(runner)
    store.close()

    async def main():
        fake = FakeGenerators()
        again = make_runner(tmp_path, fake)  # a new process on the same output folder
        again.start(("t2v",))
        await until(lambda: finished(again, once, waiting))
        await until(lambda: finished(again, twice))
        again.stop()
        return [again.store.get(j.id) for j in (once, twice, waiting)], fake.started
    (once, twice, waiting), started = asyncio.run(main())
    assert started == [once.id, waiting.id]
    assert once.status == "completed" and once.attempts == 2
    assert twice.status == "failed" and "gave up after 2 attempts" in twice.error
    assert waiting.status == "completed" and waiting.attempts == 1


def test_admission_refuses_with_retry_after(tmp_path):
    runner = make_runner(tmp_path, FakeGenerators())
    for _ in range(2):
        add(runner)
    runner.admit("t2v", queue_limit=3)
    add(runner)
    with pytest.raises(ServiceError) as info:
        runner.admit("t2v", queue_limit=3)
    answer = as_api_error(info.value)
    assert answer.status == 429 and int(answer.headers["Retry-After"]) >= 1
    runner.admit("i2v", queue_limit=3)  # another task's queue is separate
    with pytest.raises(ServiceError):
        runner.admit("i2v", queue_limit=3, count=4)


def test_stopping_leaves_running_jobs_for_the_next_start(tmp_path):
    async def main():
        fake = FakeGenerators()
        fake.gate.clear()
        runner = make_runner(tmp_path, fake)
        job = add(runner)
        fake.scripts[job.id] = ConnectionError("shut down")
        runner.start(("t2v",))
        await until(lambda: fake.started == [job.id])
        runner.stop()
        fake.gate.set()
        await asyncio.sleep(0.05)
        return runner.store.get(job.id)
    assert asyncio.run(main()).status == "in_progress"


def test_the_state_machine_refuses_impossible_moves():
    job = Job(id=new_job_id(), task="t2v", model="m", engine="e", synthetic=True, params=PARAMS)
    running = job.to("in_progress")
    assert running.attempts == 1 and running.started_at is not None
    done = running.to("completed", result={})
    assert done.finished_at is not None
    for bad in ("queued", "in_progress", "failed"):
        with pytest.raises(InvalidTransition):
            done.to(bad)
    with pytest.raises(InvalidTransition):
        job.to("completed")


def test_jobs_of_a_model_no_longer_deployed_fail_at_restart(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    runner = make_runner(tmp_path, FakeGenerators(), store)
    orphan = runner.store.add(Job(id=new_job_id(), task="i2v", model="m", engine="e",
                                  synthetic=True, params=PARAMS))
    store.close()
    again = make_runner(tmp_path, FakeGenerators())
    again.recover(("t2v",))
    job = again.store.get(orphan.id)
    assert job.status == "failed" and "i2v model is not deployed" in job.error


def test_a_cancel_the_generator_ignores_ends_the_stream(tmp_path, monkeypatch):
    monkeypatch.setattr("videoserve.core.runner.FORCE_CANCEL_S", 0.2)

    async def main():
        fake = FakeGenerators()
        fake.gate.clear()  # the generator never answers (nor reacts to the cancel board)
        runner = make_runner(tmp_path, fake)
        job = add(runner)
        runner.start(("t2v",))
        await until(lambda: fake.started == [job.id])
        await runner.cancel(job.id)  # answered at once; the job is still in_progress
        await until(lambda: finished(runner, job))
        runner.stop()
        return runner.store.get(job.id), fake.running
    job, running = asyncio.run(main())
    assert job.status == "cancelled" and job.cancellation["stopped_at_step"] == 0
    assert running == 0  # the stream was closed


class Finals(JobObserver):
    def __init__(self) -> None:
        self.final: list[str] = []

    def on_final(self, job: Job) -> None:
        self.final.append(job.id)


def test_jobs_failed_by_an_unload_are_reported_final_with_a_code(tmp_path):
    fake, observer = FakeGenerators(capacity=0), Finals()
    runner = JobRunner(JobStore(tmp_path / "jobs.sqlite3"), fake.dispatch, fake.capacity,
                       lambda job: None, lambda job, result: {}, observer=observer)
    queued = [add(runner), add(runner)]
    assert runner.fail_queued("t2v", "the t2v model was unloaded") == 2
    assert observer.final == [job.id for job in queued]  # the jobs metric counts them
    for job in queued:
        failed = runner.store.get(job.id)
        assert failed.status == "failed" and failed.error_code == "model_unloaded"
        assert "unloaded" in failed.error


def test_a_job_queued_for_a_task_without_a_model_fails_at_once(tmp_path):
    async def main():
        fake, loaded = FakeGenerators(), {"t2v": False}
        runner = JobRunner(JobStore(tmp_path / "jobs.sqlite3"), fake.dispatch, fake.capacity,
                           lambda job: None, lambda job, result: {},
                           has_model=lambda task: loaded[task])
        runner.start(("t2v",))
        job = runner.submit(Job(id=new_job_id(), task="t2v", model="m", engine="e",
                                synthetic=True, params=PARAMS, total_steps=3))
        await until(lambda: finished(runner, job), timeout=3)
        runner.stop()
        return runner.store.get(job.id), fake.started
    job, started = asyncio.run(main())
    assert job.status == "failed" and job.error_code == "model_unloaded" and started == []


def test_a_job_lost_after_its_model_was_unloaded_is_not_queued_again(tmp_path):
    async def main():
        fake, loaded = FakeGenerators(), {"t2v": True}
        fake.gate.clear()
        runner = JobRunner(JobStore(tmp_path / "jobs.sqlite3"), fake.dispatch, fake.capacity,
                           lambda job: None, lambda job, result: {},
                           has_model=lambda task: loaded[task])
        job = add(runner)
        fake.scripts[job.id] = ConnectionError("replica died")
        runner.start(("t2v",))
        await until(lambda: fake.started == [job.id])
        loaded["t2v"] = False  # unloaded while the job runs; then its replica dies
        fake.gate.set()
        await until(lambda: finished(runner, job), timeout=3)
        runner.stop()
        return runner.store.get(job.id), fake.started
    job, started = asyncio.run(main())
    assert job.status == "failed" and job.error_code == "model_unloaded", job
    assert started == [job.id]


def lora_job(name: str, lora: str | None) -> Job:
    from dataclasses import replace

    from videoserve.core.sampling import LoraRef

    loras = (LoraRef(lora, 1.0, lora * 8),) if lora else ()
    return Job(id=name, task="t2v", model="m", engine="diffusers", synthetic=True,
               params=replace(PARAMS, loras=loras), total_steps=2)


def test_jobs_with_the_running_loras_go_first_within_a_bounded_skip():
    from videoserve.core.runner import MAX_LORA_SKIPS, lora_key, pick_jobs

    queue = [lora_job("a", None), lora_job("b", "x"), lora_job("c", None), lora_job("d", "x"),
             lora_job("e", "x"), lora_job("f", "x")]
    last, skips, order = lora_key(lora_job("z", "x")), {}, []
    while queue:
        (job,) = pick_jobs(queue, 1, last, skips)
        order.append(job.id)
        queue.remove(job)
        last = lora_key(job)
    # "a" (no LoRA) is passed over by the x jobs MAX_LORA_SKIPS times, then runs; then the
    # plain "c" waits at most as long.
    assert MAX_LORA_SKIPS == 2
    assert order == ["b", "d", "a", "c", "e", "f"]
    # Without LoRAs anywhere the order is first come, first served.
    plain = [lora_job(n, None) for n in "pqr"]
    assert [j.id for j in pick_jobs(plain, 3, (), {})] == ["p", "q", "r"]
