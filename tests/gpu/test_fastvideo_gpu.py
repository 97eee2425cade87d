"""The fastvideo engine on a CUDA GPU, served by the same Ray Serve app (run: pytest -m gpu)."""

from __future__ import annotations

import pytest
import requests

from tests.helpers import fetch_video, png_b64, png_bytes
from videoserve.core.config import Settings
from videoserve.serve.presets import build_specs

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_backend(gpu_cluster, tmp_path_factory):
    import torch

    from videoserve.serve.deployments import deploy, undeploy

    specs = build_specs("tiny", engine="fastvideo", gpu_count=torch.cuda.device_count())
    assert all(spec.num_gpus > 0 for spec in specs.values())
    settings = Settings(models=specs, output_path=tmp_path_factory.mktemp("gpu"))
    deploy(settings, "gpu", "/")
    yield gpu_cluster.url
    undeploy("gpu")


def test_fastvideo_on_gpu_t2v_and_i2v(gpu_backend):
    url = gpu_backend
    ready = requests.get(url + "/ready", timeout=30)
    assert ready.status_code == 200, ready.text
    models = requests.get(url + "/v1/models", timeout=10).json()["data"]
    assert {(m["engine"], m["device"]) for m in models} == {("fastvideo", "cuda")}
    cases = [
        ("t2v", {"prompt": "a paper boat on a river", "num_frames": 17, "height": 128,
                 "width": 160, "seed": 5}),
        ("i2v", {"prompt": "the picture starts to move", "image": png_b64(320, 240),
                 "num_frames": 9, "height": 96, "width": 128, "seed": 6}),
    ]
    for task, body in cases:
        response = requests.post(url + "/generate_video", json=body, timeout=600)
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["model_type"] == task and result["engine"] == "fastvideo"
        info = fetch_video(url, result)
        print(f"{task}: {info.frames} frames {info.width}x{info.height} {info.codec} "
              f"{info.pix_fmt} faststart={info.faststart} inference {result['inference_time']}s "
              f"total {result['total_time']}s")
        assert (info.frames, info.width, info.height) == (
            body["num_frames"], body["width"], body["height"])
        assert info.codec == "h264" and info.pix_fmt == "yuv420p" and info.faststart


def test_fastvideo_jobs_report_real_progress_and_cancel_on_gpu(gpu_backend):
    from videoserve.client import VideoClient

    client = VideoClient(gpu_backend)
    body = {"num_frames": 33, "height": 256, "width": 256, "num_inference_steps": 8,
            "image": png_bytes(320, 240), "model_type": "i2v"}
    seen: list[dict] = []
    job = client.submit("a lantern festival at night", **body)
    final = client.wait(job["id"], on_progress=seen.append, poll_s=0.01)
    assert final["status"] == "completed" and final["progress"] == 100
    assert not any(s["progress_detail"]["estimated"] for s in seen)
    steps = [s["progress_detail"]["step"] for s in seen
             if s["progress_detail"]["stage"] == "denoising"]
    # Steps take milliseconds here; the poll sees some of them, in order, and the last one.
    assert steps == sorted(steps) and len(set(steps) - {0}) >= 2, steps
    assert final["progress_detail"]["step"] == final["progress_detail"]["total_steps"] == 8
    print(f"fastvideo job steps seen: {sorted(set(steps))}; "
          f"stages: {list(dict.fromkeys(s['progress_detail']['stage'] for s in seen))}")
    long = client.submit("cancel me", **{**body, "num_inference_steps": 50})
    client.wait(long["id"], until=lambda j: j["progress_detail"]["step"] >= 3, poll_s=0.01)
    client.cancel(long["id"])
    stopped = client.wait(long["id"], poll_s=0.05)
    record = stopped["cancellation"]
    # The tiny model's steps take milliseconds on a GPU, less than the cancel's trip from the
    # ingress; "stops within one step" is checked with the full-size models (test_full_*.py).
    assert stopped["status"] == "cancelled" and record["stopped_in_stage"] == "denoising"
    assert record["stopped_at_step"] < 50, record
    print(f"cancelled: {record}")
