"""The checks behind test_i2v.py: a user's view of a backend, over HTTP only."""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests
from PIL import Image, ImageDraw

from videoserve.client import API_KEY_ENV, BackendError, VideoClient
from videoserve.core.media import probe_mp4

RESPONSE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str, "video_url": str, "output_path": str, "model_type": str, "model": str,
    "seed": int, "num_frames": int, "height": int, "width": int, "fps": int,
    "inference_time": (int, float), "encoding_time": (int, float), "total_time": (int, float),
}


class CheckFailed(AssertionError):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def sample_image() -> bytes:
    image = Image.new("RGB", (320, 192), (40, 90, 160))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 120, 319, 191), fill=(230, 200, 150))
    draw.ellipse((140, 30, 200, 90), fill=(255, 210, 90))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def small_request(model: dict[str, Any]) -> dict[str, Any]:
    """Keep the check quick on real models: at most 17 frames and 4 steps."""
    d = model["defaults"]
    return {"num_frames": min(d["num_frames"], 17),
            "num_inference_steps": min(d["num_inference_steps"], 4),
            "height": d["height"], "width": d["width"], "seed": 1234}


class Checks:
    """Each check prints PASS or FAIL; ``results`` keeps the outcome of each."""

    def __init__(self, client: VideoClient, workdir: Path):
        self.client, self.workdir = client, workdir
        self.results: dict[str, bool] = {}
        self.videos: list[dict[str, Any]] = []

    def run(self, name: str, check: Callable[[], str]) -> None:
        try:
            detail = check()
            self.results[name] = True
            print(f"PASS {name}: {detail}", flush=True)
        except (CheckFailed, BackendError, requests.RequestException, KeyError) as exc:
            self.results[name] = False
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)

    def health(self) -> str:
        expect(self.client.health() == {"status": "ok"}, "GET /health did not answer ok")
        ready, models = self.client.ready()
        expect(ready, f"GET /ready says not ready: {models}")
        return "healthy and ready: " + ", ".join(f"{t} {m['state']}" for t, m in models.items())

    def generate(self, task: str) -> str:
        model = self.client.models()[task]
        params = small_request(model)
        image = sample_image() if task == "i2v" else None
        if image is not None:
            (self.workdir / "input.png").write_bytes(image)
        result = self.client.generate(f"smoke test {task}: waves on a beach at sunset",
                                      image=image, model_type=task, **params)
        video = self.client.download(result)
        (self.workdir / f"{task}.mp4").write_bytes(video)
        info = probe_mp4(video)
        expected = (params["num_frames"], params["width"], params["height"])
        expect((info.frames, info.width, info.height) == expected,
               f"video is {info.frames} frames {info.width}x{info.height}, wanted {expected}")
        expect(result["model_type"] == task, f"answered by {result['model_type']}")
        self.videos.append(result)
        return (f"{info.frames} frames {info.width}x{info.height} {info.codec} from "
                f"{result['model']} in {result['total_time']:.2f}s (seed {result['seed']})")

    def access(self) -> str:
        """With an API key: requests without it are refused, /health is open."""
        url = self.client.base_url
        without = requests.get(url + "/v1/videos", timeout=30)
        expect(without.status_code == 401, f"GET /v1/videos without the key gave "
               f"{without.status_code}")
        expect(without.json()["error"]["code"] == "unauthorized", "401 not in the error shape")
        wrong = requests.get(url + "/v1/videos", headers={"Authorization": "Bearer wrong"},
                             timeout=30)
        expect(wrong.status_code == 401, f"a wrong key gave {wrong.status_code}")
        expect(requests.get(url + "/health", timeout=30).ok, "/health needs no key")
        return "401 without the key and with a wrong one; /health open"

    def response_format(self) -> str:
        expect(len(self.videos) == 2, "the T2V and I2V checks must pass first")
        for result in self.videos:
            for field, kind in RESPONSE_FIELDS.items():
                expect(isinstance(result.get(field), kind), f"{field} missing or not {kind}")
            expect(result["total_time"] >= result["inference_time"] > 0, "timings inconsistent")
            video = self.workdir / f"{result['model_type']}.mp4"
            info = probe_mp4(video.read_bytes())
            expect(info.codec == "h264" and info.pix_fmt == "yuv420p",
                   f"video is {info.codec}/{info.pix_fmt}")
            expect(info.faststart, "moov atom is not before mdat")
            url = urljoin(self.client.base_url + "/", result["video_url"])
            part = self.client.session.get(url, headers={"Range": "bytes=0-15"}, timeout=30)
            expect(part.status_code == 206 and len(part.content) == 16, "Range not honoured")
        return "fields and types, H.264 yuv420p faststart MP4s, Range requests"

    def cleanup(self) -> str:
        """Delete the test's videos on the backend and its local files; check both are gone."""
        for result in self.videos:
            self.client.delete(result["id"])
            try:
                self.client.job(result["id"])
                raise CheckFailed(f"video {result['id']} still exists after DELETE")
            except BackendError as exc:
                expect(exc.status == 404, f"GET after DELETE gave {exc.status}")
            gone = self.client.session.get(
                urljoin(self.client.base_url + "/", result["video_url"]), timeout=30)
            expect(gone.status_code == 404, f"{result['video_url']} is still served")
        files = [p.name for p in self.workdir.iterdir()]
        shutil.rmtree(self.workdir)
        expect(not self.workdir.exists(), f"{self.workdir} still exists")
        return (f"deleted {len(self.videos)} videos on the backend; removed {len(files)} local "
                f"files ({', '.join(sorted(files))})")


def run_checks(backend_url: str, api_key: str | None = None) -> bool:
    """Run every check against ``backend_url``; True when all pass."""
    client = VideoClient(backend_url, timeout=1800, api_key=api_key)
    checks = Checks(client, Path(tempfile.mkdtemp(prefix="videoserve-check-")))
    checks.run("health", checks.health)
    if "Authorization" in client.session.headers:
        checks.run("api key", checks.access)
    checks.run("t2v", lambda: checks.generate("t2v"))
    checks.run("i2v", lambda: checks.generate("i2v"))
    checks.run("response format", checks.response_format)
    checks.run("cleanup", checks.cleanup)
    passed = sum(checks.results.values())
    print(f"{passed} passed, {len(checks.results) - passed} failed", flush=True)
    return all(checks.results.values())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_with_own_backend(api_key: str | None = None) -> bool:
    """Start a tiny backend in a temporary output folder (requiring ``api_key`` when given),
    check it, stop it, remove the folder."""
    from videoserve.serve.backend_cli import API_KEYS_ENV
    from videoserve.serve.launcher import ROOT, Managed, wait_for_backend

    output = Path(tempfile.mkdtemp(prefix="videoserve-check-out-"))
    port = _free_port()
    backend = Managed("backend", [sys.executable, str(ROOT / "ray_serve_backend.py"),
                                  "--preset", "tiny", "--port", str(port), "--num_cpus", "2",
                                  "--output_path", str(output)],
                      {API_KEYS_ENV: api_key} if api_key else None)
    try:
        url = f"http://127.0.0.1:{port}"
        if not wait_for_backend(backend, url, 600, threading.Event()):
            print("FAIL health: the tiny backend did not start", flush=True)
            return False
        return run_checks(url, api_key)
    finally:
        backend.stop()
        shutil.rmtree(output, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a videoserve backend end to end.")
    parser.add_argument("--backend_url", default=None,
                        help="a running backend (default: start a tiny one)")
    parser.add_argument("--api_key", default=None,
                        help="the backend's API key (default: $VIDEOSERVE_API_KEY); with no "
                             "--backend_url, the tiny backend is started requiring it")
    args = parser.parse_args(argv)
    api_key = args.api_key or os.environ.get(API_KEY_ENV)
    if args.backend_url:
        ok = run_checks(args.backend_url, api_key)
    else:
        ok = run_with_own_backend(api_key)
    return 0 if ok else 1
