"""Prometheus metrics of one ingress, served at ``GET /metrics``.

``ServiceMetrics`` is the runner's ``JobObserver``: it counts jobs (submitted, refused, ended by
status) and times them (queue wait, each stage, end to end, denoising speed) as the runner moves
them. Queue depth, running jobs, replicas and readiness are read when Prometheus scrapes. Each
instance has its own registry (not prometheus_client's global one), so several apps in one
process, and tests, never share or clash on metrics.

Stage times are measured at the ingress, between the generator's Progress events as they
arrive: a stage lasts from its first event to the first event of the next stage (or, for the
last one, to the result). A stage a job was in when it was cancelled or failed is not counted:
it was cut short.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from videoserve.core.jobs import Job
from videoserve.core.runner import JobObserver

# 0.1 s (a cached or tiny job) to 30 min (a long 14B job waiting behind others).
SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)
# The I2V-14B takes several seconds a step on an H100; the tiny CPU models take tens a second.
STEPS_PER_SECOND_BUCKETS = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20)
STAGES = ("encoding_prompt", "encoding_image", "denoising", "decoding", "encoding_video")
CONTENT_TYPE = CONTENT_TYPE_LATEST

Counts = Callable[[str], tuple[int, int]]  # task -> (queued, running)
ReplicaStates = Callable[[], Mapping[str, Mapping[str, Any]]]  # task -> {"state", ...}


@dataclass
class _Timing:
    """Where a running job is: its current stage and when it began, and its denoising steps."""

    stage: str | None = None
    since: float = 0.0
    first_step: tuple[float, int] | None = None  # (time, step) of the first denoising event
    last_step: tuple[float, int] | None = None


class ServiceMetrics(JobObserver):
    """Job counters and timings, and scrape-time gauges, in a registry of their own."""

    def __init__(self, models: Callable[[], Mapping[str, str]], counts: Counts,
                 replica_states: ReplicaStates, clock: Callable[[], float] = time.monotonic):
        # The model id serving each task now (models can be switched while the service runs).
        self.models = models
        self.clock = clock
        self.registry = CollectorRegistry()
        labels = ["task", "model"]
        self.submitted = Counter("videoserve_jobs_submitted", "New jobs queued", labels,
                                 registry=self.registry)
        self.refused = Counter("videoserve_jobs_refused", "New jobs refused with 429 because "
                               "the model's queue was full", labels, registry=self.registry)
        self.finished = Counter("videoserve_jobs", "Jobs that reached a final status",
                                [*labels, "status"], registry=self.registry)
        self.queue_wait = Histogram("videoserve_queue_wait_seconds", "From submit to the start "
                                    "of the first attempt", labels, buckets=SECONDS_BUCKETS,
                                    registry=self.registry)
        self.stage_time = Histogram("videoserve_stage_seconds", "Time in each generation "
                                    "stage (stages cut short by a cancel or failure left out)",
                                    [*labels, "stage"], buckets=SECONDS_BUCKETS,
                                    registry=self.registry)
        self.job_time = Histogram("videoserve_job_seconds", "From submit to completed, end to "
                                  "end", labels, buckets=SECONDS_BUCKETS, registry=self.registry)
        self.step_rate = Histogram("videoserve_denoising_steps_per_second", "Denoising speed "
                                   "of each job", labels, buckets=STEPS_PER_SECOND_BUCKETS,
                                   registry=self.registry)
        self.webhook_deliveries = Counter(
            "videoserve_webhook_deliveries", "Webhook delivery attempts by event type and "
            "result (delivered, failed, refused by the URL policy; expired: given up)",
            ["event_type", "result"], registry=self.registry)
        self.registry.register(_ScrapeGauges(self.models, counts, replica_states))
        self._live: dict[str, _Timing] = {}

    def on_webhook(self, event_type: str, result: str) -> None:
        """A webhook delivery attempt ended with ``result`` (see videoserve.core.webhooks)."""
        self.webhook_deliveries.labels(event_type, result).inc()

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)

    # -- JobObserver -------------------------------------------------------------------------

    def on_submitted(self, job: Job) -> None:
        self.submitted.labels(job.task, job.model).inc()

    def on_refused(self, task: str, count: int) -> None:
        self.refused.labels(task, self.models().get(task, "")).inc(count)

    def on_started(self, job: Job) -> None:
        # A retried job's second start is not a queue wait from its submit.
        if job.attempts <= 1 and job.started_at is not None:
            wait = max(job.started_at - job.created_at, 0.0)
            self.queue_wait.labels(job.task, job.model).observe(wait)
        self._live[job.id] = _Timing()  # a retry times its stages afresh

    def on_progress(self, job: Job) -> None:
        timing = self._live.setdefault(job.id, _Timing())
        now = self.clock()
        if job.stage != timing.stage:
            self._end_stage(job, timing, now)
            timing.stage, timing.since = job.stage, now
        if job.stage == "denoising":
            timing.first_step = timing.first_step or (now, job.step)
            timing.last_step = (now, job.step)

    def on_final(self, job: Job) -> None:
        self.finished.labels(job.task, job.model, job.status).inc()
        timing = self._live.pop(job.id, None)
        if job.status != "completed":
            return
        if timing is not None:
            self._end_stage(job, timing, self.clock())
        if job.finished_at is not None:
            total = max(job.finished_at - job.created_at, 0.0)
            self.job_time.labels(job.task, job.model).observe(total)

    def _end_stage(self, job: Job, timing: _Timing, now: float) -> None:
        if timing.stage in STAGES:
            self.stage_time.labels(job.task, job.model, timing.stage).observe(now - timing.since)
        if timing.stage == "denoising" and timing.first_step and timing.last_step:
            (t0, s0), (t1, s1) = timing.first_step, timing.last_step
            # Steps between the first and the last denoising event over the time between them:
            # right whether or not the engine reports step 0.
            if s1 > s0 and t1 > t0:
                self.step_rate.labels(job.task, job.model).observe((s1 - s0) / (t1 - t0))
            timing.first_step = timing.last_step = None


class _ScrapeGauges:
    """Gauges read when Prometheus scrapes: jobs queued and running, replicas, readiness."""

    def __init__(self, models: Callable[[], Mapping[str, str]], counts: Counts,
                 states: ReplicaStates):
        self.models, self.counts, self.states = models, counts, states

    def describe(self) -> list[Metric]:
        return list(self._families())  # empty families: names only, nothing is read

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        states = self.states()
        for task, model in self.models().items():
            queued, running = self.counts(task)
            state = states.get(task, {})
            values = (queued, running, state.get("replicas_running", 0),
                      1 if state.get("state") == "RUNNING" else 0)
            for family, value in zip(families, values, strict=True):
                family.add_metric([task, model], value)
        yield from families

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        labels = ["task", "model"]
        return (
            GaugeMetricFamily("videoserve_queue_depth", "Jobs queued (waiting for a replica)",
                              labels=labels),
            GaugeMetricFamily("videoserve_jobs_running", "Jobs running on a generator",
                              labels=labels),
            GaugeMetricFamily("videoserve_replicas_running", "Generator replicas up",
                              labels=labels),
            GaugeMetricFamily("videoserve_ready", "1 when the model has a running replica",
                              labels=labels),
        )
