"""A small shared-memory channel between a process and the worker processes it drives.

fastvideo's multi-process executor talks to its workers only through its own RPC pipes, which
are busy for the whole of a generation. Progress (stage starts, denoising steps) has to leave
rank 0 while the generation runs, and a cancel has to reach every rank between two steps; both
go through this block, which any process can attach to by name.

Layout: signed 64-bit slots. ``job`` (the generation in progress, written by the driver before
it starts one), ``cancel`` (the job to stop), ``written`` (events written so far), then a ring
of ``CAPACITY`` events of three slots each (kind, a, b). One writer (rank 0) appends events and
then bumps ``written``; one reader (the driver) reads up to ``written``. An aligned 8-byte store
is not torn, and x86-64 keeps stores in program order, so a reader that sees the new count sees
the event too.
"""

from __future__ import annotations

import logging
from multiprocessing import shared_memory

log = logging.getLogger(__name__)

CAPACITY = 1024
_JOB, _CANCEL, _WRITTEN, _HEADER = 0, 1, 2, 3
_EVENT = 3
_SIZE = 8 * (_HEADER + _EVENT * CAPACITY)


class ProgressChannel:
    """Job and cancel slots plus a ring of (kind, a, b) events, in shared memory."""

    def __init__(self, shm: shared_memory.SharedMemory, owner: bool):
        self._shm, self._owner = shm, owner
        self._slots = shm.buf.cast("q")
        self._read = 0

    @classmethod
    def create(cls) -> ProgressChannel:
        shm = shared_memory.SharedMemory(create=True, size=_SIZE)
        shm.buf[:_SIZE] = bytes(_SIZE)
        return cls(shm, owner=True)

    @classmethod
    def attach(cls, name: str) -> ProgressChannel:
        return cls(shared_memory.SharedMemory(name=name), owner=False)

    @property
    def name(self) -> str:
        return self._shm.name

    @property
    def job(self) -> int:
        return int(self._slots[_JOB])

    def begin_job(self) -> int:
        """Start a new job: events left from the last one are dropped; returns its number."""
        self._read = int(self._slots[_WRITTEN])
        self._slots[_JOB] = self._slots[_JOB] + 1
        return self.job

    def request_cancel(self, job: int) -> None:
        self._slots[_CANCEL] = job

    def cancel_requested(self, job: int) -> bool:
        return int(self._slots[_CANCEL]) == job

    def push(self, kind: int, a: int = 0, b: int = 0) -> None:
        """Append one event (single writer)."""
        written = int(self._slots[_WRITTEN])
        base = _HEADER + _EVENT * (written % CAPACITY)
        self._slots[base], self._slots[base + 1], self._slots[base + 2] = kind, a, b
        self._slots[_WRITTEN] = written + 1

    def drain(self) -> list[tuple[int, int, int]]:
        """Events written since the last drain, oldest first (single reader)."""
        written = int(self._slots[_WRITTEN])
        if written - self._read > CAPACITY:
            # Only if the reader stalled for CAPACITY events; the newest ones still tell where
            # the job is.
            log.warning("progress channel overran: %d events lost", written - self._read - CAPACITY)
            self._read = written - CAPACITY
        events = []
        for index in range(self._read, written):
            base = _HEADER + _EVENT * (index % CAPACITY)
            events.append((int(self._slots[base]), int(self._slots[base + 1]),
                           int(self._slots[base + 2])))
        self._read = written
        return events

    def close(self) -> None:
        """Detach; the creator also removes the block."""
        self._slots.release()
        self._shm.close()
        if self._owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
