"""The MP4 download response: served from the file opened before answering, so a delete that
comes in between never cuts a download short."""

import asyncio
import os

import pytest

from videoserve.http.app import VideoFile

DATA = bytes(range(256)) * 1000  # several of FileResponse's 64 KiB chunks


def get(response: VideoFile, method: str = "GET", headers: dict | None = None,
        on_start=None) -> tuple[int, dict, bytes]:
    sent: list[dict] = []

    async def receive() -> dict:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.start" and on_start is not None:
            on_start()

    scope = {"type": "http", "method": method, "path": "/x", "asgi": {"spec_version": "2.4"},
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
             "extensions": {"http.response.pathsend": {}}}
    asyncio.run(response(scope, receive, send))
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


@pytest.fixture
def video(tmp_path):
    path = tmp_path / "video.mp4"
    path.write_bytes(DATA)
    return path


@pytest.mark.parametrize(("headers", "status", "expected"), [
    ({}, 200, DATA),
    ({"Range": "bytes=100-"}, 206, DATA[100:]),
    ({"Range": "bytes=70000-70099"}, 206, DATA[70000:70100]),
])
def test_a_file_deleted_once_the_answer_started_is_still_sent_whole(video, headers, status,
                                                                     expected):
    response = VideoFile.open(video, "video/mp4", "v.mp4")
    code, sent_headers, body = get(response, headers=headers, on_start=video.unlink)
    assert not video.exists()
    assert code == status and body == expected
    assert int(sent_headers["content-length"]) == len(expected)
    assert response.file.closed


def test_a_file_deleted_before_the_answer_is_still_sent(video):
    response = VideoFile.open(video, "video/mp4", "v.mp4")
    os.remove(video)
    assert get(response, headers={"Range": "bytes=0-9,20-29"})[0] == 206
    assert response.file.closed


def test_head_and_range_errors_close_the_file(video):
    head = VideoFile.open(video, "video/mp4", "v.mp4")
    status, headers, body = get(head, "HEAD")
    assert (status, body, int(headers["content-length"])) == (200, b"", len(DATA))
    outside = VideoFile.open(video, "video/mp4", "v.mp4")
    assert get(outside, headers={"Range": f"bytes={len(DATA)}-"})[0] == 416
    assert head.file.closed and outside.file.closed


def test_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        VideoFile.open(tmp_path / "gone.mp4", "video/mp4", "v.mp4")
