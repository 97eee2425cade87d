"""The asynchronous video jobs API on the real Ray Serve app (CPU, tiny models)."""

from __future__ import annotations

import io
import time

import pytest
import requests

from tests.helpers import png_bytes
from videoserve.core.config import Settings
from videoserve.core.media import probe_mp4
from videoserve.serve.presets import build_specs

APP = "jobs"
# Denoising long enough to be caught mid-way (each step is short on the tiny model).
LONG = {"height": 256, "width": 256, "num_frames": 33, "num_inference_steps": 50}


@pytest.fixture(scope="module")
def jobs_backend(serve_cluster, tmp_path_factory):
    from videoserve.serve.deployments import deploy, undeploy

    settings = Settings(models=build_specs("tiny", gpu_count=0),
                        output_path=tmp_path_factory.mktemp("jobs"))
    deploy(settings, APP, "/" + APP)
    yield serve_cluster.url + "/" + APP, settings
    undeploy(APP)


def generations(task: str = "t2v") -> int:
    from videoserve.serve.deployments import generator_handle

    handle = generator_handle(APP, task)
    return handle.info.remote().result(timeout_s=120)["generations"]


def create(url: str, body: dict, **kwargs) -> dict:
    response = requests.post(url + "/v1/videos", json=body, timeout=60, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def get(url: str, job_id: str) -> dict:
    response = requests.get(f"{url}/v1/videos/{job_id}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def poll_until(url: str, job_id: str, done, timeout: float = 300) -> list[dict]:
    """Every state seen until ``done(state)``; polling is how clients watch progress."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.append(get(url, job_id))
        if done(seen[-1]):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"{job_id} stuck at {seen[-1]['status']} {seen[-1]['progress']}%")


def finished(state: dict) -> bool:
    return state["status"] in ("completed", "failed", "cancelled")


def test_openai_client_t2v_and_i2v(jobs_backend):
    from openai import NotFoundError, OpenAI

    url, _ = jobs_backend
    client = OpenAI(base_url=url + "/v1", api_key="not-needed")
    t2v = client.videos.create_and_poll(model="t2v", prompt="a lighthouse at dusk",
                                        size="64x48", seconds="1", poll_interval_ms=100)
    assert t2v.status == "completed" and t2v.progress == 100, t2v
    video = probe_mp4(client.videos.download_content(t2v.id).read())
    assert (video.frames, video.width, video.height) == (9, 64, 48)  # 1 s at 8 fps -> 4k+1
    i2v = client.videos.create_and_poll(
        model="i2v", prompt="the image comes alive", size="48x32", seconds="1",
        input_reference=("input.png", io.BytesIO(png_bytes()), "image/png"),
        poll_interval_ms=100)
    assert i2v.status == "completed", i2v
    assert i2v.model == "builtin:tiny-wan-i2v"
    video = probe_mp4(client.videos.download_content(i2v.id).read())
    assert (video.frames, video.width, video.height) == (9, 48, 32)
    listed = [v.id for v in client.videos.list(limit=10)]
    assert listed[:2] == [i2v.id, t2v.id]
    deleted = client.videos.delete(t2v.id)
    assert deleted.id == t2v.id and deleted.deleted is True
    with pytest.raises(NotFoundError):
        client.videos.retrieve(t2v.id)


def test_progress_is_monotonic_and_reaches_total_steps(jobs_backend):
    url, _ = jobs_backend
    job = create(url, {"prompt": "progress", "height": 128, "width": 128, "num_frames": 17,
                       "num_inference_steps": 40})
    states = poll_until(url, job["id"], finished)
    steps = [s["progress_detail"]["step"] for s in states]
    percents = [s["progress"] for s in states]
    assert steps == sorted(steps) and percents == sorted(percents)
    assert len(set(steps)) > 2, steps  # intermediate progress was visible
    assert states[-1]["status"] == "completed" and states[-1]["progress"] == 100
    assert states[-1]["progress_detail"]["step"] == states[-1]["progress_detail"]["total_steps"]


def test_cancel_queued_and_running_jobs(jobs_backend):
    url, _ = jobs_backend
    before = generations()
    running = create(url, {"prompt": "long one", **LONG})
    poll_until(url, running["id"], lambda s: s["status"] == "in_progress")
    queued = create(url, {"prompt": "waiting", "num_frames": 5})
    assert queued["status"] == "queued"
    assert queued["progress_detail"]["queue_position"] == 0
    start = time.monotonic()
    response = requests.delete(f"{url}/v1/videos/{queued['id']}", timeout=30)
    assert time.monotonic() - start <= 1.0
    assert response.json()["status"] == "cancelled"

    poll_until(url, running["id"], lambda s: s["progress_detail"]["step"] >= 3)
    cancelled = requests.delete(f"{url}/v1/videos/{running['id']}", timeout=30).json()
    assert cancelled["status"] == "cancelled", cancelled
    info = cancelled["video"]["cancellation"]
    assert info["stopped_at_step"] - info["cancel_received_at_step"] <= 1, info
    assert info["stopped_at_step"] < LONG["num_inference_steps"]
    assert requests.get(f"{url}/v1/videos/{running['id']}/content", timeout=30).status_code == 409
    # The queued job never ran: only the long one reached the engine.
    assert get(url, queued["id"])["status"] == "cancelled"
    assert generations() == before + 1


def test_idempotent_retry_creates_one_job(jobs_backend):
    url, _ = jobs_backend
    before = generations()
    headers = {"Idempotency-Key": "retry-me-123"}
    first = create(url, {"prompt": "once", "num_frames": 5}, headers=headers)
    second = create(url, {"prompt": "once", "num_frames": 5}, headers=headers)
    assert first["id"] == second["id"]
    poll_until(url, first["id"], finished)
    assert generations() == before + 1


def test_identical_request_with_explicit_seed_is_served_from_cache(jobs_backend):
    url, _ = jobs_backend
    body = {"prompt": "cache me", "num_frames": 5, "seed": 77}
    first = create(url, body)
    poll_until(url, first["id"], finished)
    before = generations()
    again = create(url, body)
    assert again["id"] == first["id"] and again["cached"] is True
    assert again["status"] == "completed"
    sync = requests.post(url + "/generate_video", json=body, timeout=60).json()
    assert sync["cached"] is True and sync["id"] == first["id"]
    assert generations() == before
    other_seed = create(url, {**body, "seed": 78})
    assert other_seed["id"] != first["id"] and other_seed["cached"] is False


def test_batch_of_three(jobs_backend):
    url, _ = jobs_backend
    bodies = [{"prompt": f"batch {i}", "num_frames": 5} for i in range(3)]
    response = requests.post(url + "/v1/videos/batch", json={"requests": bodies}, timeout=60)
    assert response.status_code == 200, response.text
    ids = response.json()["ids"]
    assert len(ids) == 3 and len(set(ids)) == 3
    for job_id, body in zip(ids, bodies, strict=True):
        state = poll_until(url, job_id, finished)[-1]
        assert state["status"] == "completed" and state["prompt"] == body["prompt"]
    bad = [{"prompt": "ok"}, {"prompt": "bad", "num_frames": 6}]
    response = requests.post(url + "/v1/videos/batch", json={"requests": bad}, timeout=60)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "requests.1.num_frames"


def test_content_route_honours_range_and_states(jobs_backend):
    url, _ = jobs_backend
    job = create(url, {"prompt": "range", "num_frames": 9})
    poll_until(url, job["id"], finished)
    content = f"{url}/v1/videos/{job['id']}/content"
    full = requests.get(content, timeout=30)
    assert full.status_code == 200 and full.headers["content-type"] == "video/mp4"
    part = requests.get(content, headers={"Range": "bytes=10-19"}, timeout=30)
    assert part.status_code == 206 and part.content == full.content[10:20]
    assert requests.get(f"{url}/v1/videos/video_{'a' * 24}/content", timeout=30).status_code == 404
    page = requests.get(url + "/v1/videos?limit=2&order=desc", timeout=30).json()
    assert page["object"] == "list" and len(page["data"]) == 2 and page["has_more"] is True
    after = requests.get(f"{url}/v1/videos?limit=2&after={page['last_id']}", timeout=30).json()
    assert not {v["id"] for v in after["data"]} & {v["id"] for v in page["data"]}


def test_jobs_and_videos_survive_a_restart(serve_cluster, tmp_path):
    from videoserve.serve.deployments import deploy, undeploy

    settings = Settings(models=build_specs("tiny", gpu_count=0, tasks=("t2v",)),
                        output_path=tmp_path)
    url = serve_cluster.url + "/restart"
    deploy(settings, "restart", "/restart")
    job = create(url, {"prompt": "remember me", "num_frames": 5, "seed": 3})
    poll_until(url, job["id"], finished)
    video = requests.get(f"{url}/v1/videos/{job['id']}/content", timeout=30).content
    undeploy("restart")
    deploy(settings, "restart", "/restart")
    try:
        state = get(url, job["id"])
        assert state["status"] == "completed" and state["seed"] == 3
        assert state["prompt"] == "remember me"
        again = requests.get(f"{url}/v1/videos/{job['id']}/content", timeout=30)
        assert again.status_code == 200 and again.content == video
    finally:
        undeploy("restart")


def test_python_client_submit_wait_cancel_list_content(jobs_backend):
    from videoserve.client import BackendError, VideoClient

    url, _ = jobs_backend
    client = VideoClient(url)
    seen: list[int] = []
    job = client.submit("client test", num_frames=9, height=64, width=96,
                        num_inference_steps=20)
    final = client.wait(job["id"], on_progress=lambda j: seen.append(j["progress"]), poll_s=0.05)
    assert final["status"] == "completed" and seen[-1] == 100 and seen == sorted(seen)
    info = probe_mp4(client.content(job["id"]))
    assert (info.frames, info.width, info.height) == (9, 96, 64)
    assert job["id"] in [j["id"] for j in client.list(limit=5)["data"]]
    long_job = client.submit("client cancel", **LONG)
    poll_until(url, long_job["id"], lambda s: s["progress_detail"]["step"] >= 2)
    answer = client.cancel(long_job["id"])  # at once: stopping takes the engine's next step
    assert answer["status"] in ("in_progress", "cancelled") and answer["cancellation"]
    assert client.wait(long_job["id"], poll_s=0.05)["status"] == "cancelled"
    assert client.cancel(job["id"])["status"] == "completed"  # finished jobs are left alone
    client.delete(job["id"])
    with pytest.raises(BackendError) as info_:
        client.job(job["id"])
    assert info_.value.status == 404
