"""The Gradio web UI. It talks to the backend only over HTTP (``videoserve.client``).

Layout, then wiring (handlers live in ``videoserve.ui.handlers``; ``api_name`` lets
``gradio_client`` drive both tabs).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw

from videoserve.ui.handlers import (
    CANCEL_LABEL,
    FALLBACK,
    HISTORY_COLUMNS,
    MAX_LORAS,
    NO_LORA,
    NO_LORA_CHOICE,
    PREVIEW_POLL_S,
    Handlers,
    picked_loras,
    picker_values,
)

T2V_EXAMPLES = [
    "A red fox running through fresh snow in a quiet pine forest, soft morning light.",
    "A paper boat drifting down a rain-soaked city street at dusk, neon reflections.",
]
I2V_EXAMPLES = [
    ("The sun slowly sets and the waves roll onto the beach.", "beach"),
    ("Clouds drift over the mountains as the light changes.", "mountains"),
]
# Fixed shares of the table's width: sized by their content, the columns overflow a laptop's
# window and the LoRAs (long ids) are cut off.
HISTORY_WIDTHS = {"id": "15%", "created": "10%", "type": "5%", "status": "9%", "prompt": "18%",
                  "loras": "20%", "seed": "9%", "size": "6%", "frames": "4%", "steps": "4%"}


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
    # The backend's API key (default: $VIDEOSERVE_API_KEY). The UI itself has no login.
    api_key: str | None = field(default=None, repr=False)


def _params(negative: str, seed: float | None, randomize: bool, guidance: float, frames: float,
            height: float, width: float, steps: float, lora_rows: list[Any]) -> dict[str, Any]:
    return dict(negative_prompt=negative or None, seed=None if seed is None else int(seed),
                randomize_seed=bool(randomize), guidance_scale=float(guidance),
                num_frames=int(frames), height=int(height), width=int(width),
                num_inference_steps=int(steps), loras=picked_loras(lora_rows))


def _reuse(jobs: list[dict[str, Any]], index: int | None) -> list[Any]:
    """Fill the form of the selected job's tab with its settings and switch to that tab."""
    if index is None or index >= len(jobs):
        raise gr.Error("Select a video in the history first.")
    job = jobs[index]
    values = [job["prompt"], job["negative_prompt"], job["seed"], False, job["guidance_scale"],
              job["num_frames"], job["height"], job["width"], job["num_inference_steps"],
              *picker_values(job.get("loras") or [])]
    keep = [gr.update()] * len(values)
    t2v, i2v = (values, keep) if job["model_type"] == "t2v" else (keep, values)
    return [gr.Tabs(selected=job["model_type"]), *t2v, *i2v]


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
            frames = gr.Slider(1, lim["max_num_frames"], value=d["num_frames"], step=4,
                               label="Frames (4k+1)", elem_id=f"{prefix}-frames")
            steps = gr.Slider(1, lim["max_num_inference_steps"], value=d["num_inference_steps"],
                              step=1,
                              label="Inference steps", elem_id=f"{prefix}-steps")
        with gr.Row():
            height = gr.Slider(16, lim["max_height"], value=d["height"], step=16,
                               label="Height", elem_id=f"{prefix}-height")
            width = gr.Slider(16, lim["max_width"], value=d["width"], step=16, label="Width",
                              elem_id=f"{prefix}-width")
    return [negative, seed, randomize, guidance, frames, height, width, steps]


def _lora_picker(task: str) -> dict[str, Any]:
    """Up to MAX_LORAS rows of (LoRA, strength). Fixed rows rather than a multiselect plus
    sliders that follow it: each strength stays next to its LoRA, with nothing to re-pair when
    one is removed. The choices and the model's default LoRAs arrive on load."""
    with gr.Accordion("LoRAs", open=True):
        with gr.Row():
            note = gr.Markdown("Reading the server's LoRA folder…", elem_id=f"{task}-lora-note")
            refresh = gr.Button("Refresh LoRAs", size="sm", scale=0,
                                elem_id=f"{task}-lora-refresh")
        rows = []
        for row in range(MAX_LORAS):
            with gr.Row():
                # Custom values: a job reused from the history may name a LoRA no longer
                # offered, and gradio_client callers never get the choices; the backend checks.
                rows.append(gr.Dropdown([NO_LORA_CHOICE], value=NO_LORA, allow_custom_value=True,
                                        label=f"LoRA {row + 1}", scale=3,
                                        elem_id=f"{task}-lora-{row}"))
                rows.append(gr.Slider(0, 2, value=1.0, step=0.05, label="Strength", scale=2,
                                      elem_id=f"{task}-lora-{row}-scale"))
    return {"note": note, "refresh": refresh, "rows": rows}


def _outputs(prefix: str) -> tuple[gr.Image, gr.Video, gr.Markdown]:
    # Gradio keeps a copy of each preview; WebP, as the backend sends it (PIL decodes it first).
    preview = gr.Image(label="Live preview", type="pil", format="webp", interactive=False,
                       elem_id=f"{prefix}-preview")
    video = gr.Video(label="Generated video", elem_id=f"{prefix}-video", autoplay=True)
    info = gr.Markdown(elem_id=f"{prefix}-info")
    return preview, video, info


def _task_tab(task: str, title: str, model: str | None, assets: Path) -> dict[str, Any]:
    """Two columns, as in Gradio's demos: the inputs left; the live preview, the video and its
    description right (stacked below the inputs in a narrow window)."""
    with gr.Tab(title, id=task) as tab:
        # Filled from the backend's /v1/models on load and every few seconds (models can be
        # switched while the backend runs); the flag's value shows until then.
        model_line = gr.Markdown(f"Model: `{model}`" if model else "Model: …",
                                 elem_id=f"{task}-model")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, elem_id=f"{task}-inputs"):
                image = (gr.Image(label="Input image", type="filepath", elem_id="i2v-image")
                         if task == "i2v" else None)
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{task}-prompt")
                with gr.Row():
                    run = gr.Button("Run", variant="primary", elem_id=f"{task}-run")
                    # Enabled while this page's job of the tab is queued or running.
                    cancel = gr.Button(CANCEL_LABEL, variant="stop", interactive=False,
                                       elem_id=f"{task}-cancel")
                loras = _lora_picker(task)
                params = _advanced(task)
                if task == "t2v":
                    gr.Examples(T2V_EXAMPLES, inputs=[prompt], label="Example prompts")
                else:
                    gr.Examples([[p, example_image(k, assets)] for p, k in I2V_EXAMPLES],
                                inputs=[prompt, image], label="Examples")
            with gr.Column(scale=1, elem_id=f"{task}-outputs"):
                preview, video, info = _outputs(task)
        # Ticks while a job of the tab runs: shows the newest preview its run fetched.
        timer = gr.Timer(PREVIEW_POLL_S, active=False)
    return {"tab": tab, "prompt": prompt, "image": image, "run": run, "cancel": cancel,
            "params": params, "loras": loras, "preview": preview, "video": video,
            "info": info, "model": model_line, "timer": timer}


def _history_tab() -> dict[str, Any]:
    with gr.Tab("History", id="history") as tab:
        with gr.Row():
            refresh = gr.Button("Refresh", elem_id="history-refresh")
            reuse = gr.Button("Reuse these settings", elem_id="history-reuse")
        table = gr.Dataframe(headers=HISTORY_COLUMNS, interactive=False, wrap=True,
                             column_widths=[HISTORY_WIDTHS[c] for c in HISTORY_COLUMNS],
                             elem_id="history-table")
        video = gr.Video(label="Selected video", elem_id="history-video")
        info = gr.Markdown(elem_id="history-info")
    return {"tab": tab, "refresh": refresh, "reuse": reuse, "table": table, "video": video,
            "info": info}


def build_ui(config: UiConfig, assets: Path | None = None) -> gr.Blocks:
    """The app: a status line, Text-to-Video, Image-to-Video and History tabs."""
    handlers = Handlers(config.backend_url, api_key=config.api_key)
    assets = assets or Path(tempfile.gettempdir()) / "videoserve-ui"
    assets.mkdir(parents=True, exist_ok=True)
    with gr.Blocks(title="videoserve — FastVideo T2V / I2V", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# FastVideo video generation\nBackend: `{config.backend_url}`")
        status = gr.Markdown("Checking the backend…", elem_id="backend-status")
        with gr.Tabs() as tabs:
            t2v = _task_tab("t2v", "Text-to-Video", config.t2v_model, assets)
            i2v = _task_tab("i2v", "Image-to-Video", config.i2v_model, assets)
            history = _history_tab()
        seed_out = gr.Number(visible=False)
        jobs, selected = gr.State([]), gr.State(None)
        _wire(demo, handlers, status, tabs, t2v, i2v, history, seed_out, jobs, selected)
    return demo


def _wire(demo: gr.Blocks, handlers: Handlers, status: gr.Markdown, tabs: gr.Tabs,
          t2v: dict, i2v: dict, history: dict, seed_out: gr.Number, jobs: gr.State,
          selected: gr.State) -> None:
    timer = gr.Timer(5)
    for trigger in (timer.tick, demo.load):
        trigger(handlers.status, outputs=status, api_name=False)
        trigger(handlers.model_lines, outputs=[t2v["model"], i2v["model"]], api_name=False)
    for task, tab in (("t2v", t2v), ("i2v", i2v)):
        p = tab["params"]
        demo.load(lambda task=task: handlers.model_settings(task),
                  outputs=[p[0], *p[3:]], api_name=False)
        _wire_loras(demo, handlers, task, tab)

    def cancel_t2v(request: gr.Request):
        return handlers.cancel("t2v", request.session_hash)

    def cancel_i2v(request: gr.Request):
        return handlers.cancel("i2v", request.session_hash)

    # The LoRA rows are named parameters (gradio_client callers see lora_1, strength_1 ...);
    # Gradio passes gr.Request and gr.Progress by position, so they cannot follow a *rows.
    def run_t2v(prompt, negative, seed, randomize, guidance, frames, height, width, steps,
                lora_1, strength_1, lora_2, strength_2, lora_3, strength_3, lora_4, strength_4,
                request: gr.Request, progress=gr.Progress()):  # noqa: B008
        rows = [lora_1, strength_1, lora_2, strength_2, lora_3, strength_3, lora_4, strength_4]
        params = _params(negative, seed, randomize, guidance, frames, height, width, steps,
                         rows)
        return handlers.run("t2v", prompt, None, params, request.session_hash, progress)

    def run_i2v(prompt, image, negative, seed, randomize, guidance, frames, height, width,
                steps, lora_1, strength_1, lora_2, strength_2, lora_3, strength_3, lora_4,
                strength_4, request: gr.Request, progress=gr.Progress()):  # noqa: B008
        rows = [lora_1, strength_1, lora_2, strength_2, lora_3, strength_3, lora_4, strength_4]
        params = _params(negative, seed, randomize, guidance, frames, height, width, steps,
                         rows)
        return handlers.run("i2v", prompt, image, params, request.session_hash, progress)

    inputs = {"t2v": [t2v["prompt"], *t2v["params"], *t2v["loras"]["rows"]],
              "i2v": [i2v["prompt"], i2v["image"], *i2v["params"], *i2v["loras"]["rows"]]}
    for task, tab, run, cancel in (("t2v", t2v, run_t2v, cancel_t2v),
                                   ("i2v", i2v, run_i2v, cancel_i2v)):
        _wire_run(handlers, task, tab, run, cancel, inputs[task], seed_out)

    def select(all_jobs: list, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return (row, *handlers.show(all_jobs, row))

    for trigger in (history["refresh"].click, history["tab"].select):
        trigger(handlers.history, outputs=[history["table"], jobs], api_name=False)
    history["table"].select(select, inputs=jobs,
                            outputs=[selected, history["video"], history["info"]],
                            api_name=False)
    form = lambda tab: [tab["prompt"], *tab["params"], *tab["loras"]["rows"]]  # noqa: E731
    history["reuse"].click(_reuse, inputs=[jobs, selected],
                           outputs=[tabs, *form(t2v), *form(i2v)], api_name=False)


def _wire_run(handlers: Handlers, task: str, tab: dict, run, cancel, inputs: list,
              seed_out: gr.Number) -> None:
    """Run: clear the preview and enable Cancel, follow the job (the API endpoint
    generate_{task}: video, description, seed), then Cancel idles again. The timer shows the
    previews the run fetches meanwhile. Cancel shows "Cancelling…" until the run ends."""
    def started(request: gr.Request):
        return handlers.started(task, request.session_hash)

    def ended(request: gr.Request):
        return handlers.ended(task, request.session_hash)

    def preview(request: gr.Request):
        return handlers.preview(task, request.session_hash)

    around = [tab["preview"], tab["cancel"], tab["timer"]]
    quiet = {"api_name": False, "show_progress": "hidden"}
    tab["run"].click(started, outputs=around, queue=False, **quiet).then(
        run, inputs=inputs, outputs=[tab["video"], tab["info"], seed_out],
        api_name=f"generate_{task}").then(ended, outputs=around, **quiet)
    tab["timer"].tick(preview, outputs=tab["preview"], concurrency_limit=None, **quiet)
    # Both at once (not chained: the cancel must not wait for the label's round trip).
    tab["cancel"].click(handlers.cancelling, outputs=tab["cancel"], queue=False, **quiet)
    tab["cancel"].click(cancel, outputs=tab["cancel"], api_name=f"cancel_{task}",
                        show_progress="hidden")


def _wire_loras(demo: gr.Blocks, handlers: Handlers, task: str, tab: dict) -> None:
    """The picker starts from the model's default LoRAs; the choices are read again when its
    tab is opened or on its Refresh button (the chosen rows are kept)."""
    picker = tab["loras"]
    demo.load(lambda: handlers.lora_picker(task), outputs=[picker["note"], *picker["rows"]],
              api_name=False)
    lora_ids = picker["rows"][0::2]
    for trigger in (tab["tab"].select, picker["refresh"].click):
        trigger(lambda: handlers.refresh_loras(task), outputs=[picker["note"], *lora_ids],
                api_name=False)


def main(argv: list[str] | None = None) -> int:
    """Command line of the UI (gradio_frontend.py)."""
    import argparse

    parser = argparse.ArgumentParser(description="Gradio UI for the videoserve backend.")
    parser.add_argument("--backend_url", default="http://127.0.0.1:8000")
    parser.add_argument("--t2v_model_path", default=None, help="shown in the T2V tab")
    parser.add_argument("--i2v_model_path", default=None, help="shown in the I2V tab")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--api_key", default=None,
                        help="the backend's API key (default: $VIDEOSERVE_API_KEY)")
    args = parser.parse_args(argv)
    assets = Path(tempfile.gettempdir()) / "videoserve-ui"
    demo = build_ui(UiConfig(args.backend_url, args.t2v_model_path, args.i2v_model_path,
                             args.api_key), assets)
    demo.queue(default_concurrency_limit=8).launch(
        server_name=args.host, server_port=args.port, allowed_paths=[str(assets)],
        show_error=True)
    return 0
