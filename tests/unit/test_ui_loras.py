"""The UI's LoRA picker and history, as plain functions over a stand-in client (no backend)."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pytest
import requests

from videoserve.client import BackendError, VideoClient
from videoserve.ui.app import _params, _reuse
from videoserve.ui.handlers import (
    HISTORY_COLUMNS,
    MAX_LORAS,
    NO_LORA,
    Handlers,
    describe,
    lora_choices,
    picked_loras,
    picker_values,
)

LORAS = [
    {"id": "style-t2v", "object": "lora", "tasks": ["t2v"], "rank": 16, "format": "wan"},
    {"id": "both", "object": "lora", "tasks": ["t2v", "i2v"], "rank": 8, "format": "diffusers"},
    {"id": "motion-i2v", "object": "lora", "tasks": ["i2v"], "rank": 32, "format": "wan"},
    {"id": "broken", "object": "lora", "tasks": [], "rank": None, "format": None,
     "error": "not a safetensors file"},
]
MODEL = {"task": "t2v", "loras": [{"id": "style-t2v", "scale": 0.5}],
         "defaults": {"height": 64, "width": 64, "num_frames": 9, "num_inference_steps": 4,
                      "guidance_scale": 1.5, "fps": 8, "negative_prompt": "blurry"},
         "limits": {"max_height": 256, "max_width": 256, "max_num_frames": 33,
                    "max_num_inference_steps": 50, "max_guidance_scale": 10.0}}
JOB = {"id": "video_1", "created_at": 0, "model_type": "t2v", "status": "completed",
       "prompt": "a fox", "negative_prompt": "", "seed": 7, "size": "80x48", "width": 80,
       "height": 48, "num_frames": 5, "num_inference_steps": 2, "guidance_scale": 1.0,
       "fps": 8, "model": "tiny", "engine": "diffusers", "result": {},
       "loras": [{"id": "style-t2v", "scale": 0.5, "sha256": "ab"},
                 {"id": "both", "scale": 1.25, "sha256": "cd"}]}


class FakeClient:
    """Answers what the handlers ask the backend; ``down`` makes every call fail."""

    def __init__(self, down: bool = False):
        self.down = down

    def _answer(self, value: Any) -> Any:
        if self.down:
            raise BackendError(0, "the backend is unreachable")
        return value

    def loras(self) -> list[dict[str, Any]]:
        return self._answer(LORAS)

    def models(self) -> dict[str, dict[str, Any]]:
        return self._answer({"t2v": MODEL})

    def list(self, limit: int) -> dict[str, Any]:
        return self._answer({"data": [JOB]})


@pytest.fixture
def handlers(tmp_path) -> Handlers:
    handlers = Handlers("http://backend.invalid", downloads=tmp_path)
    handlers.client = FakeClient()
    return handlers


def test_each_tab_is_offered_the_loras_that_fit_its_model():
    assert [value for _, value in lora_choices(LORAS, "t2v")] == [NO_LORA, "both", "style-t2v"]
    assert [value for _, value in lora_choices(LORAS, "i2v")] == [NO_LORA, "both",
                                                                  "motion-i2v"]


def test_the_request_gets_the_chosen_rows_in_order():
    rows = ["style-t2v", 0.5, NO_LORA, 1.0, " both ", 1.25, None, 1.0]
    assert picked_loras(rows) == [{"id": "style-t2v", "scale": 0.5},
                                  {"id": "both", "scale": 1.25}]


def test_no_row_chosen_sends_no_loras_rather_than_the_defaults():
    # [] (none) and not None (the model's defaults): the picker started from the defaults.
    assert picked_loras(picker_values([])) == []
    params = _params("", 7, False, 1.0, 5, 48, 80, 2, picker_values([]))
    assert params["loras"] == []


def test_a_lora_chosen_twice_is_refused():
    with pytest.raises(gr.Error, match="both is chosen twice"):
        picked_loras(["both", 1.0, "both", 0.5, NO_LORA, 1.0, NO_LORA, 1.0])


def test_picker_values_round_trip():
    loras = [{"id": "style-t2v", "scale": 0.5}, {"id": "both", "scale": 1.25}]
    values = picker_values(loras)
    assert len(values) == 2 * MAX_LORAS
    assert picked_loras(values) == loras


def test_the_picker_starts_from_the_models_default_loras(handlers):
    note, *rows = handlers.lora_picker("t2v")
    assert "fit this model: 2" in note and "`broken`" in note
    assert [row["value"] for row in rows] == picker_values(MODEL["loras"])
    assert all([value for _, value in row["choices"]] == [NO_LORA, "both", "style-t2v"]
               for row in rows[0::2])
    assert all("choices" not in row for row in rows[1::2])  # strengths


def test_a_refresh_offers_new_choices_and_keeps_the_chosen_rows(handlers):
    note, *ids = handlers.refresh_loras("i2v")
    assert len(ids) == MAX_LORAS
    assert all("value" not in row and len(row["choices"]) == 3 for row in ids)


def test_a_backend_that_is_down_leaves_the_picker_as_it_is(handlers):
    handlers.client = FakeClient(down=True)
    note, *ids = handlers.refresh_loras("t2v")
    assert note == gr.update() and ids == [gr.update()] * MAX_LORAS


def test_the_sliders_start_from_the_models_overridden_defaults(handlers):
    negative, guidance, frames, height, width, steps = handlers.model_settings("t2v")
    assert negative["value"] == "blurry"
    assert (guidance["value"], guidance["maximum"]) == (1.5, 10.0)
    assert (steps["value"], frames["value"]) == (4, 9)


def test_history_shows_the_loras(handlers):
    rows, jobs = handlers.history()
    row = dict(zip(HISTORY_COLUMNS, rows[0], strict=True))
    assert row["loras"] == "style-t2v×0.5, both×1.25"
    assert (row["id"], row["prompt"], row["seed"], row["steps"]) == ("video_1", "a fox", 7, 2)
    assert jobs == [JOB]
    assert "LoRAs: style-t2v×0.5, both×1.25" in describe(JOB)
    assert "LoRAs: none" in describe({**JOB, "loras": []})


def test_reuse_restores_the_loras_in_the_jobs_tab():
    tabs, *forms = _reuse([JOB], 0)
    t2v, i2v = forms[:len(forms) // 2], forms[len(forms) // 2:]
    assert t2v[-2 * MAX_LORAS:] == picker_values(JOB["loras"])
    assert all(update == gr.update() for update in i2v)


def test_client_lists_the_lora_folder(monkeypatch):
    client = VideoClient("http://backend.invalid")
    answer = requests.Response()
    answer.status_code, answer._content = 200, b'{"object": "list", "data": [{"id": "a"}]}'
    seen = []
    monkeypatch.setattr(client.session, "request",
                        lambda method, url, **kwargs: seen.append((method, url)) or answer)
    assert client.loras() == [{"id": "a"}]
    assert seen == [("GET", "http://backend.invalid/v1/loras")]
