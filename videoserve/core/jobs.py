"""Video jobs: immutable records, the transitions between their states, and their table.

A job is ``queued`` until the runner dispatches it (``in_progress``), then ends ``completed``,
``failed`` or ``cancelled``; a job whose generator died goes back to ``queued`` for one more
attempt. ``Job.to`` is the only way to change state and refuses any other move.

The table is SQLite under the output folder, written at every state change, so queued jobs,
history and results survive a restart. Non-final jobs are mirrored in memory (their progress
changes every step and is not written).

Watching a job (GET /v1/videos/{id}/events): every change of a job raises its ``version`` and
wakes whoever waits in ``changed``. The last HISTORY states of each recently changed job are
kept (``states_since``), so a watcher that wakes after several changes still sees each step; one
further behind skips to the newest state rather than queueing a backlog.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from videoserve.core.sampling import SamplingParams

JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
FINAL_STATES = ("completed", "failed", "cancelled")
MOVES: dict[str, tuple[str, ...]] = {
    "queued": ("in_progress", "cancelled", "failed"),
    "in_progress": ("completed", "failed", "cancelled", "queued"),
}


class InvalidTransition(RuntimeError):
    """A state change the job state machine does not allow (a bug, never user input)."""


def new_job_id() -> str:
    return "video_" + secrets.token_hex(12)


def is_job_id(value: str) -> bool:
    return (
        value.startswith("video_")
        and len(value) == 30
        and all(c in "0123456789abcdef" for c in value[6:])
    )


@dataclass(frozen=True)
class Job:
    """One generation request and everything known about it so far."""

    id: str
    task: Literal["t2v", "i2v"]
    model: str
    engine: str
    synthetic: bool
    params: SamplingParams
    status: JobStatus = "queued"
    step: int = 0
    total_steps: int = 0
    # What a running job is doing: encoding_prompt, encoding_image, denoising, decoding,
    # encoding_video (as the engine reports it).
    stage: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    # Why a failed job failed, for clients to act on (e.g. model_unloaded); None: the generation.
    error_code: str | None = None
    fingerprint: str | None = None
    idempotency_key: str | None = None
    # Times a generator was given this job (a job whose generator died is retried once).
    attempts: int = 0
    # For cancelled jobs: the step seen when the cancel arrived and the step the engine stopped at.
    cancellation: dict[str, Any] | None = None
    # Kept for records written when fastvideo progress was estimated; always False now.
    estimated_progress: bool = False
    seq: int = 0  # queue order (the table's row number)
    # A hash of the API key that created the job (None when the API is open): only that key
    # sees it.
    owner: str | None = None
    # A hash of the request, so a reused Idempotency-Key with another body is refused.
    request_digest: str | None = None
    # The denoising step of the newest live preview (GET /v1/videos/{id}/preview); None: none.
    preview_step: int | None = None
    # Whether the job makes live previews (the request's "preview", off with --no_preview).
    preview: bool = True

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATES

    def to(self, status: JobStatus, **changes: Any) -> Job:
        """This job in a new state (progress changes keep the state)."""
        if status != self.status and status not in MOVES.get(self.status, ()):
            raise InvalidTransition(f"job {self.id}: {self.status} -> {status}")
        now = time.time()
        if status in FINAL_STATES and status != self.status:
            changes.setdefault("finished_at", now)
        if status == "in_progress" and self.status == "queued":
            changes.setdefault("started_at", now)
            changes.setdefault("attempts", self.attempts + 1)
            changes.setdefault("stage", "starting")
        if status == "queued" and self.status == "in_progress":
            changes.update(step=0, stage=None, started_at=None)
        return replace(self, status=status, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        data = dict(data)
        data["params"] = SamplingParams.from_dict(data["params"])
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    fingerprint TEXT,
    idempotency_key TEXT UNIQUE,
    data TEXT NOT NULL,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS jobs_fingerprint ON jobs (fingerprint, status);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
-- Idempotency-Keys answered with jobs made for other requests (the identical-request cache, a
-- batch): the ids they were answered with and a hash of the request.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    job_ids TEXT NOT NULL,
    request_digest TEXT
);
"""
# Columns added since the first schema; tables written before get them on open.
ADDED_COLUMNS = {"owner": "TEXT"}


HISTORY = 64  # states kept per job for its watchers (a step each)
HISTORY_JOBS = 256  # jobs whose states are kept (those changed last)


class JobStore:
    """The durable job table, an in-memory mirror of unfinished jobs, and waiting for one."""

    def __init__(self, path: Path, recover: bool = False):
        # Imported here: job_table builds on this module's schema and Job.
        from videoserve.core.job_table import check_or_recover

        path.parent.mkdir(parents=True, exist_ok=True)
        # Before the first write: a damaged table is refused (DamagedJobTable) or, with
        # ``recover``, replaced by a new one holding its readable jobs.
        check_or_recover(path, recover)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # With WAL, NORMAL syncs at checkpoints rather than at every commit: a crash of the
        # process loses nothing; only a power cut can lose the last commits. One fsync per job
        # state change made a burst of submits wait on the disk.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, kind in ADDED_COLUMNS.items():
            if name not in columns:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq)")
        self._lock = threading.Lock()
        self._active: dict[str, Job] = {}
        self._finished: dict[str, asyncio.Event] = {}
        self._versions: dict[str, int] = {}  # job id -> version (see ``version``)
        # job id -> its last states (version, job), for the HISTORY_JOBS jobs changed last.
        self._history: OrderedDict[str, deque[tuple[int, Job]]] = OrderedDict()
        self._watchers: dict[str, set[asyncio.Event]] = {}  # job id -> waiters in ``changed``
        rows = self._db.execute("SELECT seq, data FROM jobs WHERE status IN "
                                "('queued', 'in_progress') ORDER BY seq").fetchall()
        for seq, data in rows:
            job = replace(Job.from_dict(json.loads(data)), seq=seq)
            self._active[job.id] = job

    def _write(self, job: Job) -> int:
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO jobs (id, status, fingerprint, idempotency_key, owner, data) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "status=excluded.status, data=excluded.data",
                (job.id, job.status, job.fingerprint, job.idempotency_key, job.owner,
                 json.dumps(job.to_dict())),
            )
            return cursor.lastrowid or 0

    def add(self, job: Job) -> Job:
        job = replace(job, seq=self._write(job))
        self._active[job.id] = job
        self._changed(job.id, job)
        return job

    def put(self, job: Job) -> Job:
        """Record a job's new version; state changes and results are written to disk."""
        before = self._active.get(job.id)
        if before is None or before.status != job.status or before.result != job.result:
            self._write(job)
        if job.done:
            self._active.pop(job.id, None)
            event = self._finished.pop(job.id, None)
            if event:
                event.set()
        else:
            self._active[job.id] = job
        self._changed(job.id, job)
        return job

    # -- watching a job ----------------------------------------------------------------------

    def _changed(self, job_id: str, job: Job | None = None) -> None:
        now_ms = time.time_ns() // 1_000_000
        version = self._versions[job_id] = max(self._versions.get(job_id, 0) + 1, now_ms)
        if job is not None:
            states = self._history.pop(job_id, None) or deque(maxlen=HISTORY)
            states.append((version, job))
            self._history[job_id] = states  # now the most recently changed
            while len(self._history) > HISTORY_JOBS:
                self._history.popitem(last=False)
        for event in self._watchers.get(job_id, ()):
            event.set()

    def states_since(self, job_id: str, after: int) -> list[tuple[int, Job]]:
        """The job's kept states (version, job) newer than ``after``, oldest first."""
        return [(v, job) for v, job in self._history.get(job_id, ()) if v > after]

    def version(self, job_id: str) -> int:
        """A number that grows at every change of the job: milliseconds since the epoch, kept
        strictly increasing, so that it also grows across restarts (a job not changed in this
        process gets the time of the first ask). Only for jobs that exist."""
        return self._versions.setdefault(job_id, time.time_ns() // 1_000_000)

    async def changed(self, job_id: str, after: int, timeout: float | None) -> int:
        """Wait until the job's version is past ``after`` or ``timeout`` seconds passed; the
        version then (still ``after`` or less: nothing changed). Changes are not queued: the
        caller reads the job's newest state."""
        event = asyncio.Event()
        watchers = self._watchers.setdefault(job_id, set())
        watchers.add(event)
        try:
            if self.version(job_id) <= after:
                try:
                    await asyncio.wait_for(event.wait(), timeout)
                except TimeoutError:
                    pass
            return self.version(job_id)
        finally:
            watchers.discard(event)
            if not watchers and self._watchers.get(job_id) is watchers:
                del self._watchers[job_id]

    def _one(self, sql: str, *args: Any) -> Job | None:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return replace(Job.from_dict(json.loads(row[1])), seq=row[0]) if row else None

    def get(self, job_id: str) -> Job | None:
        return self._active.get(job_id) or self._one(
            "SELECT seq, data FROM jobs WHERE id = ?", job_id)

    def by_idempotency_key(self, key: str) -> Job | None:
        job = self._one("SELECT seq, data FROM jobs WHERE idempotency_key = ?", key)
        return self.get(job.id) if job else None

    def remember_key(self, key: str, job_ids: list[str], request_digest: str | None) -> None:
        """Record that a request with Idempotency-Key ``key`` was answered with ``job_ids``."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO idempotency_keys (key, job_ids, "
                             "request_digest) VALUES (?, ?, ?)",
                             (key, json.dumps(job_ids), request_digest))

    def remembered_key(self, key: str) -> tuple[list[str], str | None] | None:
        """(job ids, request digest) recorded by ``remember_key``."""
        with self._lock:
            row = self._db.execute("SELECT job_ids, request_digest FROM idempotency_keys "
                                   "WHERE key = ?", (key,)).fetchone()
        return (json.loads(row[0]), row[1]) if row else None

    def completed_with_fingerprint(self, fingerprint: str) -> Job | None:
        return self._one("SELECT seq, data FROM jobs WHERE fingerprint = ? AND "
                         "status = 'completed' ORDER BY seq DESC LIMIT 1", fingerprint)

    def active(self) -> list[Job]:
        """Unfinished jobs in queue order."""
        return sorted(self._active.values(), key=lambda j: j.seq)

    async def wait(self, job_id: str, timeout: float | None) -> Job:
        """The job once it is finished (TimeoutError after ``timeout``)."""
        job = self.get(job_id)
        if job is not None and not job.done:
            event = self._finished.setdefault(job_id, asyncio.Event())
            await asyncio.wait_for(event.wait(), timeout)
            job = self.get(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        self._changed(job_id)
        self._versions.pop(job_id, None)
        self._history.pop(job_id, None)

    def page(self, limit: int, after: str | None, order: str,
             owner: str | None = None) -> tuple[list[Job], bool]:
        """Up to ``limit`` jobs after the job ``after`` (newest first for order=desc); only
        ``owner``'s when given."""
        op, direction = ("<", "DESC") if order == "desc" else (">", "ASC")
        conditions, args = [], []
        if after:
            conditions.append(f"seq {op} (SELECT seq FROM jobs WHERE id = ?)")
            args.append(after)
        if owner is not None:
            conditions.append("owner = ?")
            args.append(owner)
        where = "WHERE " + " AND ".join(conditions) if conditions else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT seq, id, data FROM jobs {where} ORDER BY seq {direction} LIMIT ?",
                (*args, limit + 1)).fetchall()
        jobs = [self._active.get(i) or replace(Job.from_dict(json.loads(d)), seq=s)
                for s, i, d in rows[:limit]]
        return jobs, len(rows) > limit

    def close(self) -> None:
        self._db.close()
