"""Stopping and starting the backend CLI (tiny models) with work in flight: SIGTERM drains,
SIGKILL of everything loses nothing; a restart on the same output folder finishes every job."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import requests

from tests.conftest import REPO, free_port
from videoserve.serve.launcher import Managed, wait_for_backend

SMALL = {"num_frames": 9, "height": 64, "width": 64, "num_inference_steps": 8}
LONG = {"num_frames": 9, "height": 256, "width": 256, "num_inference_steps": 30}


def start(output, port: int) -> tuple[Managed, str]:
    backend = Managed("backend", [sys.executable, str(REPO / "ray_serve_backend.py"),
                                  "--preset", "tiny", "--port", str(port), "--num_cpus", "2",
                                  "--output_path", str(output), "--drain_timeout", "4"])
    url = f"http://127.0.0.1:{port}"
    assert wait_for_backend(backend, url, 300, threading.Event()), "the backend did not start"
    return backend, url


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def all_complete(url: str, ids: list[str], timeout: float = 300) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [requests.get(f"{url}/v1/videos/{i}", timeout=10).json() for i in ids]
        if all(j["status"] in ("completed", "failed", "cancelled") for j in jobs):
            return jobs
        time.sleep(0.5)
    raise AssertionError(f"not finished: {[j['status'] for j in jobs]}")


def test_sigterm_answers_every_request_and_the_restart_runs_the_rest(tmp_path):
    port = free_port()
    backend, url = start(tmp_path, port)
    queued = [requests.post(url + "/v1/videos", json={"prompt": f"queued {i}", **LONG},
                            timeout=30).json()["id"] for i in range(3)]

    def sync(i: int) -> requests.Response:
        return requests.post(url + "/generate_video", json={"prompt": f"sync {i}", **SMALL},
                             timeout=120)

    processes = tree(backend.proc.pid)
    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(sync, i) for i in range(20)]
        time.sleep(1.0)  # all 20 are in flight
        backend.proc.send_signal(signal.SIGTERM)
        answers = [f.result() for f in futures]
    assert backend.proc.wait(timeout=120) == 0
    assert not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    ids = []
    for answer in answers:
        assert answer.status_code in (200, 503), answer.text
        if answer.status_code == 503:
            error = answer.json()["error"]
            assert error["code"] == "shutting_down" and answer.headers["retry-after"]
            ids.append(error["message"].split("job ")[1].split(" ")[0])
        else:
            ids.append(answer.json()["id"])
    print(f"SIGTERM with 20 requests in flight: "
          f"{sum(a.status_code == 200 for a in answers)} answered 200, "
          f"{sum(a.status_code == 503 for a in answers)} answered 503 naming their job")
    backend, url = start(tmp_path, port)
    try:
        jobs = all_complete(url, ids + queued)
        assert [j["status"] for j in jobs] == ["completed"] * len(jobs)
    finally:
        backend.stop()


def test_sigkill_of_everything_then_restart_completes_every_job(tmp_path):
    port = free_port()
    backend, url = start(tmp_path, port)
    ids = [requests.post(url + "/v1/videos", json={"prompt": f"job {i}", **LONG},
                         timeout=30).json()["id"] for i in range(4)]
    deadline = time.monotonic() + 60
    while requests.get(f"{url}/v1/videos/{ids[0]}", timeout=10).json()[
            "progress_detail"]["step"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    processes = tree(backend.proc.pid)  # Ray's own processes included
    os.killpg(backend.proc.pid, signal.SIGKILL)
    backend.proc.wait(timeout=30)
    # Ray's processes are tied to the backend's life and follow it within seconds.
    gone, alive = psutil.wait_procs(processes, timeout=60)
    assert not alive, alive
    backend, url = start(tmp_path, port)
    try:
        jobs = all_complete(url, ids)
        assert [j["status"] for j in jobs] == ["completed"] * 4
        assert jobs[0]["attempts"] == 2 and [j["attempts"] for j in jobs[1:]] == [1, 1, 1]
        print(f"after SIGKILL: attempts {[j['attempts'] for j in jobs]}")
    finally:
        backend.stop()
