"""Cancel signalling between the ingress and generator replicas: a board actor per ingress
application that a running job waits on and the ingress signals."""

from __future__ import annotations

import asyncio
from typing import Any

import ray

# The Ray namespace of the boards, so a generator replica finds its ingress's board by name.
NAMESPACE = "videoserve"


@ray.remote(num_cpus=0)
class CancelBoard:
    """Cancel requests for running jobs: generator replicas wait on it, the ingress signals it."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._cancelled: set[str] = set()

    async def cancel(self, job_id: str) -> None:
        self._cancelled.add(job_id)
        self._events.setdefault(job_id, asyncio.Event()).set()

    async def wait(self, job_id: str) -> bool:
        """Returns True as soon as ``job_id`` is cancelled, False once it is released."""
        await self._events.setdefault(job_id, asyncio.Event()).wait()
        return job_id in self._cancelled

    async def release(self, job_id: str) -> None:
        self._cancelled.discard(job_id)
        event = self._events.pop(job_id, None)
        if event is not None:
            event.set()


def board_name(app_name: str) -> str:
    return f"cancel-board-{app_name}"


class BoardSignal:
    """A generator replica's view of the board of the ingress that sent a job.

    The board is looked up when the job starts and kept for that job: it is owned by (and dies
    with) the ingress replica that created it, so a wait that fails means the job's ingress is
    gone and nobody will receive its result.
    """

    def __init__(self, app_name: str):
        self.app_name = app_name
        self._boards: dict[str, Any] = {}

    async def wait(self, job_id: str) -> bool:
        board = await asyncio.to_thread(ray.get_actor, board_name(self.app_name),
                                        namespace=NAMESPACE)
        self._boards[job_id] = board
        return await board.wait.remote(job_id)

    async def release(self, job_id: str) -> None:
        board = self._boards.pop(job_id, None)
        if board is not None:
            await board.release.remote(job_id)
