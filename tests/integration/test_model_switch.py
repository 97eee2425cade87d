"""Switching models at runtime: PUT / DELETE /v1/models/{model_type} on a running backend."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from videoserve.core.config import Settings
from videoserve.core.media import probe_mp4
from videoserve.serve.presets import build_specs

APP = "switch"
# Long enough that a few jobs are still queued when the switch is asked for.
SLOW = {"model": "t2v", "prompt": "a slow one", "size": "64x64", "num_frames": 9,
        "num_inference_steps": 12}


@pytest.fixture(scope="module")
def switch_backend(serve_cluster, tmp_path_factory):
    from videoserve.serve.deployments import deploy, undeploy

    # No keys: model management is allowed for loopback clients, from the test's own folders.
    settings = Settings(models=build_specs("tiny", gpu_count=0, tasks=("t2v",)),
                        output_path=tmp_path_factory.mktemp("switch"),
                        allow_model_management=True, model_dir=tmp_path_factory.getbasetemp())
    deploy(settings, APP, f"/{APP}")
    yield serve_cluster.url + f"/{APP}"
    undeploy(APP)


@pytest.fixture(scope="module")
def other_t2v(tmp_path_factory):
    """A second tiny T2V build: the same shapes, its DiT from another seed."""
    from videoserve.devtools.tiny_models import build_model

    return build_model("t2v", tmp_path_factory.mktemp("seed1"), "tiny", seed=1)


class ReadyWatch:
    """Polls /ready in the background and keeps every status code seen."""

    def __init__(self, url: str):
        self.url, self.codes = url, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ReadyWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.codes.append(requests.get(self.url + "/ready", timeout=30).status_code)
            self._stop.wait(0.1)


def create(url: str, body: dict) -> dict:
    response = requests.post(url + "/v1/videos", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def job(url: str, job_id: str) -> dict:
    return requests.get(f"{url}/v1/videos/{job_id}", timeout=30).json()


def wait(condition, timeout: float = 180, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def t2v_model(url: str) -> dict:
    models = requests.get(url + "/v1/models", timeout=30).json()["data"]
    return next(m for m in models if m["task"] == "t2v")


def finished(url: str, ids: list[str]) -> list[dict]:
    return wait(lambda: (jobs := [job(url, i) for i in ids]) and all(
        j["status"] in ("completed", "failed", "cancelled") for j in jobs) and jobs,
        what="the jobs to finish")


def queued_prompt(url: str, prompt: str) -> bool:
    listed = requests.get(url + "/v1/videos?limit=20", timeout=30).json()["data"]
    return any(j["prompt"] == prompt and j["status"] == "queued" for j in listed)


def test_switch_while_jobs_are_queued(switch_backend, other_t2v):
    from videoserve.serve.generations import generator_apps

    url = switch_backend
    before = t2v_model(url)
    assert before["id"] == "builtin:tiny-wan-t2v" and before["state"] == "running", before
    with ReadyWatch(url) as ready:
        first = [create(url, SLOW)["id"] for _ in range(5)]
        wait(lambda: job(url, first[0])["status"] == "in_progress", what="the first job")
        answer = requests.put(url + "/v1/models/t2v", json={"model": str(other_t2v)}, timeout=30)
        assert answer.status_code == 202, answer.text
        assert answer.json()["switching_to"]["id"] == str(other_t2v), answer.json()
        # Jobs still queued when the switch was accepted wait for the new model.
        waiting = [i for i in first if job(url, i)["status"] == "queued"]
        after = [create(url, {**SLOW, "num_inference_steps": 2})["id"] for _ in range(2)]
        wait(lambda: t2v_model(url)["state"] == "running"
             and t2v_model(url)["id"] == str(other_t2v), what="the new model serving")
        jobs = finished(url, first + after)
    print(f"model switch: /ready polled {len(ready.codes)} times during it: "
          f"{sorted(set(ready.codes))}; {len(waiting)} of 5 jobs were queued at the switch")
    assert [j["status"] for j in jobs] == ["completed"] * 7, [(j["status"], j.get("error"))
                                                            for j in jobs]
    assert set(ready.codes) == {200}, ready.codes  # no downtime
    assert waiting, "every job had started before the switch; nothing was checked"
    by_id = {j["id"]: j for j in jobs}
    for job_id in waiting + after:
        assert by_id[job_id]["model"] == str(other_t2v), by_id[job_id]
    assert by_id[first[0]]["model"] == "builtin:tiny-wan-t2v"  # it ran on the old one
    now = t2v_model(url)
    assert now["generation"] > before["generation"] and now["last_switch"]["result"] == "serving"
    assert now["synthetic"] is True and "switching_to" not in now
    # The old generation's replicas go once its last job has ended.
    wait(lambda: len(generator_apps(APP)) == 1, 60, "the old generation to be deleted")
    video = requests.get(f"{url}/v1/videos/{after[-1]}/content", timeout=30)
    assert probe_mp4(video.content).frames == 9


def test_failed_switch_keeps_serving_then_unload_and_reload(switch_backend, tmp_path):
    url = switch_backend
    serving = t2v_model(url)["id"]
    with ReadyWatch(url) as ready:
        answer = requests.put(url + "/v1/models/t2v", json={"model": str(tmp_path / "missing")},
                              timeout=30)
        assert answer.status_code == 202, answer.text
        again = requests.put(url + "/v1/models/t2v", json={"replicas": 2}, timeout=30)
        assert again.status_code == 409 and again.json()["error"]["code"] == "switch_in_progress"
        meanwhile = create(url, {**SLOW, "num_inference_steps": 2})["id"]
        result = wait(lambda: t2v_model(url).get("last_switch"), 240, "the switch to fail")
    print(f"switch to a missing folder: {result}")
    assert "FileNotFoundError: model folder" in result["result"], result  # the reason itself
    assert result["result"].startswith("failed"), result
    assert t2v_model(url)["id"] == serving and t2v_model(url)["state"] == "running"
    assert set(ready.codes) == {200}, ready.codes
    assert finished(url, [meanwhile])[0]["model"] == serving

    jobs = [create(url, SLOW)["id"] for _ in range(4)]
    wait(lambda: job(url, jobs[0])["status"] == "in_progress", what="the first job")
    with ThreadPoolExecutor(1) as pool:
        synchronous = pool.submit(requests.post, url + "/generate_video", timeout=120, json={
            "prompt": "waits for its answer", "height": 64, "width": 64, "num_frames": 9})
        wait(lambda: queued_prompt(url, "waits for its answer"), 60, "the waiting request")
        answer = requests.delete(url + "/v1/models/t2v", timeout=30)
        assert answer.status_code == 202 and answer.json()["state"] == "unloaded", answer.text
        waited = synchronous.result()
    assert waited.status_code == 503, waited.text  # not a 500: nothing broke
    assert waited.json()["error"]["code"] == "model_unloaded"
    assert int(waited.headers["Retry-After"]) > 0
    ended = finished(url, jobs)
    assert ended[0]["status"] == "completed"  # running: finished on its model
    failed = [j for j in ended if j["status"] == "failed"]
    assert failed and all("unloaded" in j["error"]["message"] for j in failed), ended
    assert {j["error"]["code"] for j in failed} == {"model_unloaded"}, failed
    refused = requests.post(url + "/v1/videos", json=SLOW, timeout=30)
    assert refused.status_code == 404 and "unloaded" in refused.json()["error"]["message"]
    assert requests.get(url + "/ready", timeout=30).status_code == 503

    answer = requests.put(url + "/v1/models/t2v", json={"replicas": 1}, timeout=30)
    assert answer.status_code == 202, answer.text
    wait(lambda: requests.get(url + "/ready", timeout=30).status_code == 200, 120,
         "the model to be loaded again")
    again = finished(url, [create(url, {**SLOW, "num_inference_steps": 2})["id"]])[0]
    assert again["status"] == "completed" and again["model"] == serving, again


def test_model_changes_are_validated(switch_backend):
    url = switch_backend
    cases = [({}, 422), ({"replicas": 0}, 422), ({"replicas": True}, 422),
             ({"engine": "tensorrt"}, 422), ({"model": "  "}, 422), ({"color": "red"}, 422)]
    for body, status in cases:
        answer = requests.put(url + "/v1/models/t2v", json=body, timeout=30)
        assert answer.status_code == status, (body, answer.text)
        assert "error" in answer.json()
    assert requests.put(url + "/v1/models/i2v", json={"replicas": 1},
                        timeout=30).status_code == 404  # not started with an i2v model
    assert requests.put(url + "/v1/models/x2v", json={"replicas": 1},
                        timeout=30).status_code == 422


def test_paths_outside_model_dir_are_refused_alike_and_ready_stays_up(switch_backend):
    url = switch_backend
    before = t2v_model(url)
    # Files, a missing path, a folder without config.json, an escape by "..".
    names = ["/etc/shadow", "/etc/passwd", "/nonexistent/model", "/usr",
             "../../../../etc/hostname"]
    with ReadyWatch(url) as ready:
        answers = [requests.put(url + "/v1/models/t2v", json={"model": name}, timeout=30)
                   for name in names]
    assert [a.status_code for a in answers] == [403] * len(names), [a.text for a in answers]
    # The same answer whatever is (or is not) at the path.
    assert len({a.text for a in answers}) == 1, [a.text for a in answers]
    assert answers[0].json()["error"]["code"] == "model_not_allowed"
    assert set(ready.codes) == {200} and ready.codes, ready.codes
    after = t2v_model(url)
    assert (after["id"], after["generation"]) == (before["id"], before["generation"])
    assert after["state"] == "running" and "switching_to" not in after
