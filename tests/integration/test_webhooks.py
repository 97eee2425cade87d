"""Webhooks on the real Ray Serve app (tiny T2V), through the official openai SDK: endpoints
made and managed with ``client.webhooks``, signed ``video.completed`` / ``video.failed`` events
that ``client.webhooks.unwrap`` accepts, retries with the same webhook-id, endpoints private to
their key, and the URL policy (a local receiver is allowed only through the allow list)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.conftest import free_port
from tests.integration.faults import FAIL_MARKER, fail_on_marker
from videoserve.core.config import Settings
from videoserve.serve.presets import build_specs

APP = "hooks"
KEY_A, KEY_B = "key-hooks-alice-0123", "key-hooks-bob-456789"
SMALL = {"size": "16x16", "seconds": "1"}


class Receiver:
    """A local HTTP server recording every POST; answers per path from a script (200 when
    the script is used up)."""

    def __init__(self):
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.script: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.requests.append((self.path, dict(self.headers.items()), body))
                    answers = receiver.script.get(self.path) or []
                    status = answers.pop(0) if answers else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[tuple[str, dict[str, str], bytes]]:
        with self.lock:
            return [r for r in self.requests if r[0] == path]

    def wait_for(self, path: str, count: int, timeout: float = 120) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.at(path)) >= count:
                return self.at(path)
            time.sleep(0.05)
        raise AssertionError(f"{path}: {len(self.at(path))} requests, not {count}")


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def backend(serve_cluster, tmp_path_factory):
    from videoserve.serve.deployments import deploy, undeploy

    settings = Settings(models=build_specs("tiny", gpu_count=0, tasks=("t2v",)),
                        output_path=tmp_path_factory.mktemp("hooks"), api_keys=(KEY_A, KEY_B),
                        webhook_allow_hosts=("127.0.0.1",), webhook_retry_initial_s=0.2)
    deploy(settings, APP, f"/{APP}", fail_on_marker)
    yield f"{serve_cluster.url}/{APP}"
    undeploy(APP)


def client(url: str, key: str):
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def wait_final(sdk, video_id: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        video = sdk.videos.retrieve(video_id)
        if video.status in ("completed", "failed", "cancelled"):
            return video
        time.sleep(0.1)
    raise AssertionError(f"{video_id} did not finish")


def test_completed_and_failed_jobs_are_signed_events_for_their_keys_endpoints(backend,
                                                                              receiver):
    alice, bob = client(backend, KEY_A), client(backend, KEY_B)
    mine = alice.webhooks.create(name="alice", url=receiver.url("/alice"),
                                 event_types=["video.completed", "video.failed"])
    assert mine.signing_secret.startswith("whsec_") and mine.id.startswith("we_")
    bob.webhooks.create(name="bob", url=receiver.url("/bob"),
                        event_types=["video.completed", "video.failed", "video.cancelled"])

    done = wait_final(alice, alice.videos.create(prompt="a webhook lighthouse", **SMALL).id)
    assert done.status == "completed"
    failed = wait_final(alice, alice.videos.create(prompt=f"boom {FAIL_MARKER}", **SMALL).id)
    assert failed.status == "failed"

    events = {}
    for _, headers, body in receiver.wait_for("/alice", 2):
        event = alice.webhooks.unwrap(body, headers, secret=mine.signing_secret)
        assert event.object == "event" and event.id.startswith("evt_")
        events[event.type] = event.data.id
    assert events == {"video.completed": done.id, "video.failed": failed.id}
    time.sleep(1.0)
    assert receiver.at("/bob") == []  # another key's jobs
    assert len(receiver.at("/alice")) == 2

    metrics = requests.get(backend + "/metrics", timeout=30,
                           headers={"Authorization": f"Bearer {KEY_A}"}).text
    assert ('videoserve_webhook_deliveries_total{event_type="video.completed",'
            'result="delivered"}') in metrics


def test_a_failed_delivery_is_retried_with_the_same_webhook_id(backend, receiver):
    sdk = client(backend, KEY_B)
    receiver.script["/flaky"] = [500, 500, 200]
    endpoint = sdk.webhooks.create(name="flaky", url=receiver.url("/flaky"),
                                   event_types=["video.completed"])
    video = wait_final(sdk, sdk.videos.create(prompt="retry me", **SMALL).id)
    deliveries = receiver.wait_for("/flaky", 3, timeout=60)
    time.sleep(1.0)
    deliveries = receiver.at("/flaky")
    assert len(deliveries) == 3
    assert len({headers["webhook-id"] for _, headers, _ in deliveries}) == 1
    event = sdk.webhooks.unwrap(deliveries[-1][2], deliveries[-1][1],
                                secret=endpoint.signing_secret)
    assert event.data.id == video.id
    sdk.webhooks.delete(endpoint.id)


def test_urls_outside_the_policy_are_refused_and_never_called(backend, receiver):
    from openai import UnprocessableEntityError

    sdk = client(backend, KEY_A)
    before = len(receiver.requests)
    for url in (f"http://localhost:{receiver.port}/x",  # not on the allow list
                f"https://127.0.0.2:{receiver.port}/x", "https://10.0.0.1/x",
                "https://[::1]/x", "https://169.254.169.254/latest/meta-data",
                "ftp://example.com/x"):
        with pytest.raises(UnprocessableEntityError) as refused:
            sdk.webhooks.create(name="bad", url=url, event_types=["video.completed"])
        assert "webhook URL refused" in str(refused.value), url
    with pytest.raises(UnprocessableEntityError):
        sdk.webhooks.create(name="bad", url=receiver.url("/x"), event_types=["batch.failed"])
    assert len(receiver.requests) == before
    assert all(e.name != "bad" for e in sdk.webhooks.list())


def test_manage_endpoints_through_the_sdk(backend, receiver):
    from openai import NotFoundError

    alice, bob = client(backend, KEY_A), client(backend, KEY_B)
    made = alice.webhooks.create(name="crud", url=receiver.url("/crud"),
                                 event_types=["video.failed"])
    got = alice.webhooks.retrieve(made.id)
    assert (got.name, got.url, got.event_types) == ("crud", made.url, ["video.failed"])
    assert got.signing_secret_hint and made.signing_secret not in got.model_dump_json()
    assert made.id in [e.id for e in alice.webhooks.list()]
    assert made.id not in [e.id for e in bob.webhooks.list()]
    with pytest.raises(NotFoundError):
        bob.webhooks.retrieve(made.id)
    with pytest.raises(NotFoundError):
        bob.webhooks.delete(made.id)

    updated = alice.webhooks.update(made.id, name="renamed",
                                    event_types=["video.completed", "video.cancelled"])
    assert updated.name == "renamed" and updated.event_types == ["video.completed",
                                                                 "video.cancelled"]
    rotated = alice.webhooks.rotate_secret(made.id)
    assert rotated.signing_secret != made.signing_secret

    receiver.script["/crud"] = [202]
    result = alice.webhooks.test(made.id, event_type="video.completed")
    assert (result.status_code, result.success, result.webhook_endpoint_id) == (202, True,
                                                                               made.id)
    _, headers, body = receiver.wait_for("/crud", 1)[-1]
    assert alice.webhooks.unwrap(body, headers, secret=rotated.signing_secret).type == \
        "video.completed"

    page = alice.webhooks.list(limit=1)
    assert len(page.data) == 1
    deleted = alice.webhooks.delete(made.id)
    assert deleted.deleted and deleted.id == made.id
    with pytest.raises(NotFoundError):
        alice.webhooks.retrieve(made.id)


def test_a_delivery_pending_across_a_backend_restart_arrives_after_it(serve_cluster, receiver,
                                                                       tmp_path):
    """The receiver fails while the backend runs; the backend stops with the delivery
    pending; a new backend on the same output folder delivers it, same webhook-id."""
    from videoserve.serve.deployments import deploy, undeploy

    name = "hooks-restart"
    settings = Settings(models=build_specs("tiny", gpu_count=0, tasks=("t2v",)),
                        output_path=tmp_path / "out", api_keys=(KEY_A,),
                        webhook_allow_hosts=("127.0.0.1",), webhook_retry_initial_s=0.2)
    with receiver.lock:
        receiver.script["/restart"] = [500] * 10_000  # down until the backend restarted
    deploy(settings, name, f"/{name}")
    url = f"{serve_cluster.url}/{name}"
    alice = client(url, KEY_A)
    hook = alice.webhooks.create(name="restart", url=receiver.url("/restart"),
                                 event_types=["video.completed"])
    video = wait_final(alice, alice.videos.create(prompt="across a restart", **SMALL).id)
    assert video.status == "completed"
    failed = receiver.wait_for("/restart", 1)
    undeploy(name)
    attempts_before = len(receiver.at("/restart"))
    with receiver.lock:
        receiver.script["/restart"] = []  # the receiver is back
    deploy(settings, name, f"/{name}")
    try:
        delivered = receiver.wait_for("/restart", attempts_before + 1, timeout=180)[-1]
    finally:
        undeploy(name)
    assert delivered[1]["webhook-id"] == failed[0][1]["webhook-id"]
    event = alice.webhooks.unwrap(delivered[2], delivered[1], secret=hook.signing_secret)
    assert event.type == "video.completed" and event.data.id == video.id
