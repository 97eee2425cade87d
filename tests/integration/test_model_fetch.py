"""The backend CLI serves a Hub model from the Hugging Face cache with HF_HUB_OFFLINE=1: the tiny
T2V model laid out as huggingface_hub caches a download of "some-org/tiny-t2v" (real process,
CPU, nothing downloaded)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import requests

from tests.conftest import REPO, free_port
from tests.helpers import hub_cache_layout

REPO_ID = "some-org/tiny-t2v"


def test_the_backend_serves_a_cached_hub_model_offline(tmp_path, tiny_models):
    hf_home = tmp_path / "hf"
    snapshot = hub_cache_layout(hf_home / "hub", REPO_ID, tiny_models["t2v"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    log_path = tmp_path / "backend.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([
            sys.executable, str(REPO / "ray_serve_backend.py"), "--preset", "tiny",
            "--engine", "diffusers", "--t2v_model_path", REPO_ID, "--tasks", "t2v",
            "--num_cpus", "2", "--port", str(port), "--output_path", str(tmp_path / "out"),
            "--drain_timeout", "2"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"the backend exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"not ready:\n{log_path.read_text()}"
            try:
                if requests.get(f"{url}/ready", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        # Resolved in the backend, before the replicas: they loaded the snapshot folder.
        assert f"t2v model {REPO_ID}: replicas load it from {snapshot}" in log_path.read_text()
        models = requests.get(f"{url}/v1/models", timeout=10).json()["data"]
        # The Hub id is the name; the folder's SYNTHETIC.txt makes it a random-weight model.
        assert [(m["id"], m["task"], m["synthetic"]) for m in models] == [(REPO_ID, "t2v", True)]
        assert str(snapshot) not in str(models)  # the server's folders stay private
        video = requests.post(f"{url}/generate_video", timeout=300, json={
            "prompt": "a cat", "num_frames": 5, "height": 64, "width": 64,
            "num_inference_steps": 1}).json()
        assert video["status"] == "completed" and video["model"] == REPO_ID, video
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever Ray left behind in the group
        except ProcessLookupError:
            pass
        proc.wait()
        print(log_path.read_text()[-5000:])
