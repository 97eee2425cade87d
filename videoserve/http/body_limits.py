"""Request bodies at the ASGI edge: a size limit, a shared budget of bytes in flight (reserved
by declared length, given back by slow bodies when another request needs the room), a share per
client address and a time limit, so that many or slow clients cannot hold the ingress's memory."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from videoserve.core.budget import RETRY, Budget
from videoserve.http.errors import error_body


class BodyRefused(StarletteHTTPException):
    """A body refused while it arrives. An HTTPException, so that frameworks which wrap
    body-parsing errors pass it through as is."""

    def __init__(self, status: int, message: str, code: str,
                 headers: dict[str, str] | None = None):
        super().__init__(status, message, headers=headers)
        self.code = code


def too_large(max_bytes: int) -> BodyRefused:
    return BodyRefused(413, f"request body is larger than {max_bytes} bytes", "body_too_large")


class BodyBudget:
    """Bytes of request bodies in flight: in total, and per client address, so that one address
    cannot hold more than its fair share of what every client needs.

    A body reserves its declared length when it starts (so that many large bodies at once are
    refused before any of them is read: Ray Serve's proxy hands a replica whatever part of a
    body has arrived in one piece), and then holds what it has received. A body that arrives
    slowly gives its reservation back as soon as another request needs the room (``reclaim``):
    slow uploads hold only the bytes they sent, and cannot lock anyone out.
    """

    def __init__(self, capacity: int, per_client: int):
        self.total = Budget(capacity)
        self.per_client = min(per_client, capacity)
        self.held: dict[str, int] = {}
        self.bodies: set[_Body] = set()

    def take(self, client: str, amount: int) -> None:
        """Count ``amount`` more bytes of ``client``'s; refused (429: its share, 503: the
        total) without counting them, after slow bodies gave back what they reserved."""
        refusal = self._refusal(client, amount)
        if refusal is not None:
            self.reclaim()
            refusal = self._refusal(client, amount)
        if refusal is not None:
            raise refusal
        self.total.try_take(amount)
        self.held[client] = self.held.get(client, 0) + amount

    def _refusal(self, client: str, amount: int) -> BodyRefused | None:
        if self.held.get(client, 0) + amount > self.per_client:
            return BodyRefused(429, "this client is sending too many request bodies at once; "
                               "retry when one is answered", "too_many_bodies", RETRY)
        if self.total.used + amount > self.total.capacity:
            return BodyRefused(503, "the server is receiving too many request bodies at once; "
                               "retry shortly", "busy", RETRY)
        return None

    def give(self, client: str, amount: int) -> None:
        if amount <= 0:
            return
        self.total.give(amount)
        left = self.held.get(client, 0) - amount
        if left > 0:
            self.held[client] = left
        else:
            self.held.pop(client, None)

    def reclaim(self) -> None:
        """Slow bodies give back the part of their reservation they have not sent yet."""
        now = time.monotonic()
        for body in list(self.bodies):
            body.shrink_if_slow(now)


@dataclass(frozen=True)
class BodyRules:
    """How large and how slow a request body may be."""

    max_bytes: int
    # A client that sends nothing for this long in the middle of a body is answered 408.
    idle_timeout_s: float = 30.0
    # The time a body of max_bytes may take in all; a smaller one gets its share of it by size
    # (of the declared length, else of what arrived), and at least min_timeout_s: a client that
    # sends a byte now and then is answered 408 even though it never goes idle.
    timeout_s: float = 60.0
    min_timeout_s: float = 10.0
    # A body keeps the reservation of its declared length while it is younger than this, or
    # arrives at least this fast on average; otherwise it holds only what it sent once another
    # request needs the room.
    reserve_grace_s: float = 0.5
    reserve_min_rate: float = 1024 * 1024  # bytes a second

    def time_allowed(self, size: int) -> float:
        return max(self.min_timeout_s, self.timeout_s * size / self.max_bytes)


class BodySizeLimit:
    """ASGI middleware for request bodies: 413 over the size limit (without reading them whole),
    408 for a body that stalls or arrives too slowly, and 503/429 with Retry-After while the
    bodies in flight (or those of one client address) would pass ``budget`` (see BodyBudget).
    A body's budget is held until its response is sent."""

    def __init__(self, app: Any, rules: BodyRules, budget: BodyBudget | None = None):
        self.app, self.rules, self.budget = app, rules, budget

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _Body(self.rules, self.budget, scope)
        if body.declared > self.rules.max_bytes:
            await _refuse(send, too_large(self.rules.max_bytes))
            return
        try:
            body.reserve()
            await self.app(scope, partial(body.receive, receive), send)
        except BodyRefused as exc:
            await _refuse(send, exc)
        finally:
            body.release()


class _Body:
    """One request's body as it arrives: sized, timed and counted against the budget."""

    def __init__(self, rules: BodyRules, budget: BodyBudget | None, scope: dict):
        self.rules, self.budget = rules, budget
        length = Headers(scope=scope).get("content-length", "")
        # 19 digits already pass any limit (and int() refuses thousands of them).
        self.declared = int(length[:19]) if length.isascii() and length.isdigit() else 0
        client = scope.get("client")
        self.client = str(client[0]) if client else ""
        self.started = time.monotonic()
        self.seen, self.held, self.finished = 0, 0, False

    def reserve(self) -> None:
        """Take the declared length up front; refused at once (nothing read) without room."""
        if self.budget is None:
            return
        self.budget.take(self.client, self.declared)
        self.held = self.declared
        self.budget.bodies.add(self)

    def shrink_if_slow(self, now: float) -> None:
        elapsed = now - self.started
        slow = self.seen < self.rules.reserve_min_rate * elapsed
        if self.held > self.seen and elapsed > self.rules.reserve_grace_s and slow:
            self.budget.give(self.client, self.held - self.seen)  # type: ignore[union-attr]
            self.held = self.seen

    async def receive(self, receive: Any) -> dict:
        if self.finished:  # past the body, receive only reports a disconnect: no timeout
            return await receive()
        message = await self._next(receive)
        if message["type"] != "http.request":
            return message
        chunk = len(message.get("body", b""))
        if self.seen + chunk > self.rules.max_bytes:
            raise too_large(self.rules.max_bytes)
        if self.budget is not None and self.seen + chunk > self.held:
            self.budget.take(self.client, self.seen + chunk - self.held)
            self.held = self.seen + chunk
        self.seen += chunk
        self.finished = not message.get("more_body", False)
        return message

    async def _next(self, receive: Any) -> dict:
        allowed = self.rules.time_allowed(max(self.declared, self.seen))
        left = self.started + allowed - time.monotonic()
        wait = min(self.rules.idle_timeout_s, left)
        try:
            if wait <= 0:
                raise TimeoutError
            return await asyncio.wait_for(receive(), wait)
        except TimeoutError:
            if wait < self.rules.idle_timeout_s:
                message = f"the request body did not arrive within {allowed:.0f} s"
            else:
                message = f"no part of the request body arrived for {wait:.0f} s"
            raise BodyRefused(408, message, "body_timeout") from None

    def release(self) -> None:
        if self.budget is not None:
            self.budget.bodies.discard(self)
            self.budget.give(self.client, self.held)
            self.held = 0


async def _refuse(send: Any, exc: BodyRefused) -> None:
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    body = error_body(str(exc.detail), kind, code=exc.code)
    response = JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}
