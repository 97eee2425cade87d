"""The Gradio web UI. It talks to the backend only over HTTP (``videoserve.client``).

Handlers first, then the layout, then the wiring (with ``api_name`` so ``gradio_client`` can
drive both tabs).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw

from videoserve.client import BackendError, VideoClient

T2V_EXAMPLES = [
    "A red fox running through fresh snow in a quiet pine forest, soft morning light.",
    "A paper boat drifting down a rain-soaked city street at dusk, neon reflections.",
]
I2V_EXAMPLES = [
    ("The sun slowly sets and the waves roll onto the beach.", "beach"),
    ("Clouds drift over the mountains as the light changes.", "mountains"),
]
# Used until the backend answers /v1/models (then its defaults and limits replace these).
FALLBACK = {
    "defaults": {"height": 480, "width": 832, "num_frames": 81, "num_inference_steps": 40,
                 "guidance_scale": 5.0, "fps": 16, "negative_prompt": ""},
    "limits": {"max_height": 832, "max_width": 832, "max_frames": 81, "max_steps": 50,
               "max_guidance_scale": 20.0},
}


def example_image(kind: str, folder: Path) -> str:
    """Draw a simple example picture (nothing is downloaded) and return its path."""
    path = folder / f"example_{kind}.png"
    if path.exists():
        return str(path)
    image = Image.new("RGB", (832, 480))
    draw = ImageDraw.Draw(image)
    top, bottom = ((255, 170, 90), (40, 90, 160)) if kind == "beach" else (
        (120, 170, 230), (70, 110, 70))
    for y in range(480):
        t = y / 479
        color = tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        draw.line([(0, y), (831, y)], fill=color)
    if kind == "beach":
        draw.ellipse((360, 150, 470, 260), fill=(255, 220, 120))
        draw.rectangle((0, 330, 831, 479), fill=(230, 200, 150))
    else:
        draw.polygon([(0, 400), (250, 120), (480, 400)], fill=(90, 90, 110))
        draw.polygon([(300, 400), (600, 90), (832, 400)], fill=(110, 110, 130))
        draw.polygon([(560, 130), (600, 90), (640, 130)], fill=(250, 250, 250))
    image.save(path)
    return str(path)


@dataclass
class UiConfig:
    backend_url: str
    t2v_model: str | None = None
    i2v_model: str | None = None


def _describe(result: dict[str, Any]) -> str:
    noise = " — random-weight model: the video is noise" if result.get("synthetic") else ""
    return (f"**{result['model_type'].upper()}** · `{result['model']}` via {result['engine']}"
            f"{noise}\n\nseed **{result['seed']}** · {result['num_frames']} frames · "
            f"{result['width']}×{result['height']} @ {result['fps']} fps · "
            f"{result['num_inference_steps']} steps · guidance {result['guidance_scale']}\n\n"
            f"inference {result['inference_time']:.2f} s · encoding "
            f"{result['encoding_time']:.2f} s · total {result['total_time']:.2f} s")


class Handlers:
    """Event handlers; each one is a plain function of the inputs shown in the UI."""

    def __init__(self, config: UiConfig):
        self.config = config
        self.client = VideoClient(config.backend_url)

    def status(self) -> str:
        try:
            ready, models = self.client.ready()
        except BackendError as exc:
            return f"🔴 Backend down: {exc.message}"
        states = ", ".join(f"{task}: {m.get('state', '?')}" for task, m in models.items())
        return f"🟢 Backend ready ({states})" if ready else f"🟡 Backend loading ({states})"

    def _generate(self, model_type: str, prompt: str, image: str | None, negative: str,
                  seed: float | None, randomize: bool, guidance: float, frames: float,
                  height: float, width: float, steps: float) -> tuple[str, str, int]:
        if not prompt or not prompt.strip():
            raise gr.Error("Enter a prompt.")
        if model_type == "i2v" and not image:
            raise gr.Error("Upload an image first.")
        params = dict(model_type=model_type, negative_prompt=negative or None,
                      seed=None if seed is None else int(seed), randomize_seed=bool(randomize),
                      guidance_scale=float(guidance), num_frames=int(frames),
                      height=int(height), width=int(width), num_inference_steps=int(steps))
        try:
            result = self.client.generate(prompt, image=image, **params)
            video = self.client.download(result)
        except BackendError as exc:
            raise gr.Error(f"Backend error: {exc.message}") from None
        with tempfile.NamedTemporaryFile(suffix=".mp4", prefix="videoserve-ui-",
                                         delete=False) as handle:
            handle.write(video)
        return handle.name, _describe(result), int(result["seed"])

    def t2v(self, prompt: str, negative: str, seed: float | None, randomize: bool,
            guidance: float, frames: float, height: float, width: float,
            steps: float) -> tuple[str, str, int]:
        return self._generate("t2v", prompt, None, negative, seed, randomize, guidance, frames,
                              height, width, steps)

    def i2v(self, prompt: str, image: str | None, negative: str, seed: float | None,
            randomize: bool, guidance: float, frames: float, height: float, width: float,
            steps: float) -> tuple[str, str, int]:
        return self._generate("i2v", prompt, image, negative, seed, randomize, guidance, frames,
                              height, width, steps)

    def model_settings(self, task: str) -> list[Any]:
        """Slider updates from the backend's defaults and limits for ``task``."""
        try:
            model = self.client.models().get(task, FALLBACK)
        except BackendError:
            model = FALLBACK
        d, lim = model["defaults"], model["limits"]
        return [
            gr.update(value=d.get("negative_prompt", "")),
            gr.update(value=d["guidance_scale"], maximum=lim["max_guidance_scale"]),
            gr.update(value=d["num_frames"], maximum=lim["max_frames"]),
            gr.update(value=d["height"], maximum=lim["max_height"]),
            gr.update(value=d["width"], maximum=lim["max_width"]),
            gr.update(value=d["num_inference_steps"], maximum=lim["max_steps"]),
        ]


def _advanced(prefix: str) -> list[gr.components.Component]:
    d, lim = FALLBACK["defaults"], FALLBACK["limits"]
    with gr.Accordion("Advanced parameters", open=False):
        negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{prefix}-negative")
        with gr.Row():
            seed = gr.Number(label="Seed", value=42, precision=0, minimum=0,
                             elem_id=f"{prefix}-seed")
            randomize = gr.Checkbox(label="Randomize seed", value=True,
                                    elem_id=f"{prefix}-randomize")
            guidance = gr.Slider(0, lim["max_guidance_scale"], value=d["guidance_scale"],
                                 step=0.5, label="Guidance scale")
        with gr.Row():
            frames = gr.Slider(1, lim["max_frames"], value=d["num_frames"], step=4,
                               label="Frames (4k+1)", elem_id=f"{prefix}-frames")
            steps = gr.Slider(1, lim["max_steps"], value=d["num_inference_steps"], step=1,
                              label="Inference steps", elem_id=f"{prefix}-steps")
        with gr.Row():
            height = gr.Slider(16, lim["max_height"], value=d["height"], step=16,
                               label="Height", elem_id=f"{prefix}-height")
            width = gr.Slider(16, lim["max_width"], value=d["width"], step=16, label="Width",
                              elem_id=f"{prefix}-width")
    return [negative, seed, randomize, guidance, frames, height, width, steps]


def _outputs(prefix: str) -> tuple[gr.Video, gr.Markdown]:
    video = gr.Video(label="Generated video", elem_id=f"{prefix}-video", autoplay=True)
    info = gr.Markdown(elem_id=f"{prefix}-info")
    return video, info


def build_ui(config: UiConfig, assets: Path | None = None) -> gr.Blocks:
    """The whole app: status line, a Text-to-Video tab and an Image-to-Video tab."""
    handlers = Handlers(config)
    assets = assets or Path(tempfile.gettempdir()) / "videoserve-ui"
    assets.mkdir(parents=True, exist_ok=True)
    with gr.Blocks(title="videoserve — FastVideo T2V / I2V") as demo:
        gr.Markdown(f"# FastVideo video generation\nBackend: `{config.backend_url}`")
        status = gr.Markdown("Checking the backend…", elem_id="backend-status")
        with gr.Tab("Text-to-Video", id="t2v"):
            if config.t2v_model:
                gr.Markdown(f"Model: `{config.t2v_model}`")
            t2v_prompt = gr.Textbox(label="Prompt", lines=3, elem_id="t2v-prompt")
            t2v_run = gr.Button("Run", variant="primary", elem_id="t2v-run")
            t2v_params = _advanced("t2v")
            t2v_video, t2v_info = _outputs("t2v")
            gr.Examples(T2V_EXAMPLES, inputs=[t2v_prompt], label="Example prompts")
        with gr.Tab("Image-to-Video", id="i2v"):
            if config.i2v_model:
                gr.Markdown(f"Model: `{config.i2v_model}`")
            i2v_image = gr.Image(label="Input image", type="filepath", elem_id="i2v-image")
            i2v_prompt = gr.Textbox(label="Prompt", lines=3, elem_id="i2v-prompt")
            i2v_run = gr.Button("Run", variant="primary", elem_id="i2v-run")
            i2v_params = _advanced("i2v")
            i2v_video, i2v_info = _outputs("i2v")
            gr.Examples([[p, example_image(k, assets)] for p, k in I2V_EXAMPLES],
                        inputs=[i2v_prompt, i2v_image], label="Examples")
        seed_out = gr.Number(visible=False)

        demo.load(handlers.status, outputs=status, api_name=False)
        demo.load(lambda: handlers.model_settings("t2v"),
                  outputs=[t2v_params[0], *t2v_params[3:]], api_name=False)
        demo.load(lambda: handlers.model_settings("i2v"),
                  outputs=[i2v_params[0], *i2v_params[3:]], api_name=False)
        t2v_run.click(handlers.t2v, inputs=[t2v_prompt, *t2v_params],
                      outputs=[t2v_video, t2v_info, seed_out], api_name="generate_t2v")
        i2v_run.click(handlers.i2v, inputs=[i2v_prompt, i2v_image, *i2v_params],
                      outputs=[i2v_video, i2v_info, seed_out], api_name="generate_i2v")
    return demo


def main(argv: list[str] | None = None) -> int:
    """Command line of the UI (gradio_frontend.py)."""
    import argparse

    parser = argparse.ArgumentParser(description="Gradio UI for the videoserve backend.")
    parser.add_argument("--backend_url", default="http://127.0.0.1:8000")
    parser.add_argument("--t2v_model_path", default=None, help="shown in the T2V tab")
    parser.add_argument("--i2v_model_path", default=None, help="shown in the I2V tab")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    assets = Path(tempfile.gettempdir()) / "videoserve-ui"
    demo = build_ui(UiConfig(args.backend_url, args.t2v_model_path, args.i2v_model_path),
                    assets)
    demo.queue(default_concurrency_limit=8).launch(
        server_name=args.host, server_port=args.port, allowed_paths=[str(assets)],
        show_error=True)
    return 0
