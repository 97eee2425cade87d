"""Event handlers of the Gradio UI: plain functions of what the page shows, over HTTP only."""

from __future__ import annotations

import io
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from videoserve.client import FINAL, BackendError, VideoClient

# Used until the backend answers /v1/models (then its defaults and limits replace these).
FALLBACK = {
    "defaults": {"height": 480, "width": 832, "num_frames": 81, "num_inference_steps": 40,
                 "guidance_scale": 5.0, "fps": 16, "negative_prompt": ""},
    "limits": {"max_height": 832, "max_width": 832, "max_num_frames": 81,
               "max_num_inference_steps": 50,
               "max_guidance_scale": 20.0},
}
# "loras" next to the prompt: the columns after it are cut off in a narrow window.
HISTORY_COLUMNS = ["id", "created", "type", "status", "prompt", "loras", "seed", "size",
                   "frames", "steps"]
KEEP_DOWNLOADS_S = 3600
MAX_LORAS = 4  # the backend's limit per request: the picker has this many rows
# The "none" choice of a LoRA row: a single-choice Dropdown cannot be emptied otherwise.
NO_LORA = ""
NO_LORA_CHOICE = ("none", NO_LORA)
# The backend makes a new live preview at most about twice a second: asking more often is waste.
PREVIEW_POLL_S = 0.5
CANCEL_LABEL, CANCELLING_LABEL = "Cancel", "Cancelling…"


def loras_text(loras: Sequence[dict[str, Any]]) -> str:
    """``id×scale, ...`` (empty for none)."""
    return ", ".join(f"{lora['id']}×{lora['scale']:g}" for lora in loras)


def lora_choices(loras: list[dict[str, Any]], task: str) -> list[tuple[str, str]]:
    """A LoRA row's choices for the task's tab: "none", then the LoRAs that fit its model
    (a file with an error fits none: its ``tasks`` is empty)."""
    fitting = sorted(lora["id"] for lora in loras if task in lora.get("tasks", ())
                     and not lora.get("error"))
    return [NO_LORA_CHOICE, *((lora_id, lora_id) for lora_id in fitting)]


def lora_note(loras: list[dict[str, Any]], task: str) -> str:
    """What the LoRA folder offers this task, and which of its files are unusable."""
    count = len(lora_choices(loras, task)) - 1
    note = f"LoRAs in the server's LoRA folder that fit this model: {count}."
    broken = [lora["id"] for lora in loras if lora.get("error")]
    if broken:
        note += f" Unusable: {', '.join(f'`{name}`' for name in broken)}."
    return note


def picked_loras(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """The request's ``loras`` from the picker's rows (id, strength, id, strength, ...).

    Always a list: the picker starts from the model's default LoRAs, so rows left at "none"
    mean the user wants none ([]), never "the model's defaults" (an unset ``loras``).
    """
    picked = [{"id": lora_id.strip(), "scale": 1.0 if scale is None else float(scale)}
              for lora_id, scale in zip(rows[0::2], rows[1::2], strict=True)
              if lora_id and lora_id.strip()]
    ids = [lora["id"] for lora in picked]
    twice = sorted({lora_id for lora_id in ids if ids.count(lora_id) > 1})
    if twice:
        raise gr.Error(f"Choose each LoRA once ({', '.join(twice)} is chosen twice).")
    return picked


def picker_values(loras: Sequence[dict[str, Any]]) -> list[Any]:
    """The picker's row values (id, strength, ...) showing ``loras``; the other rows "none"."""
    rows = [(lora["id"], lora["scale"]) for lora in loras[:MAX_LORAS]]
    rows += [(NO_LORA, 1.0)] * (MAX_LORAS - len(rows))
    return [value for row in rows for value in row]


def history_row(job: dict[str, Any]) -> list[Any]:
    """A job's row of the History table, in HISTORY_COLUMNS' order."""
    cells = {"id": job["id"], "type": job["model_type"], "status": job["status"],
             "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["created_at"])),
             "prompt": job["prompt"], "loras": loras_text(job.get("loras") or ()),
             "seed": job["seed"], "size": job["size"], "frames": job["num_frames"],
             "steps": job["num_inference_steps"]}
    return [cells[column] for column in HISTORY_COLUMNS]


def describe(job: dict[str, Any]) -> str:
    """The seed, parameters and timings of a finished job, for the page."""
    noise = " — random-weight model: the video is noise" if job.get("synthetic") else ""
    result = job.get("result") or {}
    cached = " · served from cache" if job.get("cached") else ""
    loras = loras_text(job.get("loras") or ())
    return (f"**{job['model_type'].upper()}** · `{job['model']}` via {job['engine']}{noise}\n\n"
            f"seed **{job['seed']}** · {job['num_frames']} frames · "
            f"{job['width']}×{job['height']} @ {job['fps']} fps · "
            f"{job['num_inference_steps']} steps · guidance {job['guidance_scale']}\n\n"
            f"LoRAs: {loras or 'none'}\n\n"
            f"inference {result.get('inference_time', 0):.2f} s · encoding "
            f"{result.get('encoding_time', 0):.2f} s · total {result.get('total_time', 0):.2f} s"
            f"{cached}")


STAGE_TEXT = {
    "starting": "Starting",
    "encoding_prompt": "Encoding the prompt",
    "encoding_image": "Encoding the image",
    "decoding": "Decoding frames",
    "encoding_video": "Encoding the video",
}


def progress_text(job: dict[str, Any]) -> str:
    detail = job["progress_detail"]
    if job["status"] in FINAL:
        return job["status"].capitalize()
    if job["status"] == "queued":
        return f"Queued (position {(detail['queue_position'] or 0) + 1})"
    stage = detail["stage"]
    if stage == "denoising":
        return f"Denoising step {detail['step']}/{detail['total_steps']}"
    return STAGE_TEXT.get(stage, "Starting")


def model_line(model: dict[str, Any] | None) -> str:
    """``Model: `id` (engine)``, with what a user must know: noise, switching, unloaded."""
    if model is None or not model.get("id"):
        return "Model: none deployed for this task"
    line = f"Model: `{model['id']}` ({model.get('engine', '?')})"
    if model.get("synthetic"):
        line += " — random weights: output is noise"
    if model.get("state") == "unloaded":
        line += " — **unloaded**"
    switching = model.get("switching_to")
    if switching:
        line += f" — switching to `{switching['id']}`"
    return line


class PreviewPoller:
    """Fetches a job's newest live preview from the run's poll loop: at most every
    PREVIEW_POLL_S while it runs, once more when it is final (the last one may have come after
    the last poll); a preview is returned once, the step it shows must be new."""

    def __init__(self, client: VideoClient, job_id: str):
        self.client, self.job_id = client, job_id
        self.step: int | None = None
        self.asked_at = float("-inf")

    def poll(self, status: str) -> tuple[int, bytes] | None:
        now = time.monotonic()
        if status == "queued" or (status not in FINAL and now - self.asked_at < PREVIEW_POLL_S):
            return None
        self.asked_at = now
        try:
            answer = self.client.preview(self.job_id)
        except BackendError:
            return None  # no preview is no reason to fail the run
        if answer is None or answer[0] == self.step:
            return None
        self.step = answer[0]
        return answer


class Handlers:
    """Everything the UI's buttons do."""

    def __init__(self, backend_url: str, downloads: Path | None = None,
                 api_key: str | None = None):
        self.client = VideoClient(backend_url, api_key=api_key)
        self.downloads = downloads or Path(tempfile.mkdtemp(prefix="videoserve-ui-"))
        self.downloads.mkdir(parents=True, exist_ok=True)
        # The job each browser session is running, per task (for the Cancel buttons).
        self._running: dict[str, dict[str, str]] = defaultdict(dict)
        # The newest live preview a run fetched that its tab has not shown yet, per
        # (session, task): (step, WebP bytes). The run's poll loop puts, the tab's timer takes.
        self._previews: dict[tuple[str, str], tuple[int, bytes]] = {}
        # The (session, task)s whose page shows a run under way (from its Run click until the
        # run returns), and those whose Cancel was clicked before the job was submitted.
        self._armed: set[tuple[str, str]] = set()
        self._cancel_asked: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def status(self) -> str:
        try:
            ready, models = self.client.ready()
        except BackendError as exc:
            return f"**Backend down:** {exc.message}"
        states = ", ".join(f"{task}: {m.get('state', '?')}" for task, m in models.items())
        return f"Backend ready ({states})" if ready else f"**Backend loading** ({states})"

    def model_lines(self) -> list[Any]:
        """The model line of the T2V and I2V tabs: what serves each task right now."""
        try:
            models = self.client.models()
        except BackendError:
            return [gr.update(), gr.update()]  # keep the last known line
        return [model_line(models.get(task)) for task in ("t2v", "i2v")]

    def _model(self, task: str) -> dict[str, Any]:
        """The task's model from /v1/models (FALLBACK if none answers)."""
        try:
            model = self.client.models().get(task, FALLBACK)
        except BackendError:
            model = FALLBACK
        return model if "defaults" in model else FALLBACK

    def model_settings(self, task: str) -> list[Any]:
        """Updates for [negative, guidance, frames, height, width, steps] from the backend."""
        model = self._model(task)
        d, lim = model["defaults"], model["limits"]
        return [
            gr.update(value=d.get("negative_prompt", "")),
            gr.update(value=d["guidance_scale"], maximum=lim["max_guidance_scale"]),
            gr.update(value=d["num_frames"], maximum=lim["max_num_frames"]),
            gr.update(value=d["height"], maximum=lim["max_height"]),
            gr.update(value=d["width"], maximum=lim["max_width"]),
            gr.update(value=d["num_inference_steps"], maximum=lim["max_num_inference_steps"]),
        ]

    def _offered(self, task: str) -> tuple[Any, dict[str, Any]]:
        """The picker's note and its rows' choices (as update arguments); the folder is read
        again each time, so new files show up without a restart."""
        try:
            loras = self.client.loras()
        except BackendError:
            return gr.update(), {}  # keep what the picker offers
        return lora_note(loras, task), {"choices": lora_choices(loras, task)}

    def refresh_loras(self, task: str) -> list[Any]:
        """Updates for [note, row 1's id, ..., row 4's id]: the LoRAs offered now; the chosen
        ones stay."""
        note, choices = self._offered(task)
        return [note, *(gr.update(**choices) for _ in range(MAX_LORAS))]

    def lora_picker(self, task: str) -> list[Any]:
        """Updates for [note, id, strength, id, strength, ...]: the LoRAs offered, with the
        model's default LoRAs chosen (what a request that names none would get)."""
        note, choices = self._offered(task)
        values = picker_values(self._model(task).get("loras", []))
        rows = [gr.update(value=value, **({} if i % 2 else choices))
                for i, value in enumerate(values)]
        return [note, *rows]

    def _save(self, job_id: str) -> str:
        cutoff = time.time() - KEEP_DOWNLOADS_S
        for old in self.downloads.glob("*.mp4"):
            if old.stat().st_mtime < cutoff:
                old.unlink(missing_ok=True)
        path = self.downloads / f"{job_id}.mp4"
        path.write_bytes(self.client.content(job_id))
        return str(path)

    def run(self, task: str, prompt: str, image: str | None, params: dict[str, Any],
            session: str, progress: gr.Progress) -> tuple[str | None, str, int | None]:
        if not prompt or not prompt.strip():
            raise gr.Error("Enter a prompt.")
        if task == "i2v" and not image:
            raise gr.Error("Upload an image first.")
        try:
            job = self.client.submit(prompt, image=image, model_type=task, **params)
            with self._lock:
                self._running[session][task] = job["id"]
                asked = (session, task) in self._cancel_asked
                self._cancel_asked.discard((session, task))
            if asked:  # Cancel was clicked while the run waited in the UI's queue
                self.client.cancel(job["id"])
            progress(0, desc="Queued")
            previews = PreviewPoller(self.client, job["id"])

            def follow(j: dict[str, Any]) -> None:
                progress(j["progress"] / 100, desc=progress_text(j))
                newest = previews.poll(j["status"])
                if newest is not None:
                    self._previews[(session, task)] = newest

            job = self.client.wait(job["id"], poll_s=0.2, on_progress=follow)
            if job["status"] == "cancelled":
                at = (job.get("cancellation") or {}).get("stopped_at_step")
                where = f" at step {at}" if at is not None else " before it started"
                return None, f"Cancelled{where}.", job["seed"]
            if job["status"] == "failed":
                raise gr.Error(f"Generation failed: {job['error']['message']}")
            return self._save(job["id"]), describe(job), job["seed"]
        except BackendError as exc:
            raise gr.Error(f"Backend error: {exc.message}") from None
        finally:
            self._running[session].pop(task, None)

    def started(self, task: str, session: str) -> list[Any]:
        """Updates for [preview, Cancel, timer] as the tab's Run is clicked: the last job's
        preview goes, Cancel can be clicked, the timer shows the new previews."""
        self._previews.pop((session, task), None)
        with self._lock:
            self._armed.add((session, task))
            self._cancel_asked.discard((session, task))
        return [None, gr.update(value=CANCEL_LABEL, interactive=True), gr.Timer(active=True)]

    def preview(self, task: str, session: str) -> Any:
        """The tab's timer tick: the newest preview its run fetched, if not shown yet."""
        newest = self._previews.pop((session, task), None)
        if newest is None:
            return gr.update()
        return Image.open(io.BytesIO(newest[1]))

    def ended(self, task: str, session: str) -> list[Any]:
        """Updates for [preview, Cancel, timer] once the tab's run has returned (the job is
        final, or never started): its last preview stays, Cancel is idle again."""
        with self._lock:
            self._armed.discard((session, task))
            self._cancel_asked.discard((session, task))
        return [self.preview(task, session),
                gr.update(value=CANCEL_LABEL, interactive=False), gr.Timer(active=False)]

    @staticmethod
    def cancelling() -> Any:
        """The Cancel button from its click until the run ends (or the cancel fails)."""
        return gr.update(value=CANCELLING_LABEL, interactive=False)

    def cancel(self, task: str, session: str) -> Any:
        """Ask the backend to cancel the session's job of this task; an update for the Cancel
        button (it shows CANCELLING_LABEL from the click until the run ends)."""
        with self._lock:
            job_id = self._running.get(session, {}).get(task)
            if job_id is None and (session, task) in self._armed:
                # Run was clicked but its job is not submitted yet: the run cancels it then.
                self._cancel_asked.add((session, task))
                return gr.update()
        if job_id is None:
            gr.Info("Nothing is running.")
            return gr.update(value=CANCEL_LABEL, interactive=False)
        try:
            # Either answer is fine: the job cancelled already, or still in_progress with
            # cancellation.requested_at set; the run's poll loop sees it become final.
            self.client.cancel(job_id)
        except BackendError as exc:
            gr.Warning(f"Backend error: {exc.message}")
            return gr.update(value=CANCEL_LABEL, interactive=True)
        return gr.update()

    def history(self) -> tuple[list[list[Any]], list[dict[str, Any]]]:
        try:
            jobs = self.client.list(limit=50)["data"]
        except BackendError as exc:
            raise gr.Error(f"Backend error: {exc.message}") from None
        return [history_row(job) for job in jobs], jobs

    def show(self, jobs: list[dict[str, Any]], index: int) -> tuple[str | None, str]:
        job = jobs[index]
        if job["status"] != "completed":
            return None, f"`{job['id']}` is {job['status']}."
        try:
            return self._save(job["id"]), describe(job)
        except BackendError as exc:
            return None, f"`{job['id']}`: {exc.message}"
