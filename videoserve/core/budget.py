"""A budget that concurrent requests share (pixels being decoded, bytes of bodies in flight):
take an amount, wait a bounded time for room, or be refused as busy with a time to retry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from videoserve.core.errors import Unavailable

RETRY = {"Retry-After": "1"}


class Budget:
    """A number of units (bytes, pixels) that requests take and give back; one event loop."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self._freed: asyncio.Event | None = None

    def try_take(self, amount: int) -> bool:
        if self.used + amount > self.capacity:
            return False
        self.used += amount
        self.peak = max(self.peak, self.used)
        return True

    def give(self, amount: int) -> None:
        self.used = max(0, self.used - amount)
        if self._freed is not None:
            self._freed.set()

    @asynccontextmanager
    async def hold(self, amount: int, wait_s: float) -> AsyncIterator[None]:
        """Take ``amount`` for the block, waiting up to ``wait_s`` for others to give some back;
        503 with Retry-After when it does not come."""
        amount = min(amount, self.capacity)  # one caller alone always fits
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while not self.try_take(amount):
            left = deadline - loop.time()
            if left <= 0:
                raise busy("too many images are being decoded at once")
            self._freed = self._freed or asyncio.Event()
            self._freed.clear()
            try:
                await asyncio.wait_for(self._freed.wait(), left)
            except TimeoutError:
                pass
        try:
            yield
        finally:
            self.give(amount)


def busy(what: str) -> Unavailable:
    return Unavailable(f"the server is busy: {what}; retry shortly", type="server_error",
                       code="busy", retry_after_s=1)
