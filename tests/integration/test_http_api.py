"""The real Ray Serve app on CPU with the tiny models, driven over HTTP."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.helpers import fetch_video, png_b64, png_bytes
from tests.integration.faults import FAIL_MARKER, fail_on_marker
from videoserve.core.config import Settings
from videoserve.serve.presets import build_specs


@pytest.fixture(scope="module")
def backend(serve_cluster, tmp_path_factory):
    from videoserve.serve.deployments import deploy, undeploy

    output = tmp_path_factory.mktemp("out")
    settings = Settings(models=build_specs("tiny", gpu_count=0), output_path=output,
                        max_body_bytes=2 * 1024 * 1024)
    deploy(settings, "tiny", "/")
    yield serve_cluster.url, settings
    undeploy("tiny")


@pytest.fixture(scope="module")
def faulty_backend(serve_cluster, tmp_path_factory):
    """A T2V-only app whose engine fails on a marker prompt."""

    from videoserve.serve.deployments import deploy, undeploy

    settings = Settings(models=build_specs("tiny", gpu_count=0, tasks=("t2v",)),
                        output_path=tmp_path_factory.mktemp("faulty"))
    deploy(settings, "faulty", "/faulty", fail_on_marker)
    yield serve_cluster.url + "/faulty"
    undeploy("faulty")


def post(url: str, body: dict, **kwargs) -> requests.Response:
    return requests.post(url + "/generate_video", json=body, timeout=300, **kwargs)


def assert_error(response: requests.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param, error
    return error


def test_health_ready_and_models(backend):
    url, _ = backend
    assert requests.get(url + "/health", timeout=10).json() == {"status": "ok"}
    ready = requests.get(url + "/ready", timeout=30)
    assert ready.status_code == 200, ready.text
    assert {m["state"] for m in ready.json()["models"].values()} == {"RUNNING"}
    models = {m["task"]: m for m in requests.get(url + "/v1/models", timeout=10).json()["data"]}
    assert models["t2v"]["defaults"]["num_frames"] == 9 and models["i2v"]["synthetic"] is True
    assert models["t2v"]["limits"]["max_num_frames"] == 81
    assert requests.get(url + "/docs", timeout=10).status_code == 200
    # One local node: the ingress and every replica share it.
    placement = requests.get(url + "/v1/placement", timeout=30).json()
    node = placement["ingress"]["node_id"]
    # Tiny models on the CPU: no GPU placement to explain.
    assert len(node) == 56 and placement["models"] == {
        task: {"replicas": [{"node_id": node, "state": "RUNNING"}], "device": "cpu",
               "speed": "quality"} for task in ("t2v", "i2v")}


def test_t2v_video_decodes_to_requested_frames_and_size(backend):
    url, settings = backend
    response = post(url, {"prompt": "a red fox in snow", "model_type": "t2v", "num_frames": 13,
                          "height": 48, "width": 80, "seed": 42, "num_inference_steps": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model_type"], body["seed"], body["num_frames"]) == ("t2v", 42, 13)
    assert body["model"] == "builtin:tiny-wan-t2v" and body["synthetic"] is True
    assert body["total_time"] >= body["inference_time"] > 0 and body["encoding_time"] > 0
    info = fetch_video(url, body)
    assert (info.frames, info.width, info.height) == (13, 80, 48)
    assert info.codec == "h264" and info.pix_fmt == "yuv420p" and info.faststart
    video = Path(body["output_path"])
    assert video.is_file() and video.parent.parent == settings.videos_dir
    assert (video.parent / "record.json").is_file()


def test_i2v_with_base64_image(backend):
    url, _ = backend
    response = post(url, {"prompt": "the scene comes alive", "image": png_b64(),
                          "num_frames": 5, "height": 32, "width": 48})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_type"] == "i2v" and body["model"] == "builtin:tiny-wan-i2v"
    info = fetch_video(url, body)
    assert (info.frames, info.width, info.height) == (5, 48, 32)


def test_defaults_applied_when_unset(backend):
    url, _ = backend
    body = post(url, {"prompt": "waves"}).json()
    assert body["model_type"] == "t2v"
    assert (body["num_frames"], body["height"], body["width"], body["fps"]) == (9, 64, 64, 8)
    assert body["num_inference_steps"] == 2 and isinstance(body["seed"], int)
    info = fetch_video(url, body)
    assert (info.frames, info.width, info.height) == (9, 64, 64)
    assert info.fps == pytest.approx(8)


def test_concurrent_t2v_and_i2v(backend):
    url, _ = backend
    bodies = [{"prompt": "city at night", "num_frames": 9},
              {"prompt": "a boat", "image": "data:image/png;base64," + png_b64(), "num_frames": 9}]
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda b: post(url, b), bodies))
    assert [r.status_code for r in responses] == [200, 200]
    assert [r.json()["model_type"] for r in responses] == ["t2v", "i2v"]
    for response in responses:
        assert fetch_video(url, response.json()).frames == 9


def test_image_path_inside_input_dir_is_used(backend):
    url, settings = backend
    (settings.inputs_dir / "cat.png").write_bytes(png_bytes())
    response = post(url, {"prompt": "a cat", "image_path": "cat.png", "num_frames": 5})
    assert response.status_code == 200, response.text
    assert response.json()["model_type"] == "i2v"
    abs_path = str(settings.inputs_dir / "cat.png")
    assert post(url, {"prompt": "a cat", "image_path": abs_path}).status_code == 200


def test_image_path_escapes_are_refused(backend, tmp_path):
    url, settings = backend
    outside = tmp_path / "private.png"
    outside.write_bytes(png_bytes())
    link = settings.inputs_dir / "link.png"
    link.unlink(missing_ok=True)
    os.symlink(outside, link)
    for path in (str(outside), "../private.png", "../../etc/passwd", "link.png", "/etc/passwd"):
        assert_error(post(url, {"prompt": "x", "image_path": path}), 403, "image_path")
    assert_error(post(url, {"prompt": "x", "image_path": "nope.png"}), 400, "image_path")


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": "x", "num_frames": 10}, 422, "num_frames"),
        ({"prompt": "x", "height": 50}, 422, "height"),
        ({"prompt": "x", "width": "wide"}, 422, "width"),
        ({"prompt": "x", "num_frames": 85}, 422, "num_frames"),
        ({"prompt": "x", "num_inference_steps": 51}, 422, "num_inference_steps"),
        ({"prompt": "x", "height": 832, "width": 832}, 422, "width"),
        ({"prompt": "x", "unknown_field": 1}, 422, "unknown_field"),
        ({"prompt": "x" * 2001}, 422, "prompt"),
        ({"prompt": ""}, 422, "prompt"),
        ({}, 422, "prompt"),
        ({"prompt": "x", "model_type": "i2v"}, 422, "image"),
        ({"prompt": "x", "model_type": "t2v", "image": png_b64()}, 422, "image"),
        ({"prompt": "x", "image": "%%%not-base64"}, 422, "image"),
        ({"prompt": "x", "image": "aGVsbG8="}, 422, "image"),
    ],
)
def test_bad_inputs_are_4xx_naming_the_field(backend, body, status, param):
    url, _ = backend
    assert_error(post(url, body), status, param)


def test_malformed_json_and_oversized_bodies(backend):
    url, settings = backend
    response = requests.post(url + "/generate_video", data=b"{not json",
                             headers={"content-type": "application/json"}, timeout=30)
    assert_error(response, 422)
    big = {"prompt": "x", "image": "A" * (settings.max_body_bytes + 10)}
    error = assert_error(post(url, big), 413)
    assert error["code"] == "body_too_large"

    def chunks():
        for _ in range(40):
            yield b"A" * 65536

    chunked = requests.post(url + "/generate_video", data=chunks(), timeout=30,
                            headers={"content-type": "application/json"})
    assert_error(chunked, 413)


def test_video_route_supports_range_and_404s(backend):
    url, _ = backend
    body = post(url, {"prompt": "range"}).json()
    full = requests.get(url + body["video_url"], timeout=30).content
    part = requests.get(url + body["video_url"], headers={"Range": "bytes=0-99"}, timeout=30)
    assert part.status_code == 206 and part.content == full[:100]
    assert part.headers["content-range"] == f"bytes 0-99/{len(full)}"
    assert_error(requests.get(url + "/videos/video_" + "0" * 24 + "/video.mp4", timeout=10), 404)
    assert_error(requests.get(url + "/videos/..%2F..%2Fetc/video.mp4", timeout=10), 404)


def test_generation_error_is_500_and_replica_keeps_serving(faulty_backend):
    url = faulty_backend
    error = assert_error(post(url, {"prompt": f"boom {FAIL_MARKER}"}), 500)
    assert "injected engine failure" in error["message"] and error["code"] == "generation_failed"
    after = post(url, {"prompt": "still alive", "num_frames": 5})
    assert after.status_code == 200, after.text
    assert fetch_video(url.removesuffix("/faulty"), after.json()).frames == 5


def test_model_not_deployed_is_404(faulty_backend):
    error = assert_error(post(faulty_backend, {"prompt": "x", "image": png_b64()}), 404,
                         "model_type")
    assert "i2v" in error["message"]
