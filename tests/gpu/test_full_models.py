"""Full-size random-weight FastWan2.1-T2V-1.3B (the real architecture; its videos are noise)
served on one CUDA GPU by the fastvideo engine (run: pytest -m gpu). The models are built by the
``full_models`` fixture in conftest.py.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from tests.helpers import fetch_video
from videoserve.core.config import Settings
from videoserve.engines.fastvideo.options import NO_OFFLOAD
from videoserve.serve.presets import build_specs

pytestmark = pytest.mark.gpu


def deploy_model(task: str, model: Path, name: str, tmp_path_factory, **options) -> str:
    import torch

    from videoserve.serve.deployments import deploy

    spec = build_specs("fastwan", gpu_count=torch.cuda.device_count(), tasks=(task,),
                       **{f"{task}_model": str(model)})[task]
    spec = replace(spec, synthetic=True,
                   engine_options={**spec.engine_options, **NO_OFFLOAD, **options})
    settings = Settings(models={task: spec}, output_path=tmp_path_factory.mktemp(name))
    start = time.perf_counter()
    deploy(settings, name, f"/{name}")
    print(f"{name}: deployed and loaded in {time.perf_counter() - start:.1f} s")
    return name


def follow(url: str, job_id: str, until, timeout: float = 900.0) -> list[tuple[float, dict]]:
    """Poll a job until ``until(job)``; (time, job) for every change seen."""
    seen: list[tuple[float, dict]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(f"{url}/v1/videos/{job_id}", timeout=30).json()
        if not seen or job["progress_detail"] != seen[-1][1]["progress_detail"] or (
                job["status"] != seen[-1][1]["status"]):
            seen.append((time.time(), job))
        if until(job):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"job {job_id}: timed out; last state {seen[-1][1]}")


@pytest.fixture(scope="module")
def fastwan(gpu_cluster, full_models, tmp_path_factory):
    from videoserve.serve.deployments import undeploy

    name = deploy_model("t2v", full_models["t2v"], "fastwan", tmp_path_factory)
    yield f"{gpu_cluster.url}/{name}"
    undeploy(name)


def test_full_size_fastwan_480p(fastwan):
    body = {"prompt": "a red fox running through snow", "height": 480, "width": 832,
            "num_frames": 81, "num_inference_steps": 3, "negative_prompt": ""}
    seconds = []
    for seed in (1, 2):
        start = time.perf_counter()
        response = requests.post(fastwan + "/generate_video", json={**body, "seed": seed},
                                 timeout=600)
        seconds.append(time.perf_counter() - start)
        assert response.status_code == 200, response.text
    # 480x832 is one of the preset's warm-up sizes: the first request at it pays for no
    # compile (one would take a minute or more, against seconds for the video).
    assert seconds[0] < 2 * seconds[1], seconds
    result = response.json()
    video = fetch_video(fastwan.removesuffix("/fastwan"), result)  # video_url has the prefix
    assert (video.frames, video.width, video.height) == (81, 832, 480)
    assert video.codec == "h264" and video.pix_fmt == "yuv420p" and video.faststart
    print(f"FastWan 480x832x81, 3 steps, warm: inference {result['inference_time']} s, "
          f"MP4 tail {result['encoding_time']} s, total {result['total_time']} s; "
          f"POST /generate_video answered in {seconds[0]:.2f} s (first) and "
          f"{seconds[1]:.2f} s")


def test_full_size_fastwan_cancel(fastwan):
    body = {"prompt": "cancel me", "height": 480, "width": 832, "num_frames": 81}
    job = requests.post(fastwan + "/v1/videos", json=body, timeout=60).json()
    follow(fastwan, job["id"], lambda j: j["progress_detail"]["step"] >= 1)
    requests.post(f"{fastwan}/v1/videos/{job['id']}/cancel", timeout=60)
    final = follow(fastwan, job["id"], lambda j: j["status"] != "in_progress")[-1][1]
    record = final["cancellation"]
    assert final["status"] == "cancelled" and record["stopped_in_stage"] == "denoising", final
    assert record["stopped_at_step"] - record["cancel_received_at_step"] <= 1, record
    print(f"FastWan cancelled: {record}")
