"""The fastvideo engine, with real fastvideo 0.2.x, served by the Ray Serve app.

fastvideo has no CPU support, so these tests load the test-only platform shim in
tests/fastvideo_cpu_shim (set up by the serve_cluster fixture); on a GPU, tests/gpu runs the
same app without it.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import requests

from tests.helpers import fetch_video, png_b64
from tests.integration.faults import FAIL_MARKER, crash_fastvideo_worker
from videoserve.core.config import Settings
from videoserve.core.sampling import Progress, Result, SamplingParams, WorkItem
from videoserve.serve.presets import build_specs

pytestmark = pytest.mark.fastvideo

# An I2V job long enough to watch and cancel on a CPU: the tiny I2V model runs every requested
# step (the tiny T2V is a DMD model with a fixed 3-step schedule).
LONG_I2V = {"num_frames": 17, "height": 128, "width": 128, "num_inference_steps": 40}


@pytest.fixture(scope="module")
def fastvideo_backend(serve_cluster, tmp_path_factory):
    from videoserve.serve.deployments import deploy, generator_handle, undeploy

    specs = build_specs("tiny", engine="fastvideo", gpu_count=0)
    settings = Settings(models=specs, output_path=tmp_path_factory.mktemp("fv"))
    deploy(settings, "fv", "/fv", crash_fastvideo_worker)
    i2v = generator_handle("fv", "i2v")
    yield serve_cluster.url, i2v
    undeploy("fv")


def post(root: str, body: dict) -> requests.Response:
    return requests.post(root + "/fv/generate_video", json=body, timeout=300)


def info(handle) -> dict:
    return handle.info.remote().result()


def wait_for(root: str, job_id: str, until, timeout: float = 120.0, poll_s: float = 0.02):
    """Poll a job until ``until(job)``; returns every distinct job state seen, in order."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(f"{root}/fv/v1/videos/{job_id}", timeout=10).json()
        if not seen or job != seen[-1]:
            seen.append(job)
        if until(job):
            return seen
        time.sleep(poll_s)
    raise AssertionError(f"job {job_id} never reached the state: last {seen[-1:]}")


def test_fastvideo_t2v_and_i2v_over_http(fastvideo_backend):
    root, _ = fastvideo_backend
    models = requests.get(root + "/fv/v1/models", timeout=10).json()["data"]
    assert {m["engine"] for m in models} == {"fastvideo"}
    t2v = post(root, {"prompt": "a kite over a beach", "num_frames": 9, "height": 64,
                      "width": 64, "seed": 3})
    assert t2v.status_code == 200, t2v.text
    assert t2v.json()["engine"] == "fastvideo" and t2v.json()["model_type"] == "t2v"
    video = fetch_video(root, t2v.json())
    assert (video.frames, video.width, video.height, video.codec) == (9, 64, 64, "h264")
    assert video.pix_fmt == "yuv420p" and video.faststart
    i2v = post(root, {"prompt": "waves roll in", "image": png_b64(), "num_frames": 5,
                      "height": 48, "width": 64})
    assert i2v.status_code == 200, i2v.text
    video = fetch_video(root, i2v.json())
    assert (video.frames, video.width, video.height) == (5, 64, 48)


def test_replica_info_says_where_the_load_went(fastvideo_backend):
    _, i2v = fastvideo_backend
    details = info(i2v)
    breakdown = details["engine_load_breakdown"]
    # Every pipeline module fastvideo loaded is timed, plus the phases around them.
    assert {"module:transformer", "module:vae", "module:text_encoder",
            "module:image_encoder"} <= breakdown.keys(), breakdown
    assert {"import_s", "process_start_s", "pipeline_setup_s"} <= breakdown.keys()
    assert all(v >= 0 for v in breakdown.values()), breakdown
    # The parts add up to the engine's load (rounding aside); no warm-up in the tiny preset.
    assert abs(sum(breakdown.values()) - details["engine_load_s"]) < 0.1 * len(breakdown)
    assert "warmup_s" not in breakdown
    assert details["load_started_at"] <= time.time() - details["load_time"]


def test_i2v_with_guidance_and_an_empty_negative_prompt(fastvideo_backend):
    # Classifier-free guidance encodes the negative prompt; an empty one must stay "".
    root, _ = fastvideo_backend
    response = post(root, {"prompt": "a lake at dawn", "image": png_b64(), "num_frames": 5,
                           "height": 48, "width": 64, "guidance_scale": 3.0,
                           "negative_prompt": "", "num_inference_steps": 2})
    assert response.status_code == 200, response.text
    assert response.json()["negative_prompt"] == "" and response.json()["guidance_scale"] == 3.0
    assert fetch_video(root, response.json()).frames == 5


def test_every_step_and_stage_is_reported(fastvideo_backend):
    _, i2v = fastvideo_backend
    params = dict(prompt="a windmill turning", negative_prompt="", seed=9, guidance_scale=1.0,
                  num_frames=9, height=64, width=64, num_inference_steps=6, fps=8)
    from tests.helpers import png_bytes

    item = WorkItem(job_id="video_" + "ab" * 12, params=SamplingParams(**params),
                    image_png=png_bytes(64, 64))
    events = list(i2v.options(stream=True).run.remote(item))
    progress = [e for e in events if isinstance(e, Progress)]
    steps = [e.step for e in progress if e.stage == "denoising" and e.step > 0]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert {e.total_steps for e in progress if e.stage == "denoising"} == {6}
    stages = [e.stage for e in progress]
    first = [s for i, s in enumerate(stages) if s not in stages[:i]]
    assert first == ["encoding_prompt", "encoding_image", "denoising", "decoding",
                     "encoding_video"]
    assert isinstance(events[-1], Result) and events[-1].num_frames == 9


def test_job_progress_is_real(fastvideo_backend):
    root, _ = fastvideo_backend
    job = requests.post(root + "/fv/v1/videos", json={"prompt": "clouds", "image": png_b64(),
                                                      **LONG_I2V, "num_inference_steps": 12},
                        timeout=30).json()
    seen = wait_for(root, job["id"], lambda j: j["status"] == "completed")
    details = [j["progress_detail"] for j in seen]
    assert not any(d["estimated"] for d in details)
    steps = [d["step"] for d in details if d["stage"] == "denoising"]
    assert steps == sorted(steps) and len(set(steps) - {0, 12}) >= 2, details
    assert {d["total_steps"] for d in details if d["stage"] == "denoising"} == {12}
    assert seen[-1]["progress"] == 100


def test_running_job_is_cancelled_at_the_next_step_without_a_reload(fastvideo_backend):
    root, i2v = fastvideo_backend
    before = info(i2v)
    job = requests.post(root + "/fv/v1/videos", json={"prompt": "a long job", "image": png_b64(),
                                                      **LONG_I2V}, timeout=30).json()
    wait_for(root, job["id"], lambda j: j["progress_detail"]["step"] >= 2)
    cancelled = requests.post(f"{root}/fv/v1/videos/{job['id']}/cancel", timeout=30).json()
    if cancelled["status"] != "cancelled":
        cancelled = wait_for(root, job["id"], lambda j: j["status"] != "in_progress")[-1]
    assert cancelled["status"] == "cancelled", cancelled
    record = cancelled["cancellation"]
    assert record["stopped_in_stage"] == "denoising", record
    assert 2 <= record["stopped_at_step"] < LONG_I2V["num_inference_steps"]
    assert record["stopped_at_step"] - record["cancel_received_at_step"] <= 1, record
    after = info(i2v)
    # Same replica, same fastvideo process, no reload, nothing decoded or encoded for it.
    assert (after["pid"], after["engine_pid"], after["engine_loads"]) == (
        before["pid"], before["engine_pid"], before["engine_loads"])
    assert after["videos_encoded"] == before["videos_encoded"]
    start = time.monotonic()
    next_job = post(root, {"prompt": "right after", "image": png_b64(), "num_frames": 5,
                           "height": 48, "width": 64, "num_inference_steps": 2})
    assert next_job.status_code == 200, next_job.text
    assert next_job.json()["queue_time"] < 1.0 and time.monotonic() - start < 30
    assert info(i2v)["engine_loads"] == before["engine_loads"]


def test_bad_input_fails_the_job_and_the_pipeline_keeps_serving(fastvideo_backend):
    # The fault wrapper sends I2V without an image past the engine's own checks: fastvideo's
    # pipeline raises inside the child, which stays up with its model loaded.
    root, i2v = fastvideo_backend
    before = info(i2v)
    failed = post(root, {"prompt": f"crash {FAIL_MARKER}", "image": png_b64(), "num_frames": 5})
    assert failed.status_code == 500, failed.text
    message = failed.json()["error"]["message"]
    assert "fastvideo generation failed" in message and "reloaded" not in message
    after = post(root, {"prompt": "still serving", "image": png_b64(), "num_frames": 5})
    assert after.status_code == 200, after.text
    assert fetch_video(root, after.json()).frames == 5
    now = info(i2v)
    assert (now["pid"], now["engine_pid"], now["engine_loads"]) == (
        before["pid"], before["engine_pid"], before["engine_loads"])


def test_dead_fastvideo_process_fails_its_job_and_the_next_job_reloads(fastvideo_backend):
    root, i2v = fastvideo_backend
    before = info(i2v)
    job = requests.post(root + "/fv/v1/videos", json={"prompt": "doomed", "image": png_b64(),
                                                      **LONG_I2V}, timeout=30).json()
    wait_for(root, job["id"], lambda j: j["progress_detail"]["step"] >= 1)
    os.kill(before["engine_pid"], signal.SIGKILL)  # as a CUDA fault or the OOM killer would
    failed = wait_for(root, job["id"], lambda j: j["status"] != "in_progress")[-1]
    assert failed["status"] == "failed"
    assert "reloaded for the next job" in failed["error"]["message"]
    after = post(root, {"prompt": "after the crash", "image": png_b64(), "num_frames": 5})
    assert after.status_code == 200, after.text
    assert fetch_video(root, after.json()).frames == 5
    now = info(i2v)
    assert now["pid"] == before["pid"]  # the replica survived
    assert now["engine_loads"] == before["engine_loads"] + 1
    assert now["engine_pid"] != before["engine_pid"]
