"""The request-body middleware in-process: declared lengths reserved and given back by slow
bodies, per-client share, idle and total time limits."""

import asyncio
import json

from starlette.requests import Request
from starlette.responses import JSONResponse

from videoserve.http.body_limits import BodyBudget, BodyRules, BodySizeLimit

MIB = 1024 * 1024


async def echo_length(scope, receive, send) -> None:
    body = await Request(scope, receive).body()
    await JSONResponse({"received": len(body)})(scope, receive, send)


def scope_for(client: str, length: int | None) -> dict:
    headers = [(b"content-type", b"application/json")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http", "method": "POST", "path": "/v1/videos", "headers": headers,
            "client": (client, 50000), "server": ("127.0.0.1", 8000)}


def chunks(parts: list[bytes], pause_s: float = 0.0, then_stall: bool = False):
    """A client's receive: ``parts`` with ``pause_s`` between them, then a stall if asked."""
    queue = list(parts)

    async def receive() -> dict:
        if not queue:
            await asyncio.sleep(3600 if then_stall else 0)
            return {"type": "http.disconnect"}
        await asyncio.sleep(pause_s)
        part = queue.pop(0)
        return {"type": "http.request", "body": part, "more_body": bool(queue) or then_stall}

    return receive


def trickle(pause_s: float):
    """A slow client: one byte every ``pause_s``, never done."""
    async def receive() -> dict:
        await asyncio.sleep(pause_s)
        return {"type": "http.request", "body": b"x", "more_body": True}

    return receive


async def call(app, scope: dict, receive) -> tuple[int, dict]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body)


def limited(rules: BodyRules, budget: BodyBudget) -> BodySizeLimit:
    return BodySizeLimit(echo_length, rules, budget)


def test_two_slow_uploads_do_not_stop_another_client():
    budget = BodyBudget(64 * MIB, 32 * MIB)
    app = limited(BodyRules(32 * MIB, idle_timeout_s=30, timeout_s=1.0, min_timeout_s=0.2,
                            reserve_grace_s=0.1), budget)

    async def scenario():
        slow = [asyncio.create_task(call(app, scope_for(f"10.0.0.{i}", 32 * MIB),
                                         trickle(0.02))) for i in (1, 2)]
        await asyncio.sleep(0.2)  # both are sending, their declared lengths reserved
        assert budget.total.used == 64 * MIB
        other = await call(app, scope_for("10.0.0.3", 11), chunks([b'{"seed": 1}']))
        # To make room, the slow ones gave back all but the bytes they sent.
        assert 0 < budget.total.used < 100
        return other, await asyncio.gather(*slow)

    (status, body), slow = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert (status, body) == (200, {"received": 11})
    for status, body in slow:
        assert status == 408 and body["error"]["code"] == "body_timeout"
        assert "did not arrive within 1 s" in body["error"]["message"]
    assert budget.total.used == 0 and budget.held == {}


def test_a_chunked_trickle_gets_the_minimum_time():
    app = limited(BodyRules(32 * MIB, idle_timeout_s=30, timeout_s=60, min_timeout_s=0.3),
                  BodyBudget(64 * MIB, 32 * MIB))
    status, body = asyncio.run(asyncio.wait_for(call(app, scope_for("a", None), trickle(0.02)),
                                                10))
    assert status == 408 and body["error"]["code"] == "body_timeout"


def test_an_idle_client_gets_408():
    app = limited(BodyRules(1000, idle_timeout_s=0.2, timeout_s=60, min_timeout_s=60),
                  BodyBudget(1000, 1000))
    status, body = asyncio.run(call(app, scope_for("a", 100), chunks([b"x" * 10],
                                                                     then_stall=True)))
    assert status == 408 and "no part of the request body arrived" in body["error"]["message"]


def test_one_client_address_holds_no_more_than_its_share():
    budget = BodyBudget(capacity=100, per_client=50)
    app = limited(BodyRules(60, idle_timeout_s=5, timeout_s=5, min_timeout_s=5), budget)
    ten = [b"0123456789"] * 4

    async def scenario():
        first = asyncio.create_task(call(app, scope_for("a", 40), chunks(ten, 0.01)))
        second = asyncio.create_task(call(app, scope_for("a", 40), chunks(ten, 0.01)))
        other = asyncio.create_task(call(app, scope_for("b", 40), chunks(ten, 0.01)))
        return await asyncio.gather(first, second, other)

    first, second, other = asyncio.run(scenario())
    # Each of a's two bodies fits its share alone, both at once do not: one is refused.
    assert sorted([first[0], second[0]]) == [200, 429]
    refused = first if first[0] == 429 else second
    assert refused[1]["error"]["code"] == "too_many_bodies"
    assert other == (200, {"received": 40})
    assert budget.total.used == 0 and budget.held == {}


def test_the_total_budget_refuses_with_503():
    budget = BodyBudget(capacity=50, per_client=50)
    app = limited(BodyRules(60, idle_timeout_s=5, timeout_s=5, min_timeout_s=5), budget)
    ten = [b"0123456789"] * 4

    async def scenario():
        return await asyncio.gather(*(call(app, scope_for(c, 40), chunks(ten, 0.01))
                                      for c in ("a", "b")))

    statuses = sorted(status for status, _ in asyncio.run(scenario()))
    assert statuses == [200, 503]


def test_too_large_declared_or_sent():
    app = limited(BodyRules(10), BodyBudget(100, 100))
    status, body = asyncio.run(call(app, scope_for("a", 11), chunks([b"x" * 11])))
    assert status == 413 and body["error"]["code"] == "body_too_large"
    status, body = asyncio.run(call(app, scope_for("a", None), chunks([b"x" * 6, b"x" * 6])))
    assert status == 413


def test_time_allowed_scales_with_size():
    rules = BodyRules(32 * MIB, timeout_s=60, min_timeout_s=10)
    assert rules.time_allowed(32 * MIB) == 60
    assert rules.time_allowed(16 * MIB) == 30
    assert rules.time_allowed(1000) == 10


def test_absurd_content_lengths_are_413_or_ignored():
    app = limited(BodyRules(10), BodyBudget(100, 100))
    for length, status in (("9" * 5000, 413), ("0" * 30 + "5", 200), ("\u00b2", 200)):
        scope = scope_for("a", None)
        scope["headers"].append((b"content-length", length.encode("latin-1")))
        assert asyncio.run(call(app, scope, chunks([b"12345"])))[0] == status, length


def test_many_large_bodies_at_once_are_refused_before_any_is_read():
    """Ray Serve's proxy hands the app what has arrived of a body in one piece: a body the
    budget cannot hold must be refused before it is read, not after."""
    budget = BodyBudget(capacity=100, per_client=50)
    app = limited(BodyRules(60, idle_timeout_s=5, timeout_s=5, min_timeout_s=5), budget)
    reads: list[int] = []

    def counted(index: int):
        receive = chunks([b"x" * 40], 0.05)

        async def wrapped() -> dict:
            reads.append(index)
            return await receive()

        return wrapped

    async def scenario():
        return await asyncio.gather(*(call(app, scope_for("a", 40), counted(i))
                                      for i in range(16)))

    answers = asyncio.run(scenario())
    statuses = [status for status, _ in answers]
    assert sorted(statuses) == [200] + [429] * 15
    # Only the admitted body was ever read; none of the refused ones.
    assert set(reads) == {statuses.index(200)}
    assert budget.total.used == 0 and budget.held == {} and not budget.bodies
