"""Live previews of the denoising on both engines (tiny models; fastvideo through the CPU shim):
GET /v1/videos/{id}/preview is a decodable WebP that changes while the job denoises, says its
step, stays after the job, and is 409 for a job that asked for none or before the first step."""

from __future__ import annotations

import io
import time

import pytest
import requests
from PIL import Image

from tests.helpers import png_b64
from videoserve.core.config import Settings
from videoserve.serve.presets import build_specs

# Long enough on a CPU to watch several previews (at most two a second) of one job.
LONG_I2V = {"prompt": "the picture moves", "model_type": "i2v", "num_frames": 25, "height": 192,
            "width": 192, "num_inference_steps": 40, "seed": 3}


@pytest.fixture(scope="module", params=["diffusers", "fastvideo"])
def backend(request, serve_cluster, tmp_path_factory):
    from videoserve.serve.deployments import deploy, undeploy

    engine = request.param
    specs = build_specs("tiny", engine=engine, gpu_count=0, tasks=("i2v",))
    settings = Settings(models=specs, output_path=tmp_path_factory.mktemp(f"preview-{engine}"))
    name = f"preview-{engine}"
    deploy(settings, name, f"/{name}")
    yield f"{serve_cluster.url}/{name}"
    undeploy(name)


def submit(root: str, **body) -> dict:
    answer = requests.post(f"{root}/v1/videos", json={**LONG_I2V, "image": png_b64(), **body},
                           timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def watch(root: str, job_id: str, timeout: float = 240.0) -> tuple[list, dict]:
    """Poll the preview until the job ends: every distinct (step, image bytes) seen, in order,
    and the final job."""
    seen: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = requests.get(f"{root}/v1/videos/{job_id}/preview", timeout=30)
        if answer.status_code == 200:
            assert answer.headers["content-type"] == "image/webp"
            shot = (int(answer.headers["x-preview-step"]), answer.content)
            if not seen or shot != seen[-1]:
                seen.append(shot)
        else:
            assert answer.status_code == 409, answer.text
            assert answer.json()["error"]["code"] == "no_preview_yet"
        job = requests.get(f"{root}/v1/videos/{job_id}", timeout=30).json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return seen, job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end")


def test_previews_change_while_the_job_denoises(backend):
    # The first job may start before the engine's projection is fitted (a background fit at
    # load); a second job of the same replica has it from its first step.
    watch(backend, submit(backend)["id"])
    seen, job = watch(backend, submit(backend, seed=4)["id"])
    assert job["status"] == "completed"
    steps = [step for step, _ in seen]
    assert len(seen) >= 2 and steps == sorted(steps) and 1 <= steps[0] < 40
    assert len({image for _, image in seen}) >= 2  # the picture changes as it denoises
    for _, image in seen:
        picture = Image.open(io.BytesIO(image))
        assert picture.format == "WEBP" and picture.size == (48, 48)  # 2x the 24x24 latent
    final = requests.get(f"{backend}/v1/videos/{job['id']}/preview", timeout=30)
    assert final.status_code == 200 and final.headers["x-preview-step"] == "40"  # it stays
    assert requests.delete(f"{backend}/v1/videos/{job['id']}", timeout=30).status_code == 200
    assert requests.get(f"{backend}/v1/videos/{job['id']}/preview", timeout=30).status_code == 404


def test_a_job_without_previews_answers_409_throughout(backend):
    job = submit(backend, preview=False, seed=5, num_inference_steps=10)
    seen, final = watch(backend, job["id"])
    assert seen == [] and final["status"] == "completed"
    answer = requests.get(f"{backend}/v1/videos/{job['id']}/preview", timeout=30)
    assert answer.status_code == 409 and "makes no previews" in answer.json()["error"]["message"]
    unknown = requests.get(f"{backend}/v1/videos/video_{'0' * 32}/preview", timeout=30)
    assert unknown.status_code == 404
