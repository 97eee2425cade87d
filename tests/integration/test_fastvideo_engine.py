"""The fastvideo engine, with real fastvideo 0.2.x, served by the Ray Serve app.

fastvideo has no CPU support, so these tests load the test-only platform shim in
tests/fastvideo_cpu_shim (set up by the serve_cluster fixture); on a GPU, tests/gpu runs the
same app without it.
"""

from __future__ import annotations

import pytest
import requests

from tests.helpers import fetch_video, png_b64
from tests.integration.faults import FAIL_MARKER, crash_fastvideo_worker
from videoserve.config import Settings, build_specs

pytestmark = pytest.mark.fastvideo


@pytest.fixture(scope="module")
def fastvideo_backend(serve_cluster, tmp_path_factory):
    from ray import serve

    from videoserve.deployments import build_app, generator_name

    specs = build_specs("tiny", engine="fastvideo", gpu_count=0)
    settings = Settings(models=specs, output_path=tmp_path_factory.mktemp("fv"))
    serve.run(build_app(settings, crash_fastvideo_worker), name="fv", route_prefix="/fv")
    i2v = serve.get_deployment_handle(generator_name("i2v"), app_name="fv")
    yield serve_cluster.url, i2v
    serve.delete("fv")


def post(root: str, body: dict) -> requests.Response:
    return requests.post(root + "/fv/generate_video", json=body, timeout=300)


def test_fastvideo_t2v_and_i2v_over_http(fastvideo_backend):
    root, _ = fastvideo_backend
    models = requests.get(root + "/fv/v1/models", timeout=10).json()["data"]
    assert {m["engine"] for m in models} == {"fastvideo"}
    t2v = post(root, {"prompt": "a kite over a beach", "num_frames": 9, "height": 64,
                      "width": 64, "seed": 3})
    assert t2v.status_code == 200, t2v.text
    assert t2v.json()["engine"] == "fastvideo" and t2v.json()["model_type"] == "t2v"
    info = fetch_video(root, t2v.json())
    assert (info.frames, info.width, info.height, info.codec) == (9, 64, 64, "h264")
    i2v = post(root, {"prompt": "waves roll in", "image": png_b64(), "num_frames": 5,
                      "height": 48, "width": 64})
    assert i2v.status_code == 200, i2v.text
    info = fetch_video(root, i2v.json())
    assert (info.frames, info.width, info.height) == (5, 64, 48)


def test_fastvideo_worker_failure_spares_the_replica(fastvideo_backend):
    root, i2v_handle = fastvideo_backend
    pid_before = i2v_handle.info.remote().result()["pid"]
    failed = post(root, {"prompt": f"crash {FAIL_MARKER}", "image": png_b64(), "num_frames": 5})
    assert failed.status_code == 500, failed.text
    assert "fastvideo generation failed" in failed.json()["error"]["message"]
    after = post(root, {"prompt": "still serving", "image": png_b64(), "num_frames": 5})
    assert after.status_code == 200, after.text
    assert fetch_video(root, after.json()).frames == 5
    assert i2v_handle.info.remote().result()["pid"] == pid_before
