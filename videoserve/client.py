"""The one HTTP client of the backend, for the UI, the tests and users' scripts.

    from videoserve.client import VideoClient
    client = VideoClient("http://127.0.0.1:8000")      # api_key=... or $VIDEOSERVE_API_KEY
    result = client.generate("A red fox running through snow", num_frames=17)
    open("fox.mp4", "wb").write(client.download(result))

    job = client.submit("A paper boat on a river", num_frames=33)       # returns at once
    job = client.wait(job["id"], on_progress=lambda j: print(j["progress"], "%"))
    open("boat.mp4", "wb").write(client.content(job["id"]))

It needs only ``requests`` (no torch, ray or fastvideo).
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

API_KEY_ENV = "VIDEOSERVE_API_KEY"
FINAL = ("completed", "failed", "cancelled")  # a job in one of these never changes again


class BackendError(Exception):
    """The backend answered with an error, or could not be reached (status 0)."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def __str__(self) -> str:
        return self.message


def json_or_none(response: requests.Response) -> Any:
    """The response's JSON body, or None if it has none (another program's answer)."""
    try:
        return response.json()
    except ValueError:
        return None


def encode_image(image: bytes | str | Path) -> str:
    """A data URL for image bytes or an image file (a data URL is passed on as it is)."""
    if isinstance(image, str) and image.startswith("data:"):
        return image
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode()


class VideoClient:
    """Talks to a videoserve backend over HTTP."""

    def __init__(self, base_url: str, timeout: float = 3600.0, api_key: str | None = None):
        """``api_key``: for a backend that requires one (default: $VIDEOSERVE_API_KEY)."""
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        api_key = api_key or os.environ.get(API_KEY_ENV)
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def _request(self, method: str, path: str, timeout: float | None = None,
                 **kwargs: Any) -> requests.Response:
        url = path if path.startswith("http") else self.base_url + path
        try:
            response = self.session.request(method, url, timeout=timeout or self.timeout,
                                            **kwargs)
        except requests.ConnectionError as exc:
            raise BackendError(0, f"the backend at {self.base_url} is unreachable") from exc
        except requests.Timeout as exc:
            raise BackendError(0, f"the backend at {self.base_url} did not answer in time") from exc
        if response.status_code >= 400:
            raise self._error(response)
        return response

    @staticmethod
    def _error(response: requests.Response) -> BackendError:
        try:
            error = response.json()["error"]
            return BackendError(response.status_code, error["message"], error.get("param"),
                                error.get("code"))
        except (ValueError, KeyError, TypeError):
            return BackendError(response.status_code,
                                f"HTTP {response.status_code}: {response.text[:200]}")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health", timeout=10).json()

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """(ready, per-model states); a 503 is an answer here, not an error."""
        try:
            response = self.session.get(self.base_url + "/ready", timeout=10)
        except requests.RequestException as exc:
            raise BackendError(0, f"the backend at {self.base_url} is unreachable") from exc
        if response.status_code not in (200, 503):
            raise self._error(response)
        body = json_or_none(response)
        if not isinstance(body, dict) or "ready" not in body:
            # e.g. a metrics exporter, which answers every path with 200 and plain text
            raise BackendError(response.status_code,
                               f"{self.base_url}/ready answered HTTP {response.status_code} "
                               "but not as a videoserve backend: is another program on "
                               "this port?")
        return bool(body["ready"]), body.get("models", {})

    def wait_ready(self, timeout: float = 1800.0, poll_s: float = 1.0,
                   on_wait: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Block until every model is loaded; ``on_wait`` gets a status line while waiting."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                is_ready, models = self.ready()
                if is_ready:
                    return models
                line = ", ".join(f"{t}: {m.get('state')}" for t, m in models.items())
            except BackendError as exc:
                line = exc.message
            if time.monotonic() > deadline:
                raise BackendError(0, f"backend not ready after {timeout:.0f}s ({line})")
            if on_wait:
                on_wait(line)
            time.sleep(poll_s)

    def models(self) -> dict[str, dict[str, Any]]:
        """Deployed models by task ("t2v", "i2v"), with defaults and limits."""
        data = self._request("GET", "/v1/models", timeout=10).json()["data"]
        return {model["task"]: model for model in data}

    def loras(self) -> list[dict[str, Any]]:
        """The server's LoRA folder: ``id``, ``tasks`` (the models it fits), ``rank``,
        ``format``, ``sha256``; a file that is no usable LoRA has an ``error``."""
        return self._request("GET", "/v1/loras", timeout=60).json()["data"]

    def generate(self, prompt: str, image: bytes | str | Path | None = None,
                 **params: Any) -> dict[str, Any]:
        """Generate one video and return the backend's response (see README).

        ``loras=[{"id": ..., "scale": 1.0}]`` applies LoRAs (``[]``: none; left out: the
        model's default LoRAs)."""
        body: dict[str, Any] = {"prompt": prompt, **{k: v for k, v in params.items()
                                                     if v is not None}}
        if image is not None:
            body["image"] = encode_image(image)
        return self._request("POST", "/generate_video", json=body).json()

    def download(self, result: dict[str, Any] | str) -> bytes:
        """The MP4 bytes of a result (or of a ``video_url``)."""
        url = result if isinstance(result, str) else result["video_url"]
        # video_url is absolute from the server root (it includes any route prefix).
        return self._request("GET", urljoin(self.base_url + "/", url), timeout=300).content

    # --- jobs (asynchronous): /v1/videos ---

    def submit(self, prompt: str, image: bytes | str | Path | None = None,
               idempotency_key: str | None = None, **params: Any) -> dict[str, Any]:
        """Queue a video; returns the job (``id``, ``status``, ``progress`` ...) at once.
        ``params`` as for ``generate``, ``loras`` included."""
        body: dict[str, Any] = {"prompt": prompt, **{k: v for k, v in params.items()
                                                     if v is not None}}
        if image is not None:
            body["image"] = encode_image(image)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._request("POST", "/v1/videos", json=body, headers=headers,
                             timeout=120).json()

    def submit_batch(self, requests_: list[dict[str, Any]]) -> list[str]:
        """Queue several videos (bodies as for ``submit``); their ids, in order."""
        return self._request("POST", "/v1/videos/batch", json={"requests": requests_},
                             timeout=120).json()["ids"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/videos/{job_id}", timeout=30).json()

    def wait(self, job_id: str, on_progress: Callable[[dict[str, Any]], None] | None = None,
             poll_s: float = 0.5, timeout: float | None = None,
             until: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """Poll until the job is completed, failed or cancelled (or ``until(job)`` is true);
        return the state seen last."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            job = self.job(job_id)
            if on_progress:
                on_progress(job)
            if job["status"] in FINAL or (until and until(job)):
                return job
            if time.monotonic() > deadline:
                raise BackendError(0, f"job {job_id} still {job['status']} after the timeout")
            time.sleep(poll_s)

    def preview(self, job_id: str) -> tuple[int, bytes] | None:
        """The newest live preview of a job's denoising: (its step, a small WebP); None while
        there is none yet (409: before the first step, or for a job without previews)."""
        try:
            response = self._request("GET", f"/v1/videos/{job_id}/preview", timeout=30)
        except BackendError as exc:
            if exc.status == 409:
                return None
            raise
        return int(response.headers.get("X-Preview-Step", 0)), response.content

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job (a finished one is left as it is); its new state,
        answered at once: a queued job is ``cancelled``, a running one stays ``in_progress``
        with ``cancellation.requested_at`` set until its engine stops at its next step
        (``wait`` for ``cancelled``)."""
        return self._request("POST", f"/v1/videos/{job_id}/cancel", timeout=60).json()

    def delete(self, job_id: str) -> None:
        """Delete a finished job and its files."""
        self._request("DELETE", f"/v1/videos/{job_id}", timeout=60)

    def list(self, limit: int = 20, after: str | None = None,
             order: str = "desc") -> dict[str, Any]:
        """One page of history: ``data``, ``has_more``, ``last_id`` (pass it as ``after``)."""
        params = {"limit": limit, "order": order, **({"after": after} if after else {})}
        return self._request("GET", "/v1/videos", params=params, timeout=30).json()

    def content(self, job_id: str) -> bytes:
        """The MP4 of a completed job."""
        return self._request("GET", f"/v1/videos/{job_id}/content", timeout=300).content
