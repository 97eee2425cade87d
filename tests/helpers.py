"""Small helpers shared by the test suites."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from pathlib import Path

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


def hub_cache_layout(cache: Path, repo_id: str, folder: Path, commit: str = "c0ffee" * 6 + "0123"
                     ) -> Path:
    """Lay ``folder`` out in ``cache`` (an HF_HUB_CACHE) as huggingface_hub's cache holds a
    downloaded snapshot of Hub model ``repo_id``: blobs named by content hash, the snapshot's
    files linking to them, refs/main naming the commit. Returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for source in sorted(folder.rglob("*")):
        relative = source.relative_to(folder)
        # The builder's own markers (.complete, .seed) are no repository files.
        if not source.is_file() or any(p.startswith(".") for p in relative.parts):
            continue
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
