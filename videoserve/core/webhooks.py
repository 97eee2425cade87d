"""Webhooks in the shape of OpenAI's: endpoints a key registers, and signed events
(``video.completed``, ``video.failed``, ``video.cancelled``) POSTed to them when that key's jobs
end, at least once.

* Signatures follow Standard Webhooks, as the ``openai`` SDK's ``client.webhooks.unwrap`` checks
  them: headers ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature: v1,<base64
  HMAC-SHA256 of "{id}.{timestamp}.{body}">``, keyed with the base64-decoded part of the
  endpoint's ``whsec_`` secret. After a rotation that keeps the old secret for 24 h, both sign.
* Deliveries wait in the job database (``jobs.sqlite3``, tables of their own, a connection of
  their own), so a delivery pending when the backend stops is sent after it starts again. An
  answer other than 2xx, or none within ``DELIVERY_TIMEOUT_S``, is retried with the same
  ``webhook-id`` after ``retry_delay`` (doubling from ``--webhook_retry_initial_s``), until
  ``RETRY_WINDOW_S`` after the event.
* Each attempt checks the URL again (``videoserve.core.webhook_urls``) and connects to the
  address it checked; redirects are not followed.
* An endpoint hears only of jobs of the key that created it (its owner hash; None: open API).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import logging
import secrets
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from videoserve import __version__
from videoserve.core.jobs import Job
from videoserve.core.runner import JobObserver
from videoserve.core.webhook_urls import Resolve, Target, UrlRefused, check_url, resolve

log = logging.getLogger(__name__)

EVENT_TYPES = ("video.completed", "video.failed", "video.cancelled")
EVENT_OF_STATUS = {"completed": "video.completed", "failed": "video.failed",
                   "cancelled": "video.cancelled"}
DELIVERY_TIMEOUT_S = 10.0
RETRY_WINDOW_S = 24 * 3600.0
MAX_RETRY_DELAY_S = 3600.0  # the doubling stops at an hour between attempts
OLD_SECRET_GRACE_S = 24 * 3600.0
MAX_CONCURRENT_DELIVERIES = 4
IDLE_CHECK_S = 30.0  # the dispatcher looks at the table at least this often

# (target, body, headers, timeout_s) -> the receiver's status code; OSError when no answer.
Send = Callable[[Target, bytes, dict[str, str], float], Awaitable[int]]
# (event type, result): result is delivered, failed, refused or expired.
OnResult = Callable[[str, str], None]


# -- secrets and signatures ---------------------------------------------------------------------

def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_hint(secret: str) -> str:
    return "whsec_…" + secret[-4:]


def _key(secret: str) -> bytes:
    return base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``{msg_id}.{timestamp}.{body}`` (Standard Webhooks)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secrets_: Iterable[str], msg_id: str, timestamp: int,
                   body: bytes) -> dict[str, str]:
    return {"content-type": "application/json", "user-agent": f"videoserve-webhooks/{__version__}",
            "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(signature(s, msg_id, timestamp, body)
                                          for s in secrets_)}


def retry_delay(failures: int, initial_s: float) -> float:
    """Seconds before the next attempt after ``failures`` failed ones: initial_s, then
    doubling, at most MAX_RETRY_DELAY_S."""
    return min(initial_s * 2 ** max(failures - 1, 0), MAX_RETRY_DELAY_S)


def event_body(event_id: str, event_type: str, created_at: int, video_id: str) -> bytes:
    return json.dumps({"id": event_id, "object": "event", "type": event_type,
                       "created_at": created_at, "data": {"id": video_id}},
                      separators=(",", ":")).encode()


# -- the tables -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    id: str
    owner: str | None
    name: str
    url: str
    event_types: tuple[str, ...]
    secret: str
    created_at: int
    updated_at: int
    old_secret: str | None = None
    old_secret_until: float | None = None
    seq: int = 0

    def secrets(self, now: float) -> list[str]:
        keep_old = self.old_secret and (self.old_secret_until or 0) > now
        return [self.secret, self.old_secret] if keep_old else [self.secret]  # type: ignore[list-item]

    def view(self, with_secret: bool = False) -> dict[str, Any]:
        """The endpoint in the SDK's WebhookEndpoint (or WebhookEndpointWithSecret) shape."""
        out: dict[str, Any] = {"id": self.id, "object": "webhook_endpoint", "name": self.name,
                               "url": self.url, "event_types": list(self.event_types),
                               "created_at": self.created_at, "updated_at": self.updated_at,
                               "signing_secret_hint": secret_hint(self.secret)}
        if with_secret:
            out["signing_secret"] = self.secret
        return out


@dataclass(frozen=True)
class Delivery:
    id: str  # the webhook-id, the same on every attempt
    endpoint_id: str
    event_type: str
    body: bytes
    created_at: float
    attempts: int
    next_at: float


_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, owner TEXT,
    name TEXT NOT NULL, url TEXT NOT NULL, event_types TEXT NOT NULL, secret TEXT NOT NULL,
    old_secret TEXT, old_secret_until REAL, created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY, endpoint_id TEXT NOT NULL, event_type TEXT NOT NULL,
    body BLOB NOT NULL, created_at REAL NOT NULL, attempts INTEGER NOT NULL,
    next_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS webhook_deliveries_next ON webhook_deliveries (next_at);
"""
_ENDPOINT_COLUMNS = ("id, owner, name, url, event_types, secret, created_at, updated_at, "
                     "old_secret, old_secret_until, seq")


def _endpoint(row: tuple) -> Endpoint:
    return Endpoint(row[0], row[1], row[2], row[3], tuple(json.loads(row[4])), *row[5:])


class WebhookStore:
    """Endpoints and pending deliveries, in tables of their own in the job database."""

    def __init__(self, path: Path | str):
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute("PRAGMA journal_mode=WAL")  # as the job table's connection sets it
        with self._lock:
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # endpoints

    def add_endpoint(self, owner: str | None, name: str, url: str,
                     event_types: Iterable[str], now: float | None = None) -> Endpoint:
        at = int(now if now is not None else time.time())
        endpoint = Endpoint("we_" + secrets.token_hex(12), owner, name, url,
                            tuple(event_types), new_secret(), at, at)
        self._run("INSERT INTO webhook_endpoints (id, owner, name, url, event_types, secret, "
                  "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  (endpoint.id, owner, name, url, json.dumps(endpoint.event_types),
                   endpoint.secret, at, at))
        return self.endpoint(endpoint.id, owner)  # type: ignore[return-value]

    def endpoint(self, endpoint_id: str, owner: str | None, any_owner: bool = False
                 ) -> Endpoint | None:
        """The endpoint if ``owner`` made it (another owner's is None, as if absent)."""
        rows = self._run(f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?",
                         (endpoint_id,))
        if not rows:
            return None
        found = _endpoint(rows[0])
        return found if any_owner or found.owner == owner else None

    def endpoints(self, owner: str | None, limit: int | None = None,
                  after: str | None = None) -> tuple[list[Endpoint], bool]:
        """``owner``'s endpoints, newest first, after the one with id ``after``; and whether
        there are more."""
        where, args = "owner IS ?", [owner]
        if after:
            mark = self.endpoint(after, owner)
            if mark is not None:
                where += " AND seq < ?"
                args.append(mark.seq)
        sql = f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE {where} ORDER BY seq DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit) + 1}"
        found = [_endpoint(row) for row in self._run(sql, tuple(args))]
        if limit is not None and len(found) > limit:
            return found[:limit], True
        return found, False

    def update_endpoint(self, endpoint: Endpoint, now: float | None = None,
                        **changes: Any) -> Endpoint:
        changes = {k: v for k, v in changes.items() if v is not None}
        if "event_types" in changes:
            changes["event_types"] = tuple(changes["event_types"])
        updated = replace(endpoint, **changes)
        if updated != endpoint:
            updated = replace(updated, updated_at=int(now if now is not None else time.time()))
        self._run("UPDATE webhook_endpoints SET name = ?, url = ?, event_types = ?, secret = ?, "
                  "old_secret = ?, old_secret_until = ?, updated_at = ? WHERE id = ?",
                  (updated.name, updated.url, json.dumps(updated.event_types), updated.secret,
                   updated.old_secret, updated.old_secret_until, updated.updated_at,
                   updated.id))
        return updated

    def rotate_secret(self, endpoint: Endpoint, keep_old: bool,
                      now: float | None = None) -> Endpoint:
        at = now if now is not None else time.time()
        updated = replace(endpoint, secret=new_secret(), updated_at=int(at),
                          old_secret=endpoint.secret if keep_old else None,
                          old_secret_until=at + OLD_SECRET_GRACE_S if keep_old else None)
        return self.update_endpoint(updated, at)

    def delete_endpoint(self, endpoint_id: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM webhook_deliveries WHERE endpoint_id = ?",
                                 (endpoint_id,))
                self._db.execute("DELETE FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def subscribers(self, owner: str | None, event_type: str) -> list[Endpoint]:
        return [e for e in self.endpoints(owner)[0] if event_type in e.event_types]

    # deliveries

    def enqueue(self, endpoints: Iterable[Endpoint], event_type: str, body: bytes,
                now: float) -> list[Delivery]:
        made = [Delivery("msg_" + secrets.token_hex(12), e.id, event_type, body, now, 0, now)
                for e in endpoints]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO webhook_deliveries (id, endpoint_id, event_type, body, "
                    "created_at, attempts, next_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(d.id, d.endpoint_id, d.event_type, d.body, d.created_at, d.attempts,
                      d.next_at) for d in made])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return made

    def pending(self) -> list[Delivery]:
        rows = self._run("SELECT id, endpoint_id, event_type, body, created_at, attempts, "
                         "next_at FROM webhook_deliveries ORDER BY next_at")
        return [Delivery(r[0], r[1], r[2], bytes(r[3]), *r[4:]) for r in rows]

    def reschedule(self, delivery: Delivery, attempts: int, next_at: float) -> None:
        self._run("UPDATE webhook_deliveries SET attempts = ?, next_at = ? WHERE id = ?",
                  (attempts, next_at, delivery.id))

    def remove(self, delivery_id: str) -> None:
        self._run("DELETE FROM webhook_deliveries WHERE id = ?", (delivery_id,))


# -- sending ------------------------------------------------------------------------------------

class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the checked address, whatever the host name resolves to now."""

    def __init__(self, target: Target, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, target: Target, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout,
                         context=ssl.create_default_context())
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post_blocking(target: Target, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST ``body`` to the checked target (no redirects followed); the status code."""
    kind = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    connection = kind(target, timeout)
    deadline = time.monotonic() + timeout
    try:
        connection.request("POST", target.path, body=body,
                           headers={**headers, "host": target.host_header,
                                    "connection": "close"})
        response = connection.getresponse()
        # Read (a little of) the answer, within the deadline, so the receiver is not cut off.
        while time.monotonic() < deadline and response.read(65536):
            pass
        return response.status
    finally:
        connection.close()


class ThreadedSender:
    """The default ``Send``: ``post_blocking`` in threads of its own (never on the loop)."""

    def __init__(self, workers: int = MAX_CONCURRENT_DELIVERIES):
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="webhook")

    async def __call__(self, target: Target, body: bytes, headers: dict[str, str],
                       timeout: float) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, post_blocking, target, body, headers,
                                          timeout)


# -- the dispatcher -------------------------------------------------------------------------------

class WebhookDispatcher(JobObserver):
    """Turns final jobs into pending deliveries and sends them (a task on the event loop)."""

    def __init__(self, path: Path | str, allow_hosts: Iterable[str] = (),
                 retry_initial_s: float = 5.0, send: Send | None = None,
                 resolver: Resolve = resolve, on_result: OnResult | None = None,
                 clock: Callable[[], float] = time.time,
                 timeout_s: float = DELIVERY_TIMEOUT_S):
        self.store = WebhookStore(path)
        self.allow_hosts = tuple(allow_hosts)
        self.retry_initial_s = retry_initial_s
        self.send: Send = send or ThreadedSender()
        self.resolver, self.clock, self.timeout_s = resolver, clock, timeout_s
        self.on_result = on_result or (lambda event_type, result: None)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._in_flight: dict[str, asyncio.Task] = {}
        self._slots: asyncio.Semaphore | None = None
        self._closed = False

    # -- URL policy (blocking DNS off the loop) --

    async def check_url(self, url: str) -> Target:
        """The URL's checked target; UrlRefused with the reason."""
        return await asyncio.to_thread(check_url, url, self.allow_hosts, self.resolver)

    # -- JobObserver --

    def on_final(self, job: Job) -> None:
        event_type = EVENT_OF_STATUS.get(job.status)
        if event_type is None:
            return
        try:
            self.publish(job.owner, event_type, job.id)
        except Exception:  # noqa: BLE001 - a webhook problem must never stop the runner
            log.exception("could not queue the %s webhooks of %s", event_type, job.id)

    def publish(self, owner: str | None, event_type: str, video_id: str) -> list[Delivery]:
        """Queue an event for each of ``owner``'s endpoints that subscribed to it."""
        endpoints = self.store.subscribers(owner, event_type)
        if not endpoints:
            return []
        now = self.clock()
        body = event_body("evt_" + secrets.token_hex(12), event_type, int(now), video_id)
        made = self.store.enqueue(endpoints, event_type, body, now)
        self.wake()
        return made

    # -- the loop --

    def start(self) -> None:
        """Start sending (on the running loop): pending deliveries from before a restart
        first."""
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_DELIVERIES)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def close(self) -> None:
        """Stop sending; what is pending stays in the table for the next start."""
        self._closed = True
        tasks = [t for t in (self._task, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        self.store.close()

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._closed:
            self._wake.clear()
            wait = IDLE_CHECK_S
            try:
                now = self.clock()
                for delivery in self.store.pending():
                    if delivery.id in self._in_flight:
                        continue
                    if delivery.next_at > now:
                        wait = min(wait, delivery.next_at - now)
                        break
                    task = asyncio.get_running_loop().create_task(self._deliver(delivery))
                    self._in_flight[delivery.id] = task
                    task.add_done_callback(lambda t, i=delivery.id: self._done(i))
            except Exception:  # noqa: BLE001 - e.g. the database busy: try again soon
                log.warning("could not read the pending webhook deliveries", exc_info=True)
                wait = 1.0
            # Not wait_for: on Python 3.11 it can swallow a cancel that meets a wake-up.
            waiter = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({waiter}, timeout=max(wait, 0.01))
            finally:
                waiter.cancel()

    def _done(self, delivery_id: str) -> None:
        self._in_flight.pop(delivery_id, None)
        self.wake()

    async def _deliver(self, delivery: Delivery) -> None:
        assert self._slots is not None
        async with self._slots:
            if self._closed:
                return
            endpoint = self.store.endpoint(delivery.endpoint_id, None, any_owner=True)
            if endpoint is None:  # deleted meanwhile
                self.store.remove(delivery.id)
                return
            result, detail = await self.attempt(endpoint, delivery.id, delivery.body)
            if self._closed:  # the table is closing: it stays pending for the next start
                return
            self.on_result(delivery.event_type, result)
            if result == "delivered":
                log.debug("webhook %s (%s) delivered to %s", delivery.id, delivery.event_type,
                          endpoint.id)
                self.store.remove(delivery.id)
                return
            attempts = delivery.attempts + 1
            next_at = self.clock() + retry_delay(attempts, self.retry_initial_s)
            if next_at > delivery.created_at + RETRY_WINDOW_S:
                log.warning("webhook %s (%s) to endpoint %s given up after %d attempts: %s",
                            delivery.id, delivery.event_type, endpoint.id, attempts, detail)
                self.on_result(delivery.event_type, "expired")
                self.store.remove(delivery.id)
                return
            log.warning("webhook %s (%s) to endpoint %s failed (attempt %d: %s); retrying in "
                        "%.1f s", delivery.id, delivery.event_type, endpoint.id, attempts,
                        detail, next_at - self.clock())
            self.store.reschedule(delivery, attempts, next_at)

    async def _send_signed(self, endpoint: Endpoint, msg_id: str, body: bytes) -> int:
        """Check the URL again, sign and POST once; the receiver's status code. UrlRefused,
        or OSError / HTTPException when it did not answer (TimeoutError is an OSError)."""
        target = await self.check_url(endpoint.url)
        now = self.clock()
        headers = signed_headers(endpoint.secrets(now), msg_id, int(now), body)
        return await asyncio.wait_for(self.send(target, body, headers, self.timeout_s),
                                      self.timeout_s + 1.0)

    async def attempt(self, endpoint: Endpoint, msg_id: str, body: bytes
                      ) -> tuple[str, str]:
        """One signed POST: (result, detail), result delivered, failed or refused. The
        status code is the detail of an answer."""
        try:
            status = await self._send_signed(endpoint, msg_id, body)
        except UrlRefused as exc:
            return "refused", str(exc)
        except (OSError, http.client.HTTPException) as exc:
            return "failed", f"no answer: {exc!r}"
        return ("delivered" if 200 <= status < 300 else "failed"), str(status)

    async def test(self, endpoint: Endpoint, event_type: str) -> int:
        """Send a sample event once (not queued, not retried); the receiver's status code.
        UrlRefused or OSError when it could not be sent."""
        body = event_body("evt_" + secrets.token_hex(12), event_type, int(self.clock()),
                          "video_test_" + secrets.token_hex(6))
        try:
            return await self._send_signed(endpoint, "msg_" + secrets.token_hex(12), body)
        except TimeoutError:
            raise OSError(f"no answer within {self.timeout_s:.0f} s") from None
        except http.client.HTTPException as exc:
            raise OSError(f"a malformed answer ({exc!r})") from None
