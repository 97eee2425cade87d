"""Video jobs: every generation is a job with an id, a state, progress and a result."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
FINAL_STATES = ("completed", "failed", "cancelled")


def new_job_id() -> str:
    return "video_" + secrets.token_hex(12)


def is_job_id(value: str) -> bool:
    return (
        value.startswith("video_")
        and len(value) == 30
        and all(c in "0123456789abcdef" for c in value[6:])
    )


@dataclass
class Job:
    """One generation request and everything known about it so far."""

    id: str
    task: Literal["t2v", "i2v"]
    model: str
    engine: str
    synthetic: bool
    params: dict[str, Any]
    status: JobStatus = "queued"
    step: int = 0
    total_steps: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JobStore:
    """Jobs of this ingress, with a way to wait for one to finish."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._finished: dict[str, asyncio.Event] = {}

    def add(self, job: Job) -> Job:
        self._jobs[job.id] = job
        self._finished[job.id] = asyncio.Event()
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def count(self, task: str, statuses: tuple[JobStatus, ...]) -> int:
        return sum(1 for j in self._jobs.values() if j.task == task and j.status in statuses)

    def update(self, job: Job, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(job, key, value)
        if job.done:
            self._finished[job.id].set()

    async def wait(self, job_id: str, timeout: float | None) -> Job:
        await asyncio.wait_for(self._finished[job_id].wait(), timeout)
        return self._jobs[job_id]
