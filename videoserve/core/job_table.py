"""The job table's health: checked before anything writes to it, and recovered on request.

A damaged ``jobs.sqlite3`` (cut short, a page overwritten, a foreign header) must not be served:
lists would fail, old jobs vanish and new ones be written into a file that is already broken.
``check`` reads it without writing (read-only, so closing never checkpoints the WAL into it):
``PRAGMA quick_check``, the table's columns, and every row must decode as a job. ``recover``
moves the damaged files aside and copies every row it can still read into a new table.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from videoserve.core.config import ConfigError
from videoserve.core.jobs import SCHEMA, Job

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = {"seq", "id", "status", "fingerprint", "idempotency_key", "data"}
SIDE_FILES = ("-wal", "-shm")  # SQLite's own companions of the table, named after it
# Point lookups past the last row seen, for a table whose ends cannot be read.
MAX_PROBES = 10_000_000


class DamagedJobTable(ConfigError):
    """The job table failed its check; the message names the file and the way out."""

    def __init__(self, message: str, problem: str):
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True)
class Recovery:
    saved: int  # jobs copied into the new table
    unreadable: int  # rows (or places in the table) that could not be read
    aside: Path  # where the damaged table was moved


def check(path: Path) -> None:
    """DamagedJobTable unless ``path`` is missing, empty or a sound job table."""
    problem = _problem(path)
    if problem is not None:
        raise DamagedJobTable(
            f"the job table {path} is damaged ({problem}); the backend stops rather than "
            "write into it. Either move it aside with its -wal and -shm files (e.g. "
            f"mv {path} {path}.damaged): the backend then starts with an empty job history "
            "(the jobs in it are lost; their videos stay on disk), or start with "
            "--recover_jobs to copy the jobs that are still readable into a new table",
            problem)


def check_or_recover(path: Path, recover: bool) -> Recovery | None:
    """Check ``path``; with ``recover``, a damaged table is recovered instead of refused."""
    try:
        check(path)
    except DamagedJobTable as exc:
        if not recover:
            raise
        log.warning("the job table %s is damaged (%s); copying its readable jobs into a new "
                    "table (--recover_jobs)", path, exc.problem)
        result = recover_table(path)
        log.warning("recovered the job table %s: %d jobs saved, %d unreadable rows lost; the "
                    "damaged table is kept as %s", path, result.saved, result.unreadable,
                    result.aside)
        return result
    return None


def _problem(path: Path) -> str | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        with _read_only(path) as db:
            return _quick_check(db) or _schema_problem(db)
    except sqlite3.DatabaseError as exc:
        return f"SQLite: {exc}"


class _read_only:
    """A connection that never writes the file, closed on exit."""

    def __init__(self, path: Path):
        uri = path.resolve().as_uri() + "?mode=ro"
        self.db = sqlite3.connect(uri, uri=True, isolation_level=None)

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.db.close()


def _quick_check(db: sqlite3.Connection) -> str | None:
    rows = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
    return None if rows == ["ok"] else "PRAGMA quick_check: " + "; ".join(rows[:3])


def _schema_problem(db: sqlite3.Connection) -> str | None:
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "jobs" not in tables:
        # A table created but never written holds nothing else.
        return None if tables <= {"sqlite_sequence"} else "it holds no jobs table"
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    missing = sorted(REQUIRED_COLUMNS - columns)
    if missing:
        return f"the jobs table lacks the columns {', '.join(missing)}"
    # quick_check sees the pages' structure, not what a row holds.
    for seq, data in db.execute("SELECT seq, data FROM jobs"):
        if _decode(data) is None:
            return f"the job in row {seq} cannot be read"
    return None


def _decode(data: object) -> Job | None:
    try:
        return Job.from_dict(json.loads(data))  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - any failure means the row is unreadable
        return None


# -- recovery --------------------------------------------------------------------------------

def recover_table(path: Path) -> Recovery:
    """Move the damaged table aside and copy its readable jobs into a new one at ``path``."""
    aside = _move_aside(path)
    rows, unreadable = _readable_rows(aside)
    fresh = path.with_name(path.name + ".recovering")
    fresh.unlink(missing_ok=True)
    saved = _write_table(fresh, rows)
    os.replace(fresh, path)
    check(path)
    return Recovery(saved, unreadable + len(rows) - saved, aside)


def _move_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    count = 1
    while aside.exists():
        count += 1
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{count}")
    # The WAL first: a WAL left beside a new, empty table would be replayed into it.
    for suffix in SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, aside.with_name(aside.name + suffix))
    os.replace(path, aside)
    return aside


def _readable_rows(path: Path) -> tuple[list[tuple[int, str, Job]], int]:
    """Every row that can be read and decoded, by seq; and how many places could not."""
    rows: dict[int, tuple[str, Job]] = {}
    unreadable = 0
    try:
        with _read_only(path) as db:
            for order in ("ASC", "DESC"):  # up to a bad page from either end
                rows.update(_scan(db, order))
            for seq in range(1, min(max(rows, default=0), MAX_PROBES) + 1):
                if seq in rows:
                    continue
                try:
                    found = _lookup(db, seq)
                except _Unreadable:
                    unreadable += 1
                    continue
                if found is not None:
                    rows[seq] = found
    except sqlite3.DatabaseError as exc:
        log.warning("the damaged job table %s cannot be read any further: %s", path, exc)
    return [(seq, data, job) for seq, (data, job) in sorted(rows.items())], unreadable


def _scan(db: sqlite3.Connection, order: str) -> Iterator[tuple[int, tuple[str, Job]]]:
    try:
        for seq, data in db.execute(f"SELECT seq, data FROM jobs ORDER BY seq {order}"):
            job = _decode(data)
            if job is not None:
                yield seq, (data, job)
    except sqlite3.DatabaseError:
        return


class _Unreadable(Exception):
    pass


def _lookup(db: sqlite3.Connection, seq: int) -> tuple[str, Job] | None:
    """The row ``seq``; None where there is none (a deleted job)."""
    try:
        row = db.execute("SELECT data FROM jobs WHERE seq = ?", (seq,)).fetchone()
    except sqlite3.DatabaseError:
        raise _Unreadable from None
    if row is None:
        return None
    job = _decode(row[0])
    if job is None:
        raise _Unreadable
    return row[0], job


def _write_table(path: Path, rows: list[tuple[int, str, Job]]) -> int:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.executescript(SCHEMA)
        db.execute("BEGIN")
        saved = 0
        for seq, data, job in rows:
            # Two rows claiming one id or Idempotency-Key: the first one read stays.
            cursor = db.execute(
                "INSERT OR IGNORE INTO jobs (seq, id, status, fingerprint, idempotency_key, "
                "owner, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (seq, job.id, job.status, job.fingerprint, job.idempotency_key, job.owner,
                 data))
            saved += cursor.rowcount
        db.execute("COMMIT")
    finally:
        db.close()
    return saved
