"""The diffusers engine: Wan pipelines from diffusers, on CPU or GPU.

It is the reference implementation, the default where no GPU exists, and the baseline the
benchmarks compare the fastvideo engine against. It reports every denoising step and stops at
the next step when cancelled. Frames are encoded to MP4 here, in the process that holds them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from videoserve.core.media import encode_mp4
from videoserve.engines.base import (
    CancelFn,
    Engine,
    GenerationCancelled,
    GenerationOutput,
    GenerationParams,
    ProgressFn,
)
from videoserve.engines.preview import PreviewFn

log = logging.getLogger(__name__)


class DiffusersEngine(Engine):
    """Loads a Diffusers-format Wan folder once and generates from it."""

    name = "diffusers"

    def __init__(self, model_path: Path, task: str, device: str, options: dict[str, Any]):
        import torch

        from videoserve.engines.diffusers.loading import load_diffusers_pipeline

        self._torch = torch
        self.task = task
        ignored = sorted(set(options) - {"torch_dtype", "num_threads"})
        if ignored:
            log.info("diffusers engine: options for the fastvideo engine ignored: %s", ignored)
        self.device = device
        dtype_name = options.get("torch_dtype", "bfloat16" if device == "cuda" else "float32")
        self.dtype = getattr(torch, dtype_name)
        if device == "cpu" and "num_threads" in options:
            torch.set_num_threads(int(options["num_threads"]))
        from videoserve.engines.preview import LatentPreview

        # Live previews: the projection is fitted on its own thread while the pipeline loads.
        self.previewer = LatentPreview(model_path)
        self.pipe = load_diffusers_pipeline(model_path, task, self.dtype, device)
        self.pipe.set_progress_bar_config(disable=True)
        self.previewer.wait()  # the first job has previews too
        self._loras: Any = None  # a LoraMerger once a job asked for LoRAs
        self.last_lora_switch_s: float | None = None  # the last job's; None: nothing changed

    def apply_loras(self, params: GenerationParams) -> None:
        """The job's LoRAs merged into the DiT (and those of the job before taken out)."""
        if self._loras is None:
            if not params.lora_files:
                return
            from videoserve.engines.lora import LoraMerger

            self._loras = LoraMerger(self.pipe.transformer)
        with self._torch.inference_mode():
            self.last_lora_switch_s = self._loras.apply(params.lora_files)

    def _preview(self, preview: PreviewFn, step: int, total: int, latents: Any) -> None:
        """A live preview of ``latents`` when one is due; a failure costs the preview only."""
        try:
            if latents is not None and self.previewer.due(final=step == total):
                preview(step, self.previewer.webp(latents))
        except Exception:  # noqa: BLE001 - the video matters, its preview does not
            log.exception("live preview failed; the generation goes on")

    def stats(self) -> dict[str, Any]:
        return {"lora_switch_s": self.last_lora_switch_s}

    def generate(
        self, params: GenerationParams, progress: ProgressFn, should_cancel: CancelFn,
        preview: PreviewFn | None = None,
    ) -> GenerationOutput:
        torch = self._torch
        total = params.num_inference_steps

        def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
            progress("denoising", step + 1, total)
            if preview is not None:
                self._preview(preview, step + 1, total, kwargs.get("latents"))
            if should_cancel():
                raise GenerationCancelled()
            if step + 1 == total:
                progress("decoding", total, total)
            return kwargs

        if should_cancel():
            raise GenerationCancelled()
        self.apply_loras(params)
        generator = torch.Generator(device=self.device).manual_seed(params.seed)
        call: dict[str, Any] = dict(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt or None,
            height=params.height,
            width=params.width,
            num_frames=params.num_frames,
            num_inference_steps=total,
            guidance_scale=params.guidance_scale,
            generator=generator,
            output_type="np",
            callback_on_step_end=on_step_end,
        )
        if self.task == "i2v":
            call["image"] = params.image
        start = time.perf_counter()
        progress("encoding_prompt", 0, total)
        with torch.inference_mode():
            result = self.pipe(**call)
        frames = np.asarray(result.frames[0])
        if frames.dtype != np.uint8:
            frames = (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        inference_time = time.perf_counter() - start
        progress("encoding_video", total, total)
        start = time.perf_counter()
        mp4 = encode_mp4(frames, params.fps)
        count, height, width, _ = frames.shape
        return GenerationOutput(mp4=mp4, num_frames=int(count), height=int(height),
                                width=int(width), inference_time=inference_time,
                                encoding_time=time.perf_counter() - start)

    def close(self) -> None:
        self.pipe = None
        if self.device == "cuda":
            self._torch.cuda.empty_cache()
