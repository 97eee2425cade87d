"""API keys on the real Ray Serve app (tiny T2V): 401 without a valid key, jobs private to the
key that created them, over HTTP and through the official openai SDK."""

from __future__ import annotations

import time

import pytest
import requests

from videoserve.core.config import Settings
from videoserve.serve.presets import build_specs

APP = "keyed"
KEY_A, KEY_B = "key-alice-0123456789", "key-bob-9876543210"
ADMIN = "key-admin-5555555555"
SMALL = {"num_frames": 5, "height": 16, "width": 16, "num_inference_steps": 1}


@pytest.fixture(scope="module")
def keyed(serve_cluster, tmp_path_factory):
    from videoserve.serve.deployments import deploy, undeploy

    settings = Settings(models=build_specs("tiny", gpu_count=0, tasks=("t2v",)),
                        output_path=tmp_path_factory.mktemp("keyed"), api_keys=(KEY_A, KEY_B),
                        admin_api_keys=(ADMIN,))
    deploy(settings, APP, f"/{APP}")
    yield f"{serve_cluster.url}/{APP}", settings
    undeploy(APP)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_done(url: str, job_id: str, key: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = requests.get(f"{url}/v1/videos/{job_id}", headers=auth(key), timeout=30).json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(job)


def test_without_a_valid_key_every_route_but_health_and_ready_is_401(keyed):
    url, _ = keyed
    assert requests.get(url + "/health", timeout=30).status_code == 200
    assert requests.get(url + "/ready", timeout=30).status_code in (200, 503)
    metrics = requests.get(url + "/metrics", headers=auth(KEY_B), timeout=30)
    assert metrics.status_code == 200 and "videoserve_jobs_submitted_total" in metrics.text
    for method, path in (("GET", "/v1/videos"), ("POST", "/v1/videos"), ("GET", "/v1/models"),
                         ("GET", "/metrics"), ("GET", "/v1/placement"),
                         ("POST", "/generate_video"), ("GET", "/docs"),
                         ("GET", "/openapi.json"), ("GET", f"/videos/video_{'0' * 24}/video.mp4"),
                         ("DELETE", f"/v1/videos/video_{'0' * 24}")):
        for headers in ({}, auth("wrong"), {"Authorization": KEY_A},
                        {"Authorization": f"Basic {KEY_A}"}, auth("")):
            response = requests.request(method, url + path, headers=headers, timeout=30,
                                        json={"prompt": "x"} if method == "POST" else None)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["code"] == "unauthorized"


def test_jobs_belong_to_their_key(keyed):
    url, settings = keyed
    body = {"prompt": "alice's fox", "seed": 5, **SMALL}
    job_a = requests.post(url + "/v1/videos", json=body, headers={
        **auth(KEY_A), "Idempotency-Key": "shared-key"}, timeout=30).json()
    assert wait_done(url, job_a["id"], KEY_A)["status"] == "completed"
    for path in (f"/v1/videos/{job_a['id']}", f"/v1/videos/{job_a['id']}/content",
                 f"/videos/{job_a['id']}/video.mp4"):
        assert requests.get(url + path, headers=auth(KEY_A), timeout=30).status_code == 200
        other = requests.get(url + path, headers=auth(KEY_B), timeout=30)
        assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    for method in ("POST", "DELETE"):
        path = f"/v1/videos/{job_a['id']}" + ("/cancel" if method == "POST" else "")
        assert requests.request(method, url + path, headers=auth(KEY_B),
                                timeout=30).status_code == 404
    listed_b = requests.get(url + "/v1/videos", headers=auth(KEY_B), timeout=30).json()
    assert job_a["id"] not in [j["id"] for j in listed_b["data"]]
    # Paging from another key's job: the answer for an id that does not exist.
    after = requests.get(url + f"/v1/videos?after={job_a['id']}&order=asc", headers=auth(KEY_B),
                         timeout=30)
    assert after.status_code == 400 and after.json()["error"]["code"] == "invalid_cursor"
    listed_a = requests.get(url + "/v1/videos", headers=auth(KEY_A), timeout=30).json()
    assert job_a["id"] in [j["id"] for j in listed_a["data"]]
    # Neither the result cache nor an Idempotency-Key crosses keys.
    job_b = requests.post(url + "/v1/videos", json=body, headers={
        **auth(KEY_B), "Idempotency-Key": "shared-key"}, timeout=30).json()
    assert job_b["id"] != job_a["id"] and job_b["cached"] is False
    sync_b = requests.post(url + "/generate_video", json=body, headers=auth(KEY_B), timeout=120)
    assert sync_b.status_code == 200 and sync_b.json()["id"] != job_a["id"]
    sync_a = requests.post(url + "/generate_video", json=body, headers=auth(KEY_A), timeout=120)
    assert sync_a.json()["id"] == job_a["id"] and sync_a.json()["cached"] is True
    # The job records a hash of its key, never the key.
    stored = (settings.output_path / "jobs.sqlite3").read_bytes()
    assert KEY_A.encode() not in stored and KEY_B.encode() not in stored


def test_openai_sdk_with_two_keys(keyed):
    from openai import AuthenticationError, NotFoundError, OpenAI

    url, _ = keyed
    alice = OpenAI(base_url=url + "/v1", api_key=KEY_A, max_retries=0)
    bob = OpenAI(base_url=url + "/v1", api_key=KEY_B, max_retries=0)
    video = alice.videos.create_and_poll(model="t2v", prompt="a private lighthouse",
                                         size="16x16", seconds="1", poll_interval_ms=100)
    assert video.status == "completed", video
    assert alice.videos.retrieve(video.id).id == video.id
    assert len(alice.videos.download_content(video.id).read()) > 0
    for call in (bob.videos.retrieve, bob.videos.download_content, bob.videos.delete):
        with pytest.raises(NotFoundError):
            call(video.id)
    assert video.id not in [v.id for v in bob.videos.list(limit=50)]
    assert video.id in [v.id for v in alice.videos.list(limit=50)]
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=url + "/v1", api_key="not-a-key", max_retries=0).videos.list()
    assert alice.videos.delete(video.id).deleted is True
    print(f"openai SDK: key A created and downloaded {video.id}; key B got 404 for retrieve, "
          "download and delete and does not list it; a wrong key got 401")


def test_only_admin_keys_manage_models(keyed):
    url, _ = keyed
    for method in ("PUT", "DELETE"):
        for path in ("/v1/models/t2v", "/v1/models/i2v"):
            answer = requests.request(method, url + path, headers=auth(KEY_A), timeout=30,
                                      json={"replicas": 1} if method == "PUT" else None)
            assert answer.status_code == 403, (method, path, answer.text)
            assert answer.json()["error"]["code"] == "admin_key_required"
    # The same model and replicas: nothing to change, but the admin key is let through.
    answer = requests.put(url + "/v1/models/t2v", json={"replicas": 1}, headers=auth(ADMIN),
                          timeout=30)
    assert answer.status_code == 202 and answer.json()["state"] == "running", answer.text
    created = requests.post(url + "/v1/videos", json={"prompt": "by the admin", **SMALL},
                            headers=auth(ADMIN), timeout=30)
    assert created.status_code == 200, created.text
    assert wait_done(url, created.json()["id"], ADMIN)["status"] == "completed"
    assert requests.get(f"{url}/v1/videos/{created.json()['id']}", headers=auth(KEY_A),
                        timeout=30).status_code == 404  # the admin's jobs are its own too
