"""The fastvideo engine: FastVideo's ``VideoGenerator`` (0.2.x), on CUDA GPUs.

The pipeline is built in-process inside one child process we own (``fastvideo_host``; the
module docstring there says why a child and not the replica itself), through the adapter in
``fastvideo_adapter``, which is the only module that knows fastvideo's internals.

- Progress is real: stage starts and every denoising step come from the pipeline.
- Cancel stops a running job at its next denoising step; the latents are never decoded and the
  model stays loaded, so the next job starts at once.
- The child encodes the MP4 while the VAE decodes; only the MP4 bytes come back.
- A failed job leaves the child serving when its pipeline is still usable; otherwise the child
  exits and the next job loads the model in a fresh one.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from videoserve.core.media import remove_orphaned_temp_files, temp_prefix
from videoserve.core.request import FRAMES_RULE, SIZE_MULTIPLE, valid_frames, valid_side
from videoserve.engines.base import (
    CancelFn,
    Engine,
    GenerationCancelled,
    GenerationError,
    GenerationOutput,
    GenerationParams,
    ProgressFn,
)
from videoserve.engines.fastvideo.options import FASTVIDEO_OFFLOAD_FLAGS
from videoserve.engines.preview import PreviewFn

log = logging.getLogger(__name__)
# How often a waiting generation checks should_cancel() (cancel reaches the child within this).
POLL_S = 0.01
# Options applied inside the child around generations rather than passed to fastvideo.
RUNTIME_OPTIONS = ("sdpa_priority", "cudnn_benchmark", "vae_channels_last", "vae_compile",
                   "dit_fp8", "step_cache", "compile_precise", "keep_frames")


def check_params(task: str, params: GenerationParams) -> None:
    """Refuse what fastvideo would fail on, with a message naming the rule."""
    if not (valid_side(params.height) and valid_side(params.width)):
        raise GenerationError(f"height and width must be multiples of {SIZE_MULTIPLE}")
    if not valid_frames(params.num_frames):
        raise GenerationError(f"num_frames must be {FRAMES_RULE}")
    if task == "i2v" and params.image is None:
        raise GenerationError("image-to-video needs an image")
    if task == "t2v" and params.image is not None:
        raise GenerationError("text-to-video takes no image")


def check_sizes(option: str, sizes: Any) -> list[tuple[int, int]]:
    """An option's list of [height, width] video sizes, each a valid side (``valid_side``)."""
    if not isinstance(sizes, list | tuple):
        raise GenerationError(f"{option}: a list of [height, width] sizes; got {sizes!r}")
    for size in sizes:
        if (not isinstance(size, list | tuple) or len(size) != 2
                or not all(isinstance(v, int) and v > 0 and valid_side(v) for v in size)):
            raise GenerationError(f"{option}: each size is [height, width], multiples of 16; "
                                  f"got {size!r}")
    return [(int(h), int(w)) for h, w in sizes]


# Frames of a warm-up at a size whose VAE decoder is compiled: on a GPU the decoder's graphs
# were seen to differ with the video's length (a 61-frame warm-up left an 81-frame request to
# compile for 40 s), so it warms up at Wan's usual 81 (the I2V's default, the benchmarks').
COMPILE_WARMUP_FRAMES = 81


def warmup_runs(warmup: GenerationParams | None, sizes: list[list[int]] | None,
                compiled: list[tuple[int, int]] | None = None) -> list[GenerationParams]:
    """The warm-up generations at load, one per video size: ``warmup`` (the model's default
    size), then each further [height, width] of ``sizes`` and of ``compiled`` (same steps; at
    a ``compiled`` size at least ``COMPILE_WARMUP_FRAMES`` frames)."""
    if warmup is None:
        return []

    def at(height: int, width: int) -> GenerationParams:
        image = None if warmup.image is None else warmup.image.resize((width, height))
        return replace(warmup, height=height, width=width, image=image)

    runs: dict[tuple[int, int], GenerationParams] = {(warmup.height, warmup.width): warmup}
    for size in check_sizes("warmup_sizes", sizes or []):
        runs.setdefault(size, at(*size))
    for size in compiled or []:
        run = runs.get(size) or at(*size)
        runs[size] = replace(run, num_frames=max(run.num_frames, COMPILE_WARMUP_FRAMES))
    return list(runs.values())


class FastVideoEngine(Engine):
    """Owns the child process that holds the loaded pipeline."""

    name = "fastvideo"

    def __init__(self, model_path: str, task: str, device: str, options: dict[str, Any],
                 warmup: GenerationParams | None = None, hub_id: str | None = None):
        """``hub_id``: the Hub id ``model_path`` (a snapshot folder) was fetched as; fastvideo
        then picks the pipeline config it registered for that id (see
        ``adapter.register_hub_folder``)."""
        self.model_path, self.task, self.device = model_path, task, device
        options = dict(options)
        if device != "cuda":
            dropped = [k for k in ("compile", "sdpa_priority", "cudnn_benchmark", "dit_fp8",
                                   "step_cache", "compile_precise") if options.pop(k, None)]
            if dropped:
                log.info("fastvideo %s on %s: %s apply to CUDA only; ignored", task, device,
                         dropped)
        compiled = options.get("vae_compile")
        if compiled not in (None, True, False):
            compiled = options["vae_compile"] = check_sizes("vae_compile", compiled)
        self.warmups = warmup_runs(warmup if options.pop("warmup", False) else None,
                                   options.pop("warmup_sizes", None),
                                   compiled if isinstance(compiled, list) else None)
        if compiled is True and self.warmups:
            # Compile the decoder for every size the warm-up decodes, and for no other.
            options["vae_compile"] = [[r.height, r.width] for r in self.warmups]
        self.warmup_time: float | None = None
        self._load_breakdown: dict[str, float] = {}
        self.options = self._generator_options(options)
        if hub_id:
            self.options["hub_id"] = hub_id
        self._healthy = False
        self.load_time = 0.0
        self.loads = 0
        self.videos = 0
        self.last_peak_gib: float | None = None
        self.last_steps_skipped: int | None = None  # by the step cache, if one is on
        self.last_lora_switch_s: float | None = None  # merging the last job's LoRAs, if it did
        self.last_frames: Any = None  # with the keep_frames option (benchmarks)
        self.version = ""
        self.worker_pids: list[int] = []  # fastvideo's worker processes (multiproc executor)
        self._ctx = mp.get_context("spawn")
        # The seq of the job the child should stop; read by its step hook, no lock needed.
        self._cancel = self._ctx.Value("q", 0, lock=False)
        self._seq = 0
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Any = None
        self._start_child()

    @staticmethod
    def _generator_options(options: dict[str, Any]) -> dict[str, Any]:
        """fastvideo's ``from_pretrained`` options, plus ``env`` and ``runtime`` for the child.

        Speed levers (see docs/BENCHMARKS.md for their measured effect):
        ``vae_precision`` / ``text_encoder_precision`` ("fp32", "bf16"), ``compile`` (DiT
        torch.compile, paid for by a warm-up at load), ``sdpa_priority`` (e.g. ["cudnn",
        "flash", "efficient", "math"]: dense attention kernels tried in that order),
        ``cudnn_benchmark`` (autotuned VAE convolutions), ``vae_channels_last`` (the VAE
        decodes in cuDNN's channels-last layout), ``vae_compile`` (torch.compile of the VAE
        decoder: true for every size the warm-up decodes, or a list of [height, width] sizes,
        which the warm-up then decodes too; other sizes decode eagerly),
        ``warmup`` (one short generation at load so no user request pays for first-call costs:
        compiles and autotuning are per frame size) and ``warmup_sizes`` (further [height,
        width] sizes the warm-up also generates at, besides the model's default size).

        Several GPUs for one video: ``sp_size`` (sequence parallel over that many GPUs of
        the process's CUDA_VISIBLE_DEVICES; runs fastvideo's own worker processes, one per
        GPU). ``executor: "multiproc"`` forces that path with ``sp_size`` 1: a diagnostic
        (the in-process default is faster to load and streams its decode).
        """
        opts = dict(options)
        sp_size = int(opts.pop("sp_size", 1))
        executor = opts.pop("executor", "multiproc" if sp_size > 1 else "in_process")
        if executor not in ("in_process", "multiproc"):
            raise GenerationError(f"unknown fastvideo executor {executor!r}")
        if sp_size > 1 and executor != "multiproc":
            raise GenerationError("sp_size > 1 needs the multiproc executor")
        opts["executor"] = executor
        env = {"FASTVIDEO_ATTENTION_BACKEND": opts.pop("attention_backend")} if (
            "attention_backend" in opts) else {}
        env.update(opts.pop("env", {}))
        opts["runtime"] = {key: opts.pop(key) for key in RUNTIME_OPTIONS if key in opts}
        if "text_encoder_precision" in opts:
            opts["text_encoder_precisions"] = (opts.pop("text_encoder_precision"),)
        if opts.pop("compile", False):
            opts["enable_torch_compile"] = True
        # Ray sets OMP_NUM_THREADS to the replica's num_cpus (1), which the child would inherit:
        # fastvideo makes some tensors on the CPU (e.g. DMD's per-step noise), measurably slower
        # on one thread. ``cpu_threads`` overrides the default: half the cores, at most 8.
        threads = opts.pop("cpu_threads", None) or max(1, min(8, (os.cpu_count() or 2) // 2))
        env.setdefault("OMP_NUM_THREADS", str(threads))
        for flag in FASTVIDEO_OFFLOAD_FLAGS:
            opts.setdefault(flag, False)
        opts["num_gpus"] = sp_size
        opts["sp_size"] = sp_size
        opts["env"] = env
        return opts

    def _start_child(self) -> None:
        from videoserve.engines.fastvideo.host import serve_forever

        remove_orphaned_temp_files()  # left by a child that died while encoding
        parent, child = self._ctx.Pipe()
        start = time.perf_counter()
        self._proc = self._ctx.Process(target=serve_forever, name=f"fastvideo-{self.task}",
                                       args=(child, self.model_path, dict(self.options),
                                             self._cancel), daemon=False)
        self._proc.start()
        child.close()
        self._conn = parent
        message = self._recv_message(timeout=None)
        if message is None or message["type"] != "ready":
            detail = message.get("message") if message else "the process exited during load"
            self._stop_child()
            self._healthy = False  # the replica's health check fails; Serve replaces it
            raise GenerationError(f"fastvideo failed to load {self.model_path}: {detail}")
        self.loads += 1
        self.version = message.get("version", "")
        self.worker_pids = message.get("worker_pids", [])
        # Where the start went: the child's own start (interpreter, imports of this package),
        # fastvideo's import, each pipeline module, the rest of the pipeline's set-up, warm-up.
        child_load = float(message.get("load_time", 0.0))
        timings = dict(message.get("timings", {}))
        modules = sum(v for k, v in timings.items() if k.startswith("module:"))
        timings["process_start_s"] = round(time.perf_counter() - start - child_load, 2)
        timings["pipeline_setup_s"] = round(
            child_load - timings.get("import_s", 0.0) - modules, 2)
        if self.warmups:
            # First calls pay for compilation and kernel autotuning (per frame size); a user
            # request must not.
            warm = time.perf_counter()
            for params in self.warmups:
                with self._request(params) as kwargs:
                    self._send(kwargs, params, lambda *_: None, lambda: False)
            self.warmup_time = time.perf_counter() - warm
            timings["warmup_s"] = round(self.warmup_time, 2)
        self._load_breakdown = timings
        self.load_time = time.perf_counter() - start
        self._healthy = True
        log.info("fastvideo %s %s loaded %s in %.1fs (pid %s)", self.version, self.task,
                 self.model_path, self.load_time, self._proc.pid)

    def _recv_message(self, timeout: float | None) -> dict[str, Any] | None:
        """The next message from the child; None if it died; raise TimeoutError if none yet."""
        if timeout is not None and not self._conn.poll(timeout):
            raise TimeoutError
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            return None

    def _stop_child(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._conn.close()
        if self._proc is not None:
            self._proc.join(timeout=60)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout=10)
        self._proc = self._conn = None

    def stats(self) -> dict[str, Any]:
        """Shown in the generator's info: how often the model was loaded, the child's pid."""
        pid = self._proc.pid if self._proc is not None else None
        return {"engine_pid": pid, "engine_worker_pids": self.worker_pids,
                "engine_loads": self.loads, "videos_encoded": self.videos,
                "fastvideo_version": self.version, "engine_load_s": round(self.load_time, 2),
                "engine_load_breakdown": self.load_breakdown,  # with the warm-up's time
                "last_peak_gib": self.last_peak_gib,
                "last_steps_skipped": self.last_steps_skipped,
                "lora_switch_s": self.last_lora_switch_s}

    def _request_kwargs(self, params: GenerationParams, image_path: str | None) -> dict[str, Any]:
        # An empty negative prompt stays a string: fastvideo's CFG pass encodes it (None crashes).
        kwargs = dict(prompt=params.prompt, negative_prompt=params.negative_prompt,
                      seed=params.seed, guidance_scale=params.guidance_scale,
                      num_frames=params.num_frames, height=params.height, width=params.width,
                      num_inference_steps=params.num_inference_steps, fps=params.fps,
                      save_video=False, return_frames=True)
        if image_path is not None:
            kwargs["image_path"] = image_path
        return kwargs

    def generate(
        self, params: GenerationParams, progress: ProgressFn, should_cancel: CancelFn,
        preview: PreviewFn | None = None,
    ) -> GenerationOutput:
        check_params(self.task, params)
        with self._request(params) as kwargs:
            return self.run(kwargs, params, progress, should_cancel, preview)

    @contextlib.contextmanager
    def _request(self, params: GenerationParams) -> Iterator[dict[str, Any]]:
        """fastvideo's keyword arguments; an image goes through a temporary file."""
        with tempfile.TemporaryDirectory(prefix=temp_prefix() + "in-") as tmp:
            image_path = None
            if params.image is not None:
                image_path = str(Path(tmp) / "input.png")
                params.image.save(image_path)
            yield self._request_kwargs(params, image_path)

    def run(self, kwargs: dict[str, Any], params: GenerationParams, progress: ProgressFn,
            should_cancel: CancelFn, preview: PreviewFn | None = None) -> GenerationOutput:
        """Send one already-checked request to the child and follow it to its end."""
        with self._lock:
            if should_cancel():
                raise GenerationCancelled()
            if self._proc is None or not self._proc.is_alive():
                self._stop_child()
                self._start_child()
            return self._send(kwargs, params, progress, should_cancel, preview)

    def _send(self, kwargs: dict[str, Any], params: GenerationParams, progress: ProgressFn,
              should_cancel: CancelFn, preview: PreviewFn | None = None) -> GenerationOutput:
        self._seq += 1
        loras = [asdict(lora) for lora in params.lora_files]
        self._conn.send({"seq": self._seq, "kwargs": kwargs, "fps": params.fps, "loras": loras,
                         "preview": preview is not None})
        return self._follow(self._seq, params, progress, should_cancel, preview)

    def _follow(self, seq: int, params: GenerationParams, progress: ProgressFn,
                should_cancel: CancelFn, preview: PreviewFn | None = None) -> GenerationOutput:
        step, total = 0, params.num_inference_steps
        while True:
            # A cancel is passed on only once every message the child already sent is read, so
            # the step it is recorded at is the child's latest and the child stops at its next.
            if self._cancel.value != seq and not self._conn.poll() and should_cancel():
                self._cancel.value = seq
            try:
                message = self._recv_message(timeout=POLL_S)
            except TimeoutError:
                continue
            kind = message["type"] if message is not None else "exited"
            if kind == "stage":
                progress(message["stage"], step, total)
            elif kind == "step":
                step, total = message["step"], message["total"]
                progress("denoising", step, total)
            elif kind == "preview":
                webp = self._conn.recv_bytes()
                if preview is not None:
                    preview(message["step"], webp)
            elif kind == "video":
                mp4 = self._conn.recv_bytes()
                self.videos += 1
                self.last_peak_gib = message.get("peak_gib")
                self.last_steps_skipped = message.get("steps_skipped")
                self.last_lora_switch_s = message.get("lora_switch_s")
                if self.options["runtime"].get("keep_frames"):
                    shape = self._conn.recv()["shape"]
                    self.last_frames = np.frombuffer(self._conn.recv_bytes(),
                                                     np.uint8).reshape(shape)
                return GenerationOutput(mp4=mp4, num_frames=message["num_frames"],
                                        height=message["height"], width=message["width"],
                                        inference_time=message["inference_time"],
                                        encoding_time=message["encoding_time"])
            elif kind == "cancelled":
                raise GenerationCancelled()
            else:
                self._fail(message)

    def _fail(self, message: dict[str, Any] | None) -> None:
        if message is None or message.get("fatal", True):
            # The child is gone or its pipeline is unusable: the next job loads a fresh one.
            self._stop_child()
            reason = message["message"] if message else "the fastvideo process exited"
            raise GenerationError(f"fastvideo generation failed: {reason}; the model will be "
                                  "reloaded for the next job")
        raise GenerationError(f"fastvideo generation failed: {message['message']}")

    @property
    def healthy(self) -> bool:
        """False once a (re)load of the model failed, or after ``close``. A child that died
        mid-job leaves it True: the next job loads the model in a fresh child."""
        return self._healthy

    @property
    def load_breakdown(self) -> dict[str, float]:
        """The latest load's stages: the child's start, fastvideo's import, each pipeline
        module, the pipeline's set-up and the warm-up."""
        return self._load_breakdown

    def close(self) -> None:
        self._stop_child()
        self._healthy = False
