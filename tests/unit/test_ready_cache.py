"""/ready's replica states: read from Serve at most every READY_MAX_AGE_S, however many ask."""

from __future__ import annotations

import asyncio

from videoserve.serve.deployments import READY_MAX_AGE_S, FreshWithin


def test_a_flood_of_callers_shares_one_read_until_it_is_stale():
    now = [100.0]
    reads: list[float] = []

    async def read() -> None:
        reads.append(now[0])
        await asyncio.sleep(0)  # others arrive while Serve is being asked

    async def main():
        fresh = FreshWithin(read, READY_MAX_AGE_S, clock=lambda: now[0])
        await asyncio.gather(*(fresh() for _ in range(200)))
        now[0] += READY_MAX_AGE_S / 2
        await asyncio.gather(*(fresh() for _ in range(200)))
        assert reads == [100.0]
        now[0] += READY_MAX_AGE_S / 2
        await fresh()
        assert reads == [100.0, 100.0 + READY_MAX_AGE_S]

    asyncio.run(main())
    assert READY_MAX_AGE_S <= 0.5
