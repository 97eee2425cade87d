"""Webhooks without a network: signatures (checked by the openai SDK's own verifier), the retry
schedule, the URL policy, and the store and dispatcher with a fake sender and a fake clock."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from videoserve.core.runner import JobObserver, ObserverFanOut
from videoserve.core.webhook_urls import UrlRefused, check_url, public_address
from videoserve.core.webhooks import (
    MAX_RETRY_DELAY_S,
    RETRY_WINDOW_S,
    WebhookDispatcher,
    new_secret,
    retry_delay,
    signed_headers,
)


def sdk():
    from openai import OpenAI

    return OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")


# -- signatures -----------------------------------------------------------------------------

def test_signature_is_accepted_by_the_sdk_and_a_changed_body_is_not():
    from openai import InvalidWebhookSignatureError

    secret = new_secret()
    assert secret.startswith("whsec_")
    body = json.dumps({"id": "evt_1", "object": "event", "type": "video.completed",
                       "created_at": int(time.time()), "data": {"id": "video_1"}}).encode()
    headers = signed_headers([secret], "msg_1", int(time.time()), body)
    event = sdk().webhooks.unwrap(body, headers, secret=secret)
    assert event.type == "video.completed" and event.data.id == "video_1"
    with pytest.raises(InvalidWebhookSignatureError):
        sdk().webhooks.unwrap(body.replace(b"video_1", b"video_2"), headers, secret=secret)
    with pytest.raises(InvalidWebhookSignatureError):
        sdk().webhooks.unwrap(body, headers, secret=new_secret())


def test_both_secrets_sign_during_a_rotation_grace():
    old, new = new_secret(), new_secret()
    body = b'{"id":"evt_2"}'
    headers = signed_headers([new, old], "msg_2", int(time.time()), body)
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (old, new):
        sdk().webhooks.verify_signature(body, headers, secret=secret)


# -- retry schedule -------------------------------------------------------------------------

def test_retry_delay_doubles_from_the_initial_wait_up_to_an_hour():
    assert [retry_delay(n, 5.0) for n in range(1, 6)] == [5, 10, 20, 40, 80]
    assert retry_delay(30, 5.0) == MAX_RETRY_DELAY_S
    assert [retry_delay(n, 0.2) for n in (1, 2, 3)] == [0.2, 0.4, 0.8]
    # the attempts fit in the retry window: 5 s doubling reaches an hour after ~10 attempts
    total, n = 0.0, 0
    while total < RETRY_WINDOW_S:
        n += 1
        total += retry_delay(n, 5.0)
    assert 25 < n < 40


# -- URL policy -----------------------------------------------------------------------------

def resolver(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise UrlRefused(f"the host {host!r} does not resolve")
        return table[host]
    return resolve


DNS = resolver({"public.example": ["93.184.216.34"], "private.example": ["10.0.0.5"],
                "mixed.example": ["93.184.216.34", "127.0.0.1"],
                "v6.example": ["2606:2800:220:1:248:1893:25c8:1946"],
                "v6local.example": ["fd00::1"]})


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",
    "100.64.0.1", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:a00:1::1", "ff02::1",
    "not-an-ip"])
def test_non_public_addresses(address):
    assert not public_address(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8",
                                     "2606:2800:220:1:248:1893:25c8:1946", "::ffff:8.8.8.8"])
def test_public_addresses(address):
    assert public_address(address)


def test_https_to_a_public_address_is_accepted_and_pinned():
    target = check_url("https://public.example:8443/hook?x=1", resolver=DNS)
    assert (target.scheme, target.host, target.port, target.path, target.address) == (
        "https", "public.example", 8443, "/hook?x=1", "93.184.216.34")
    assert target.host_header == "public.example:8443"
    assert check_url("https://v6.example", resolver=DNS).path == "/"


@pytest.mark.parametrize("url, reason", [
    ("http://public.example/hook", "https"),
    ("ftp://public.example/hook", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("javascript:alert(1)", "scheme"),
    ("https://127.0.0.1/hook", "not a public address"),
    ("https://[::1]/hook", "not a public address"),
    ("https://169.254.169.254/latest", "not a public address"),
    ("https://[fe80::1]/", "not a public address"),
    ("https://[::ffff:192.168.0.1]/", "not a public address"),
    ("https://private.example/hook", "resolves to 10.0.0.5"),
    ("https://mixed.example/hook", "resolves to 127.0.0.1"),
    ("https://v6local.example/", "fd00::1"),
    ("https://nowhere.example/", "does not resolve"),
    ("https://user:pw@public.example/", "credentials"),
    ("https:///nohost", "no host"),
    ("https://public.example:99999/", "malformed"),
    ("https://public.example/a b", "spaces"),
    ("", "empty"),
])
def test_refused_urls_say_why(url, reason):
    with pytest.raises(UrlRefused, match=reason):
        check_url(url, resolver=DNS)


def test_allowed_hosts_may_use_any_address_and_http():
    allow = ("127.0.0.1", "private.example", "::1")
    assert check_url("http://127.0.0.1:8080/x", allow, DNS).address == "127.0.0.1"
    assert check_url("http://private.example/x", allow, DNS).address == "10.0.0.5"
    assert check_url("http://[::1]:81/", allow, DNS).host_header == "[::1]:81"
    # others still need https and public addresses
    with pytest.raises(UrlRefused):
        check_url("http://127.0.0.2/x", allow, DNS)
    with pytest.raises(UrlRefused):
        check_url("https://localhost/x", allow, resolver({"localhost": ["127.0.0.1"]}))
    with pytest.raises(UrlRefused, match="scheme"):
        check_url("gopher://127.0.0.1/x", allow, DNS)


# -- store and dispatcher -------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Receiver:
    """A fake Send: answers from a script (an int, or an exception to raise)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls: list[tuple] = []

    async def __call__(self, target, body, headers, timeout):
        self.calls.append((target, body, headers))
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, BaseException):
            raise answer
        return answer


ALLOW = ("hooks.test",)
LOCAL = resolver({"hooks.test": ["127.0.0.1"]})


def dispatcher(path, send, clock=None, results=None, initial=5.0):
    return WebhookDispatcher(path, ALLOW, initial, send=send, resolver=LOCAL,
                             on_result=(lambda t, r: results.append((t, r)))
                             if results is not None else None, clock=clock or time.time)


def _job(job_id: str, status: str, owner: str | None):
    class Fake:  # on_final reads only these
        pass
    job = Fake()
    job.id, job.status, job.owner = job_id, status, owner
    return job


async def until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_final_jobs_are_delivered_signed_to_the_owners_subscribed_endpoints(tmp_path):
    async def main():
        send, results = Receiver(), []
        hooks = dispatcher(tmp_path / "jobs.sqlite3", send, results=results)
        mine = hooks.store.add_endpoint("alice", "a", "http://hooks.test/a",
                                        ["video.completed", "video.failed"])
        hooks.store.add_endpoint("alice", "c", "http://hooks.test/c", ["video.cancelled"])
        hooks.store.add_endpoint("bob", "b", "http://hooks.test/b", ["video.completed"])
        hooks.start()
        hooks.on_final(_job("video_1", "completed", "alice"))
        hooks.on_final(_job("video_2", "failed", "alice"))
        hooks.on_final(_job("video_3", "in_progress", "alice"))  # not final: ignored
        await until(lambda: len(send.calls) == 2)
        await asyncio.sleep(0.05)
        assert len(send.calls) == 2
        events = []
        for target, body, headers in send.calls:
            assert target.path == "/a" and target.address == "127.0.0.1"
            events.append(sdk().webhooks.unwrap(body, headers, secret=mine.secret))
        assert sorted((e.type, e.data.id) for e in events) == [
            ("video.completed", "video_1"), ("video.failed", "video_2")]
        assert all(e.object == "event" and e.id.startswith("evt_") for e in events)
        assert sorted(results) == [("video.completed", "delivered"),
                                   ("video.failed", "delivered")]
        assert hooks.store.pending() == []
        await hooks.close()

    asyncio.run(main())


def test_failures_are_retried_with_the_same_id_and_backoff(tmp_path):
    async def main():
        send, results = Receiver(500, OSError("timed out"), 200), []
        hooks = dispatcher(tmp_path / "db", send, results=results, initial=0.05)
        hooks.store.add_endpoint(None, "a", "http://hooks.test/", ["video.completed"])
        hooks.start()
        hooks.on_final(_job("video_1", "completed", None))
        await until(lambda: len(send.calls) == 3)
        ids = {headers["webhook-id"] for _, _, headers in send.calls}
        bodies = {body for _, body, _ in send.calls}
        assert len(ids) == 1 and len(bodies) == 1
        assert [r for _, r in results] == ["failed", "failed", "delivered"]
        await until(lambda: hooks.store.pending() == [])
        await hooks.close()

    asyncio.run(main())


def test_a_pending_delivery_survives_a_restart(tmp_path):
    path = tmp_path / "jobs.sqlite3"

    async def first():
        send = Receiver(503)
        hooks = dispatcher(path, send, initial=0.3)
        hooks.store.add_endpoint(None, "a", "http://hooks.test/", ["video.failed"])
        hooks.start()
        hooks.on_final(_job("video_9", "failed", None))
        await until(lambda: len(send.calls) == 1)
        await until(lambda: hooks.store.pending() and hooks.store.pending()[0].attempts == 1)
        await hooks.close()  # the backend stops before the retry
        return send.calls[0][2]["webhook-id"]

    async def second(first_id):
        send = Receiver(200)
        hooks = dispatcher(path, send, initial=0.3)
        assert [d.id for d in hooks.store.pending()] == [first_id]
        hooks.start()
        await until(lambda: len(send.calls) == 1)
        assert send.calls[0][2]["webhook-id"] == first_id
        await until(lambda: hooks.store.pending() == [])
        await hooks.close()

    asyncio.run(second(asyncio.run(first())))


def test_deliveries_give_up_after_the_retry_window(tmp_path):
    async def main():
        clock, results = Clock(), []
        send = Receiver(*[500] * 100)
        hooks = dispatcher(tmp_path / "db", send, clock=clock, results=results, initial=3600)
        hooks.store.add_endpoint(None, "a", "http://hooks.test/", ["video.completed"])
        hooks.start()
        hooks.on_final(_job("v", "completed", None))
        for n in range(1, 30):
            await until(lambda n=n: len(send.calls) == n or not hooks.store.pending())
            if not hooks.store.pending():
                break
            await until(lambda n=n: hooks.store.pending()[0].attempts == n)
            clock.now = hooks.store.pending()[0].next_at
            hooks.wake()
        assert results[-1] == ("video.completed", "expired")
        assert hooks.store.pending() == []
        assert len(send.calls) == 25  # at once, then hourly until 24 h after the event
        await hooks.close()

    asyncio.run(main())


def test_a_url_that_now_resolves_privately_is_not_sent_to(tmp_path):
    async def main():
        send, results = Receiver(), []
        hooks = WebhookDispatcher(tmp_path / "db", (), 0.05, send=send,
                                  resolver=resolver({"hook.example": ["10.0.0.1"]}),
                                  on_result=lambda t, r: results.append(r))
        hooks.store.add_endpoint(None, "a", "https://hook.example/", ["video.completed"])
        hooks.start()
        hooks.on_final(_job("v", "completed", None))
        await until(lambda: len(results) >= 2)
        assert send.calls == [] and set(results) == {"refused"}
        await hooks.close()

    asyncio.run(main())


def test_endpoints_list_update_rotate_and_delete(tmp_path):
    async def main():
        send = Receiver(204)
        hooks = dispatcher(tmp_path / "db", send)
        made = [hooks.store.add_endpoint("k", f"e{i}", "http://hooks.test/", ["video.failed"])
                for i in range(3)]
        page, more = hooks.store.endpoints("k", 2)
        assert [e.name for e in page] == ["e2", "e1"] and more
        page, more = hooks.store.endpoints("k", 2, page[-1].id)
        assert [e.name for e in page] == ["e0"] and not more
        assert hooks.store.endpoint(made[0].id, "other") is None
        updated = hooks.store.update_endpoint(made[0], name="renamed", url=None)
        assert updated.name == "renamed" and updated.url == made[0].url
        rotated = hooks.store.rotate_secret(updated, keep_old=True)
        assert rotated.secret != updated.secret and rotated.old_secret == updated.secret
        assert len(rotated.secrets(time.time())) == 2
        assert len(rotated.secrets(time.time() + 25 * 3600)) == 1
        assert await hooks.test(rotated, "video.completed") == 204
        hooks.store.delete_endpoint(rotated.id)
        assert hooks.store.endpoint(rotated.id, "k") is None
        view = made[1].view()
        assert "signing_secret" not in view and view["signing_secret_hint"].startswith("whsec_")
        await hooks.close()

    asyncio.run(main())


def test_fan_out_reaches_every_observer_even_after_one_fails():
    heard = []

    class Broken(JobObserver):
        def on_final(self, job):
            raise RuntimeError("boom")

    class Ear(JobObserver):
        def on_final(self, job):
            heard.append(job)

    fan = ObserverFanOut(Broken())
    fan.add(Ear())
    fan.on_final("job")
    fan.on_submitted("job")
    assert heard == ["job"]
