"""The UI's live preview and Cancel button, as plain functions over a stand-in client."""

from __future__ import annotations

import io
from typing import Any

import gradio as gr
import pytest
import requests
from PIL import Image

from videoserve.client import BackendError, VideoClient
from videoserve.ui.app import UiConfig, build_ui
from videoserve.ui.handlers import CANCEL_LABEL, CANCELLING_LABEL, Handlers, PreviewPoller


def webp(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(out, format="WEBP")
    return out.getvalue()


class FakeClient:
    """A job that denoises over a few polls, with a preview from its second poll on."""

    def __init__(self, cancel_answer: str = "in_progress"):
        self.polls = 0
        self.cancelled: list[str] = []
        self.cancel_answer = cancel_answer
        self.previews_asked = 0

    def submit(self, prompt: str, **params: Any) -> dict[str, Any]:
        return {"id": "video_1", "status": "queued"}

    def job_state(self) -> dict[str, Any]:
        status = "cancelled" if self.cancelled else (
            "in_progress" if self.polls < 4 else "completed")
        return {"id": "video_1", "status": status, "progress": 25 * self.polls, "seed": 7,
                "progress_detail": {"stage": "denoising", "step": self.polls,
                                    "total_steps": 4, "queue_position": None},
                "cancellation": {"stopped_at_step": self.polls} if self.cancelled else None}

    def wait(self, job_id: str, on_progress, poll_s: float) -> dict[str, Any]:
        while True:
            self.polls += 1
            job = self.job_state()
            on_progress(job)
            if job["status"] in ("completed", "cancelled"):
                return job

    def preview(self, job_id: str) -> tuple[int, bytes] | None:
        self.previews_asked += 1
        if self.polls < 2:
            return None
        return self.polls, webp((10 * self.polls, 0, 0))

    def cancel(self, job_id: str) -> dict[str, Any]:
        self.cancelled.append(job_id)
        return {"id": job_id, "status": self.cancel_answer}


@pytest.fixture
def handlers(tmp_path, monkeypatch) -> Handlers:
    monkeypatch.setattr("videoserve.ui.handlers.PREVIEW_POLL_S", 0.0)
    handlers = Handlers("http://backend.invalid", downloads=tmp_path)
    handlers.client = FakeClient()
    handlers._save = lambda job_id: f"/tmp/{job_id}.mp4"
    monkeypatch.setattr("videoserve.ui.handlers.describe", lambda job: "done")
    return handlers


def no_progress(*args: Any, **kwargs: Any) -> None:
    pass


def test_the_run_keeps_the_newest_preview_for_the_tabs_timer(handlers):
    handlers.started("t2v", "s1")
    assert handlers.preview("t2v", "s1") == gr.update()  # nothing yet
    video, info, seed = handlers.run("t2v", "a fox", None, {}, "s1", no_progress)
    assert (video, seed) == ("/tmp/video_1.mp4", 7)
    # Only the newest one waits (the timer never ticked meanwhile); it is shown once.
    preview, cancel, timer = handlers.ended("t2v", "s1")
    assert isinstance(preview, Image.Image) and preview.size == (32, 32)
    assert preview.convert("RGB").getpixel((0, 0))[0] > 30  # the last poll's (step 4)
    assert cancel["interactive"] is False and cancel["value"] == CANCEL_LABEL
    assert timer.active is False
    assert handlers.preview("t2v", "s1") == gr.update()


def test_a_new_run_clears_the_preview_and_enables_cancel(handlers):
    handlers._previews[("s1", "t2v")] = (3, webp((0, 0, 0)))
    preview, cancel, timer = handlers.started("t2v", "s1")
    assert preview is None
    assert cancel["interactive"] is True and cancel["value"] == CANCEL_LABEL
    assert timer.active is True
    assert handlers.preview("t2v", "s1") == gr.update()  # the old job's is gone


def test_sessions_and_tabs_keep_their_own_previews(handlers):
    handlers._previews[("s1", "t2v")] = (3, webp((0, 0, 0)))
    assert handlers.preview("i2v", "s1") == gr.update()
    assert handlers.preview("t2v", "s2") == gr.update()
    assert isinstance(handlers.preview("t2v", "s1"), Image.Image)


def test_the_poller_asks_while_it_runs_and_once_more_when_final():
    client = FakeClient()
    poller = PreviewPoller(client, "video_1")
    assert poller.poll("queued") is None and client.previews_asked == 0
    client.polls = 2
    assert poller.poll("in_progress")[0] == 2
    assert poller.poll("in_progress") is None  # asked again too soon
    client.polls = 3
    assert poller.poll("completed")[0] == 3  # final: asked at once
    assert poller.poll("completed") is None  # the same step is not returned twice


def test_a_preview_error_does_not_fail_the_run():
    class Broken(FakeClient):
        def preview(self, job_id):
            raise BackendError(500, "boom")

    assert PreviewPoller(Broken(), "video_1").poll("completed") is None


@pytest.mark.parametrize("answer", ["in_progress", "cancelled"])
def test_cancel_works_whether_the_backend_answers_at_once_or_when_stopped(handlers, answer):
    handlers.client = FakeClient(cancel_answer=answer)
    assert Handlers.cancelling() == gr.update(value=CANCELLING_LABEL, interactive=False)
    handlers.started("t2v", "s1")
    handlers._running["s1"]["t2v"] = "video_1"
    assert handlers.cancel("t2v", "s1") == gr.update()  # the label stays "Cancelling…"
    assert handlers.client.cancelled == ["video_1"]


def test_cancel_before_the_job_is_submitted_cancels_it_once_submitted(handlers):
    handlers.started("t2v", "s1")  # Run clicked; the run waits in the UI's queue
    assert handlers.cancel("t2v", "s1") == gr.update()
    video, info, _ = handlers.run("t2v", "a fox", None, {}, "s1", no_progress)
    assert handlers.client.cancelled == ["video_1"]
    assert video is None and info.startswith("Cancelled")


def test_cancel_with_nothing_running_leaves_the_button_idle(handlers):
    update = handlers.cancel("t2v", "s1")
    assert update["interactive"] is False and update["value"] == CANCEL_LABEL
    # Not armed by a Run click: the next run is not cancelled.
    handlers.run("t2v", "a fox", None, {}, "s1", no_progress)
    assert handlers.client.cancelled == []


def test_a_failed_cancel_enables_the_button_again(handlers):
    class Refusing(FakeClient):
        def cancel(self, job_id):
            raise BackendError(503, "busy")

    handlers.client = Refusing()
    handlers._running["s1"]["t2v"] = "video_1"
    update = handlers.cancel("t2v", "s1")
    assert update["interactive"] is True and update["value"] == CANCEL_LABEL


def test_client_preview_returns_the_step_and_the_image_or_none(monkeypatch):
    client = VideoClient("http://backend.invalid")
    ok = requests.Response()
    ok.status_code, ok._content = 200, b"RIFF....WEBP"
    ok.headers["X-Preview-Step"] = "12"
    not_yet = requests.Response()
    not_yet.status_code = 409
    not_yet._content = b'{"error": {"message": "no preview yet", "code": "no_preview_yet"}}'
    missing = requests.Response()
    missing.status_code, missing._content = 404, b'{"error": {"message": "no such video"}}'
    answers, seen = [ok, not_yet, missing], []
    monkeypatch.setattr(client.session, "request",
                        lambda method, url, **kwargs: seen.append((method, url))
                        or answers.pop(0))
    assert client.preview("video_1") == (12, b"RIFF....WEBP")
    assert client.preview("video_1") is None
    with pytest.raises(BackendError) as error:
        client.preview("video_1")
    assert error.value.status == 404
    assert seen[0] == ("GET", "http://backend.invalid/v1/videos/video_1/preview")


def test_each_task_tab_has_an_inputs_and_an_outputs_column():
    demo = build_ui(UiConfig("http://backend.invalid"))
    by_elem = {block.elem_id: block for block in demo.blocks.values()
               if getattr(block, "elem_id", None)}
    for task in ("t2v", "i2v"):
        inputs, outputs = by_elem[f"{task}-inputs"], by_elem[f"{task}-outputs"]
        assert inputs.parent is outputs.parent  # one row
        row = inputs.parent.children
        assert row.index(inputs) < row.index(outputs)
        for name in ("prompt", "run", "cancel"):
            assert by_elem[f"{task}-{name}"] in descendants(inputs)
        for name in ("preview", "video", "info"):
            assert by_elem[f"{task}-{name}"] in descendants(outputs)
        assert by_elem[f"{task}-cancel"].interactive is False  # idle


def descendants(block) -> list:
    found = []
    for child in getattr(block, "children", []):
        found += [child, *descendants(child)]
    return found
