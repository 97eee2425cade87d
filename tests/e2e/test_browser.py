"""The Gradio UI in a real browser: Playwright drives Debian's headless Chromium against the UI,
which talks to a tiny CPU backend on Ray Serve (fixtures in tests/e2e/conftest.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e.conftest import SCREENSHOTS
from videoserve.client import VideoClient

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
GENERATION_MS = 120_000
UI_MS = 30_000
# Small generations: 5 frames of 80x48 (not the tiny models' 64x64 default, so the test can see
# that the sliders took effect), 2 steps.
SMALL = {"frames": 5, "height": 48, "width": 80, "steps": 2}

VIDEO_LOADED = """id => {
    const video = document.querySelector(`#${id} video`);
    return !!video && video.readyState >= 2 && video.duration > 0;
}"""

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's /usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, ui_server):
    """A fresh page on the UI, once it reports the backend ready."""
    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    page.set_default_timeout(UI_MS)
    page.goto(ui_server.url)
    sync_api.expect(page.locator("#backend-status")).to_contain_text("Backend ready",
                                                                    timeout=UI_MS)
    yield page
    context.close()


@pytest.fixture(scope="module")
def backend_defaults(ui_server) -> dict[str, dict]:
    return {task: model["defaults"]
            for task, model in VideoClient(ui_server.backend_url).models().items()}


def set_slider(page, elem_id: str, value: int) -> None:
    """Set a Gradio 6 slider through its number box, then check the range input followed."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()
    sync_api.expect(page.locator(f"#{elem_id} input[type=range]")).to_have_value(str(value))


def open_advanced(page, prefix: str, defaults: dict) -> None:
    """Open the tab's "Advanced parameters" accordion and make the generation small."""
    frames = page.locator(f"#{prefix}-frames")
    if not frames.is_visible():
        page.get_by_text("Advanced parameters").locator("visible=true").first.click()
    sync_api.expect(frames).to_be_visible()
    # The page's load event fills the sliders with the backend's defaults; wait for it.
    sync_api.expect(page.locator(f"#{prefix}-frames input[type=number]")).to_have_value(
        str(defaults["num_frames"]))
    for name, value in SMALL.items():
        set_slider(page, f"{prefix}-{name}", value)


def wait_for_video(page, prefix: str) -> None:
    page.wait_for_function(VIDEO_LOADED, arg=f"{prefix}-video", timeout=GENERATION_MS)


def check_info(page, prefix: str, task: str) -> None:
    info = page.locator(f"#{prefix}-info")
    sync_api.expect(info).to_contain_text(f"{SMALL['frames']} frames")
    text = info.inner_text()
    assert task.upper() in text, text
    assert re.search(r"seed \d+", text), text
    assert f"{SMALL['width']}×{SMALL['height']}" in text and f"{SMALL['steps']} steps" in text


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def error_toast(page, text: str):
    """The visible error toast that contains ``text``."""
    toast = page.locator(".toast-body.error").filter(has_text=text)
    sync_api.expect(toast.first).to_be_visible(timeout=UI_MS)
    return toast.first


def test_page_loads_and_backend_is_ready(page, ui_server):
    sync_api.expect(page).to_have_title(re.compile("videoserve"))
    status = page.locator("#backend-status")
    sync_api.expect(status).to_contain_text("Backend ready")
    sync_api.expect(status).to_contain_text("t2v: RUNNING")
    sync_api.expect(status).to_contain_text("i2v: RUNNING")
    sync_api.expect(page.get_by_text(ui_server.backend_url)).to_be_visible()
    sync_api.expect(page.get_by_role("tab", name="Text-to-Video")).to_be_visible()
    sync_api.expect(page.get_by_role("tab", name="Image-to-Video")).to_be_visible()


def test_text_to_video(page, backend_defaults):
    open_advanced(page, "t2v", backend_defaults["t2v"])
    page.locator("#t2v-prompt textarea").fill("A red fox running through fresh snow.")
    page.locator("#t2v-run").click()
    wait_for_video(page, "t2v")
    check_info(page, "t2v", "t2v")
    size = page.locator("#t2v-video video").evaluate(
        "v => [v.videoWidth, v.videoHeight]")
    assert size == [SMALL["width"], SMALL["height"]]
    assert screenshot(page, "t2v.png").stat().st_size > 0


def test_image_to_video(page, backend_defaults, tmp_path):
    image_path = tmp_path / "input.png"
    image = Image.new("RGB", (160, 96), (40, 90, 160))
    image.paste((255, 200, 90), (60, 20, 100, 60))
    image.save(image_path)

    page.get_by_role("tab", name="Image-to-Video").click()
    sync_api.expect(page.locator("#i2v-image")).to_be_visible()
    page.locator("#i2v-image input[type=file]").set_input_files(str(image_path))
    # The upload is done once the component previews the image.
    sync_api.expect(page.locator("#i2v-image img").first).to_be_visible()
    open_advanced(page, "i2v", backend_defaults["i2v"])
    page.locator("#i2v-prompt textarea").fill("The sun slowly sets over the sea.")
    page.locator("#i2v-run").click()
    wait_for_video(page, "i2v")
    check_info(page, "i2v", "i2v")
    assert screenshot(page, "i2v.png").stat().st_size > 0


def test_bad_inputs_show_errors(page):
    # Checked in the UI's handler: an empty prompt.
    page.locator("#t2v-run").click()
    error_toast(page, "Enter a prompt")
    # Rejected by the backend (prompts are limited to 2000 characters); the UI shows its message.
    page.locator("#t2v-prompt textarea").fill("a fox " * 400)
    page.locator("#t2v-run").click()
    error_toast(page, "Backend error: prompt: String should have at most 2000 characters")
    # The I2V tab without an image.
    page.get_by_role("tab", name="Image-to-Video").click()
    page.locator("#i2v-prompt textarea").fill("Clouds drift over the mountains.")
    page.locator("#i2v-run").click()
    error_toast(page, "Upload an image first")
    assert page.locator("#i2v-video video").count() == 0
    assert screenshot(page, "error.png").stat().st_size > 0
