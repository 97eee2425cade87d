"""Watching a job on the real Ray Serve app (CPU, tiny models): the event stream, a cancel that
answers at once, and the ingress's log (job changes at INFO, polls not)."""

from __future__ import annotations

import glob
import json
import os
import time

import pytest
import requests

from tests.integration.test_jobs_api import LONG, create, get, poll_until
from videoserve.core.config import Settings
from videoserve.serve.presets import build_specs

APP = "events"


@pytest.fixture(scope="module")
def events_backend(serve_cluster, tmp_path_factory):
    from videoserve.serve.deployments import deploy, undeploy

    settings = Settings(models=build_specs("tiny", gpu_count=0),
                        output_path=tmp_path_factory.mktemp("events"))
    deploy(settings, APP, "/" + APP)
    yield serve_cluster.url + "/" + APP
    undeploy(APP)


def read_events(url: str, job_id: str, headers: dict | None = None,
                timeout: float = 300) -> list[dict]:
    """Every event of the stream until it ends (comments as {"comment": ...})."""
    events: list[dict] = []
    with requests.get(f"{url}/v1/videos/{job_id}/events", headers=headers, stream=True,
                      timeout=timeout) as response:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith(":"):
                events.append({"comment": line[1:].strip()})
            elif line:
                key, _, value = line.partition(": ")
                fields[key] = value
            elif fields:
                events.append({"id": int(fields["id"]), "event": fields["event"],
                               "data": json.loads(fields["data"])})
                fields = {}
    return events


def test_events_stream_progress_then_the_final_job(events_backend):
    url = events_backend
    job = create(url, {"prompt": "watched", "num_frames": 9, "height": 64, "width": 96,
                       "num_inference_steps": 20})
    events = read_events(url, job["id"])
    names = [e["event"] for e in events if "event" in e]
    assert names[-1] == "completed" and set(names[:-1]) == {"progress"}, names
    progress = [e["data"] for e in events if e.get("event") == "progress"]
    assert set(progress[0]) == {"step", "total_steps", "stage", "queue_position", "eta_s",
                                "preview_step"}
    steps = [p["step"] for p in progress]
    # Every step, in order (a client too slow to keep up would get the newest state instead).
    assert steps == sorted(steps) and sorted(set(steps) - {0}) == list(range(1, 21)), steps
    ids = [e["id"] for e in events if "id" in e]
    assert ids == sorted(set(ids))
    final = events[-1]
    assert final["data"] == get(url, job["id"])  # the job object, as GET answers it
    # A reconnect after the final event gets the final event, at once.
    start = time.monotonic()
    again = read_events(url, job["id"], {"Last-Event-ID": str(final["id"])}, timeout=30)
    assert time.monotonic() - start < 5 and again == [final]
    assert requests.get(f"{url}/v1/videos/video_{'0' * 24}/events", timeout=30).status_code == 404


def test_cancel_answers_at_once_and_the_stream_ends_cancelled(events_backend):
    url = events_backend
    job = create(url, {"prompt": "cancel me", **LONG})
    poll_until(url, job["id"], lambda s: s["progress_detail"]["step"] >= 2)
    start = time.monotonic()
    response = requests.post(f"{url}/v1/videos/{job['id']}/cancel", timeout=30)
    took = time.monotonic() - start
    answer = response.json()
    assert response.status_code == 200 and took <= 0.2, (took, answer)
    assert answer["cancellation"]["requested_at"] is not None
    assert answer["status"] in ("in_progress", "cancelled"), answer
    events = read_events(url, job["id"], timeout=120)
    assert events[-1]["event"] == "cancelled", events[-1]
    final = events[-1]["data"]
    assert final["status"] == "cancelled" and final["cancellation"]["stopped_at_step"] < 50


def ingress_log_lines() -> list[str]:
    import ray

    logs = ray._private.worker._global_node.get_logs_dir_path()
    lines: list[str] = []
    for path in glob.glob(os.path.join(logs, "serve", f"replica_{APP}_Ingress_*.log")):
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines += handle.read().splitlines()
    return lines


def test_job_changes_are_logged_at_info_and_polls_are_not(events_backend):
    url = events_backend
    job = create(url, {"prompt": "logged", "num_frames": 5, "height": 32, "width": 32,
                       "num_inference_steps": 2})
    poll_until(url, job["id"], lambda s: s["status"] == "completed")
    for _ in range(3):
        get(url, job["id"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = ingress_log_lines()
        if any(f"job {job['id']} finished: completed" in line for line in lines):
            break
        time.sleep(0.2)
    info = [line for line in lines if line.startswith("INFO")]
    assert any(f"job {job['id']} queued" in line for line in info), info[-20:]
    assert any(f"job {job['id']} started" in line for line in info), info[-20:]
    assert any(f"job {job['id']} finished: completed" in line for line in info), info[-20:]
    assert any("POST /" in line and "/v1/videos " in line for line in info), info[-20:]
    polls = [line for line in info if "GET /" in line and "/v1/videos/{job_id} " in line]
    assert polls == []
    assert not [line for line in info if "CALL start_status" in line]
