"""The metrics recorder driven by the job runner with a fake dispatch (no Ray), its
scrape-time gauges, and the access-log filter for probes."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_runner import PARAMS, FakeGenerators, add, finished, until
from videoserve.core.errors import ServiceError
from videoserve.core.jobs import Job, JobStore, new_job_id
from videoserve.core.metrics import ServiceMetrics
from videoserve.core.runner import JobRunner
from videoserve.core.sampling import Cancelled, Failed, Progress, Result, Started
from videoserve.http.access_log import ProbeAccessFilter, quiet_probe_access_logs
from videoserve.serve.presets import build_specs

SPECS = build_specs("tiny", gpu_count=0)
T2V = SPECS["t2v"].model  # the label the metrics carry


def scrape(metrics: ServiceMetrics) -> dict[tuple[str, frozenset], float]:
    """Every sample of the exposition, keyed by (sample name, labels)."""
    text = metrics.exposition().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def new_metrics(counts=lambda task: (0, 0), states=lambda: {}, clock=None) -> ServiceMetrics:
    kwargs = {"clock": clock} if clock else {}
    return ServiceMetrics(lambda: {t: s.model for t, s in SPECS.items()}, counts, states,
                          **kwargs)


def test_counts_follow_the_runner(tmp_path):
    async def main():
        fake = FakeGenerators(capacity=2)
        store = JobStore(tmp_path / "jobs.sqlite3")
        metrics = new_metrics()
        runner = JobRunner(store, fake.dispatch, fake.capacity, lambda job: None,
                           lambda job, result: {}, observer=metrics)
        template = Job(id="", task="t2v", model=T2V, engine="e", synthetic=True, params=PARAMS,
                       total_steps=3)
        jobs = [runner.submit(replace(template, id=new_job_id())) for _ in range(5)]
        ok, retried, failed, cancelled, lost = jobs
        fake.scripts[retried.id] = (ConnectionError("replica died"), [])
        fake.scripts[failed.id] = [Started(), Failed("ValueError: bad")]
        fake.scripts[cancelled.id] = [Started(), Progress("denoising", 1, 3),
                                      Cancelled(1, "denoising", 1)]
        fake.scripts[lost.id] = ConnectionError("gone")  # both attempts
        runner.start(("t2v",))
        await until(lambda: finished(runner, *jobs))
        waiting = runner.submit(replace(template, id=new_job_id()))
        fake.gate.clear()
        await runner.cancel(waiting.id)
        with pytest.raises(ServiceError):
            runner.admit("t2v", queue_limit=0, count=2)
        runner.stop()
        return scrape(metrics)

    samples = asyncio.run(main())
    jobs = "videoserve_jobs_total"
    assert value(samples, jobs, task="t2v", model=T2V, status="completed") == 2
    assert value(samples, jobs, task="t2v", model=T2V, status="failed") == 2
    assert value(samples, jobs, task="t2v", model=T2V, status="cancelled") == 2
    assert value(samples, "videoserve_jobs_submitted_total", task="t2v", model=T2V) == 6
    assert value(samples, "videoserve_jobs_refused_total", task="t2v", model=T2V) == 2
    # Both completed jobs have an end-to-end time; the retried one has no second queue wait.
    assert value(samples, "videoserve_job_seconds_count", task="t2v", model=T2V) == 2
    assert value(samples, "videoserve_queue_wait_seconds_count", task="t2v", model=T2V) == 3


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stage_times_and_denoising_speed_from_progress_events():
    clock = Clock()
    metrics = new_metrics(clock=clock)
    job = Job(id=new_job_id(), task="t2v", model=T2V, engine="e", synthetic=True,
              params=PARAMS, total_steps=4, created_at=1000.0)
    job = job.to("in_progress", started_at=1003.0, stage="starting")
    metrics.on_started(job)
    # (seconds after the previous event, stage, step): denoising is reported after each step.
    for delay, stage, step in ((0.5, "encoding_prompt", 0), (2.0, "denoising", 1),
                               (0.5, "denoising", 2), (0.5, "denoising", 3),
                               (0.5, "denoising", 4), (0.0, "decoding", 4),
                               (3.0, "encoding_video", 4)):
        clock.now += delay
        job = job.to("in_progress", stage=stage, step=step)
        metrics.on_progress(job)
    clock.now += 0.25
    metrics.on_final(job.to("completed", result={}, finished_at=1012.0))
    samples = scrape(metrics)
    labels = {"task": "t2v", "model": T2V}

    def stage_sum(stage: str) -> float:
        return value(samples, "videoserve_stage_seconds_sum", **labels, stage=stage)

    assert stage_sum("encoding_prompt") == pytest.approx(2.0)
    assert stage_sum("denoising") == pytest.approx(1.5)
    assert stage_sum("decoding") == pytest.approx(3.0)
    assert stage_sum("encoding_video") == pytest.approx(0.25)
    assert value(samples, "videoserve_stage_seconds_count", **labels, stage="encoding_image") \
        is None  # a stage the job never went through has no series
    # 3 steps between the first and the last denoising event, 1.5 s apart.
    assert value(samples, "videoserve_denoising_steps_per_second_sum", **labels) == \
        pytest.approx(2.0)
    assert value(samples, "videoserve_queue_wait_seconds_sum", **labels) == pytest.approx(3.0)
    assert value(samples, "videoserve_job_seconds_sum", **labels) == pytest.approx(12.0)
    # Buckets: cumulative, with le labels up to 30 minutes and +Inf.
    assert value(samples, "videoserve_job_seconds_bucket", **labels, le="10.0") == 0
    assert value(samples, "videoserve_job_seconds_bucket", **labels, le="20.0") == 1
    assert value(samples, "videoserve_job_seconds_bucket", **labels, le="1800.0") == 1
    assert value(samples, "videoserve_job_seconds_bucket", **labels, le="+Inf") == 1


def test_a_cancelled_job_records_no_partial_stage():
    clock = Clock()
    metrics = new_metrics(clock=clock)
    job = Job(id=new_job_id(), task="t2v", model=T2V, engine="e", synthetic=True,
              params=PARAMS, total_steps=4).to("in_progress")
    metrics.on_started(job)
    for step in (1, 2):
        clock.now += 1
        job = job.to("in_progress", stage="denoising", step=step)
        metrics.on_progress(job)
    metrics.on_final(job.to("cancelled"))
    samples = scrape(metrics)
    labels = {"task": "t2v", "model": T2V}
    assert value(samples, "videoserve_jobs_total", **labels, status="cancelled") == 1
    assert value(samples, "videoserve_stage_seconds_count", **labels, stage="denoising") is None
    assert value(samples, "videoserve_job_seconds_count", **labels) is None
    assert metrics._live == {}  # nothing kept for a finished job


def test_gauges_are_read_at_scrape_time():
    counts = {"t2v": (3, 1), "i2v": (0, 0)}
    states = {"t2v": {"state": "RUNNING", "replicas_running": 2},
              "i2v": {"state": "LOADING", "replicas_running": 0}}
    metrics = new_metrics(lambda task: counts[task], lambda: states)
    samples = scrape(metrics)
    t2v, i2v = {"task": "t2v", "model": T2V}, {"task": "i2v", "model": SPECS["i2v"].model}
    assert value(samples, "videoserve_queue_depth", **t2v) == 3
    assert value(samples, "videoserve_jobs_running", **t2v) == 1
    assert value(samples, "videoserve_replicas_running", **t2v) == 2
    assert value(samples, "videoserve_ready", **t2v) == 1
    assert value(samples, "videoserve_ready", **i2v) == 0
    counts["t2v"] = (0, 0)
    states["t2v"] = {"state": "UNHEALTHY", "replicas_running": 0}
    samples = scrape(metrics)
    assert value(samples, "videoserve_queue_depth", **t2v) == 0
    assert value(samples, "videoserve_ready", **t2v) == 0


def test_two_recorders_do_not_share_metrics():
    first, second = new_metrics(), new_metrics()
    job = Job(id=new_job_id(), task="t2v", model=T2V, engine="e", synthetic=True, params=PARAMS)
    first.on_submitted(job)
    labels = {"task": "t2v", "model": T2V}
    assert value(scrape(first), "videoserve_jobs_submitted_total", **labels) == 1
    assert value(scrape(second), "videoserve_jobs_submitted_total", **labels) is None


def test_runner_reports_final_once_for_a_result_after_a_cancel(tmp_path):
    """A queued job's cancel and a result event that arrives late for it count once."""
    async def main():
        fake = FakeGenerators()
        metrics = new_metrics()
        runner = JobRunner(JobStore(tmp_path / "jobs.sqlite3"), fake.dispatch, fake.capacity,
                           lambda job: None, lambda job, result: {}, observer=metrics)
        job = add(runner)
        await runner.cancel(job.id)
        await runner._on_event(job.id, Result(b"", 5, 16, 16, 0.1, 0.1))
        return scrape(metrics)
    samples = asyncio.run(main())
    assert value(samples, "videoserve_jobs_total", task="t2v", model="m",
                 status="cancelled") == 1
    assert value(samples, "videoserve_jobs_total", task="t2v", model="m",
                 status="completed") is None


def access_record(route: str, level: int = logging.INFO) -> logging.LogRecord:
    record = logging.LogRecord("ray.serve.test", level, __file__, 1, f"GET {route} 200 1.0ms",
                               None, None)
    record.serve_access_log, record.route = True, route
    return record


def test_probe_access_lines_are_demoted_to_debug():
    probe = ProbeAccessFilter()
    logger = logging.getLogger("ray.serve.test")
    logger.setLevel(logging.INFO)
    for route in ("/ready", "/health", "/metrics", "/myapp/ready"):
        record = access_record(route)
        assert probe.filter(record) is False and record.levelname == "DEBUG", route
    for route in ("/v1/models", "/v1/videos/{job_id}/content", "/generate_video"):
        record = access_record(route)
        assert probe.filter(record) is True and record.levelname == "INFO", route
    other = logging.LogRecord("ray.serve.test", logging.INFO, __file__, 1, "/ready is 503",
                              None, None)
    assert probe.filter(other) is True  # not an access line
    logger.setLevel(logging.DEBUG)  # with DEBUG on, they are kept, as DEBUG lines
    record = access_record("/ready")
    assert probe.filter(record) is True and record.levelno == logging.DEBUG


def test_installing_the_filter_twice_adds_it_once():
    name = "videoserve.test.serve"
    quiet_probe_access_logs(name)
    quiet_probe_access_logs(name)
    logger = logging.getLogger(name)
    assert sum(isinstance(f, ProbeAccessFilter) for f in logger.filters) == 1
    logger.filters.clear()
