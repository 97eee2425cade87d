"""Small helpers shared by the test suites."""

from __future__ import annotations

import base64
import io

import requests
from PIL import Image

from videoserve.core.media import VideoInfo, probe_mp4


def png_bytes(width: int = 80, height: int = 60, seed: int = 0) -> bytes:
    image = Image.effect_noise((width, height), 64 + seed).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_b64(width: int = 80, height: int = 60) -> str:
    return base64.b64encode(png_bytes(width, height)).decode()


def fetch_video(base_url: str, body: dict) -> VideoInfo:
    """Download a response's video_url and decode it."""
    response = requests.get(base_url + body["video_url"], timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "video/mp4"
    return probe_mp4(response.content)
