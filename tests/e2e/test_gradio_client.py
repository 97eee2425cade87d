"""Both tabs of the UI driven through their API endpoints with ``gradio_client``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from videoserve.core.media import probe_mp4

gradio_client = pytest.importorskip("gradio_client")

FRAMES, HEIGHT, WIDTH, STEPS = 5, 48, 80, 2


@pytest.fixture(scope="module")
def client(ui_server):
    return gradio_client.Client(ui_server.url, verbose=False)


def video_path(output) -> Path:
    """gr.Video outputs come back as a path or as {"video": path, "subtitles": ...}."""
    return Path(output["video"] if isinstance(output, dict) else output)


def check(result, task: str, seed: int) -> None:
    video, info, returned_seed = result
    assert int(returned_seed) == seed
    assert task.upper() in info and f"seed **{seed}**" in info, info
    assert re.search(rf"{FRAMES} frames · {WIDTH}×{HEIGHT}", info), info
    decoded = probe_mp4(video_path(video).read_bytes())
    assert (decoded.frames, decoded.width, decoded.height) == (FRAMES, WIDTH, HEIGHT)
    assert decoded.codec == "h264"


def test_api_lists_both_endpoints(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/generate_t2v", "/generate_i2v"} <= set(endpoints)


def test_generate_t2v(client):
    # Handlers.t2v(prompt, negative, seed, randomize, guidance, frames, height, width, steps)
    result = client.predict("A red fox running through fresh snow.", "", 7, False, 1.0, FRAMES,
                            HEIGHT, WIDTH, STEPS, api_name="/generate_t2v")
    check(result, "t2v", seed=7)


def test_generate_i2v(client, tmp_path):
    image_path = tmp_path / "input.png"
    Image.new("RGB", (160, 96), (255, 170, 90)).save(image_path)
    # Handlers.i2v(prompt, image, negative, seed, randomize, guidance, frames, height, width,
    # steps)
    result = client.predict("The waves roll onto the beach.",
                            gradio_client.handle_file(str(image_path)), "", 11, False, 1.0,
                            FRAMES, HEIGHT, WIDTH, STEPS, api_name="/generate_i2v")
    check(result, "i2v", seed=11)


def test_errors_reach_the_client(client):
    with pytest.raises(Exception, match="Enter a prompt"):
        client.predict("  ", "", 7, False, 1.0, FRAMES, HEIGHT, WIDTH, STEPS,
                       api_name="/generate_t2v")
    with pytest.raises(Exception, match="Upload an image first"):
        client.predict("A prompt", None, "", 7, False, 1.0, FRAMES, HEIGHT, WIDTH, STEPS,
                       api_name="/generate_i2v")


def test_generate_t2v_with_a_lora(client):
    # The picker's rows are the parameters lora_1, strength_1 ... lora_4, strength_4; left out,
    # they are "none" (the page, not the API, starts them from the model's default LoRAs).
    lora_id = "synthetic-t2v-diffusers-r64"
    result = client.predict("A red fox running through fresh snow.", "", 7, False, 1.0, FRAMES,
                            HEIGHT, WIDTH, STEPS, lora_1=lora_id, strength_1=0.75,
                            api_name="/generate_t2v")
    check(result, "t2v", seed=7)
    assert f"LoRAs: {lora_id}×0.75" in result[1], result[1]
    plain = client.predict("A red fox running through fresh snow.", "", 7, False, 1.0, FRAMES,
                           HEIGHT, WIDTH, STEPS, api_name="/generate_t2v")
    assert "LoRAs: none" in plain[1], plain[1]
