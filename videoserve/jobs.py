"""Video jobs: every generation is a job with an id, a state, progress and a result.

Jobs are stored durably in SQLite under the output folder, so history and results survive a
restart of the backend. Jobs still running are kept in memory too (their progress changes every
step); every state change is written through.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
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
    fingerprint: str | None = None
    idempotency_key: str | None = None
    # Kept for records written before every engine reported real steps; always False now.
    estimated_progress: bool = False
    # What a running job is doing: encoding_prompt, encoding_image, denoising, decoding,
    # encoding_video (as reported by the engine).
    stage: str | None = None
    # For cancelled jobs: the step seen when the cancel arrived and the step the engine stopped at.
    cancellation: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    fingerprint TEXT,
    idempotency_key TEXT UNIQUE,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_fingerprint ON jobs (fingerprint, status);
"""


class JobStore:
    """Durable job table with a way to wait for a job to finish."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._active: dict[str, Job] = {}
        self._finished: dict[str, asyncio.Event] = {}
        self._fail_interrupted()

    def _fail_interrupted(self) -> None:
        """Jobs left running by a previous process cannot finish: mark them failed."""
        rows = self._db.execute(
            "SELECT data FROM jobs WHERE status IN ('queued', 'in_progress')").fetchall()
        for (data,) in rows:
            job = Job(**json.loads(data))
            job.status, job.finished_at = "failed", time.time()
            job.error = "the backend restarted before this job finished; submit it again"
            self._write(job)

    def _write(self, job: Job) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, status, fingerprint, idempotency_key, data) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET status=excluded.status, "
                "data=excluded.data",
                (job.id, job.status, job.fingerprint, job.idempotency_key,
                 json.dumps(job.to_dict())),
            )

    def add(self, job: Job) -> Job:
        self._write(job)
        self._active[job.id] = job
        self._finished[job.id] = asyncio.Event()
        return job

    def _one(self, sql: str, *args: Any) -> Job | None:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return Job(**json.loads(row[0])) if row else None

    def get(self, job_id: str) -> Job | None:
        return self._active.get(job_id) or self._one("SELECT data FROM jobs WHERE id = ?", job_id)

    def by_idempotency_key(self, key: str) -> Job | None:
        job = self._one("SELECT data FROM jobs WHERE idempotency_key = ?", key)
        return self.get(job.id) if job else None

    def completed_with_fingerprint(self, fingerprint: str) -> Job | None:
        return self._one("SELECT data FROM jobs WHERE fingerprint = ? AND status = 'completed' "
                         "ORDER BY seq DESC LIMIT 1", fingerprint)

    def active(self) -> list[Job]:
        return sorted(self._active.values(), key=lambda j: j.created_at)

    def update(self, job: Job, **changes: Any) -> None:
        """Change a job; state changes are written to disk, progress stays in memory."""
        status_before = job.status
        for key, value in changes.items():
            setattr(job, key, value)
        if job.status != status_before or "result" in changes:
            self._write(job)
        if job.done:
            self._active.pop(job.id, None)
            event = self._finished.pop(job.id, None)
            if event:
                event.set()

    async def wait(self, job_id: str, timeout: float | None) -> Job:
        event = self._finished.get(job_id)
        if event is not None:
            await asyncio.wait_for(event.wait(), timeout)
        job = self.get(job_id)
        assert job is not None
        return job

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def page(self, limit: int, after: str | None, order: str) -> tuple[list[Job], bool]:
        """Up to ``limit`` jobs after the job ``after`` (newest first for order=desc)."""
        op, direction = ("<", "DESC") if order == "desc" else (">", "ASC")
        where, args = "", []
        if after:
            where = f"WHERE seq {op} (SELECT seq FROM jobs WHERE id = ?)"
            args.append(after)
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, data FROM jobs {where} ORDER BY seq {direction} LIMIT ?",
                (*args, limit + 1)).fetchall()
        jobs = [self._active.get(i) or Job(**json.loads(d)) for i, d in rows[:limit]]
        return jobs, len(rows) > limit

    def close(self) -> None:
        self._db.close()
