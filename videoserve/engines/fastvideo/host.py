"""The child process that holds a fastvideo pipeline and turns requests into MP4 bytes.

Why a child process of the replica rather than the replica itself: a CUDA fault (an illegal
address, a device-side assert) poisons the CUDA context for the life of the process, and
fastvideo keeps process-global state (its torch.distributed world of one, parallel groups).
In a child we own, such a failure costs a reload in a fresh process while the replica, its Ray
actor and the ingress's stream stay up; the replica process itself never touches CUDA.
The pipeline runs in-process *inside* this child (``fastvideo_adapter``): no further worker
process, so progress, cancel and frames are plain function calls here. The exception is
sequence parallel (``sp_size`` > 1, or the diagnostic ``executor: "multiproc"``): fastvideo's
own worker processes, one per GPU, children of this one, run the pipeline, and the adapter
relays their progress and cancel; any failure there ends this child (the next job reloads).

Only small messages and the finished MP4 cross the pipe: frames are encoded here, chunk by
chunk while the VAE decodes the next chunk.

Protocol over a ``multiprocessing`` pipe (the parent is ``fastvideo_engine.FastVideoEngine``):
  child -> parent  {"type": "ready", "load_time": s, "timings": {...}, "version": v,
                    "worker_pids": [...]}
                   | {"type": "load_error", ...}
  parent -> child  {"seq": n, "kwargs": {...}, "fps": f, "loras": [LoraFile fields, ...],
                    "preview": bool}
                   one generation (its LoRAs merged first);  None  shut down
  child -> parent  {"type": "stage", "stage": name}, {"type": "step", "step": k, "total": n},
                   {"type": "preview", "step": k} + WebP bytes (when the job asked for previews)
                   then one of {"type": "video", ...} + MP4 bytes | {"type": "cancelled", ...}
                   | {"type": "error", "message": str, "fatal": bool}
  cancel           the parent writes the job's seq into a shared integer; the step hook reads it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

PARENT_CHECK_S = 1.0


def _frames_array(frames: Any) -> np.ndarray:
    array = np.stack([np.asarray(f) for f in frames]) if isinstance(frames, list) else frames
    array = np.asarray(array)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(array)


def _exit_with_parent() -> None:
    """A replica killed with SIGKILL cannot stop us: leave when our parent changes."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve_forever(conn: Connection, model_path: str, options: dict[str, Any],
                  cancel: Any) -> None:
    """Entry point of the child process: load, then answer requests until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    _exit_with_parent()
    os.environ.update({k: str(v) for k, v in options.pop("env", {}).items()})
    runtime = options.pop("runtime", {})
    executor = options.pop("executor", "in_process")
    hub_id = options.pop("hub_id", None)
    keep_frames = runtime.pop("keep_frames", False)  # benchmarks compare raw frames
    previewer = None
    try:
        from videoserve.engines.fastvideo import adapter

        start = time.perf_counter()
        if executor == "in_process":  # fastvideo's worker processes run the DiT: no previews
            from videoserve.engines.preview import LatentPreview

            previewer = LatentPreview(model_path)  # fitted on its own thread during the load
        timings: dict[str, float] = {}
        runner = adapter.load_runner(model_path, options, executor, timings, hub_id=hub_id,
                                     **runtime)
        if previewer is not None and runner.latest_latents is not None:
            previewer.wait()  # the first job has previews too
        else:
            previewer = None
        conn.send({"type": "ready", "load_time": time.perf_counter() - start,
                   "timings": timings, "version": adapter.check_version(),
                   "worker_pids": runner.worker_pids()})
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit
        conn.send({"type": "load_error", "message": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc()})
        return
    try:
        while (request := _next_request(conn)) is not None:
            if not _generate(conn, runner, request, cancel, keep_frames, previewer):
                return  # the pipeline is unusable; the parent starts a fresh process
    finally:
        try:
            runner.shutdown()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


def _next_request(conn: Connection) -> dict[str, Any] | None:
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


def _previews(conn: Connection, runner: Any, previewer: Any, wanted: bool) -> Any:
    """The step hook's preview sender: after a step, the DiT's latest input latents as a WebP
    (when one is due); None when the job wants none or the pipeline cannot show them."""
    if not wanted or previewer is None or runner.latest_latents is None:
        return None

    def send(step: int, total: int) -> None:
        latents = runner.latest_latents()
        # Step 0 is the denoising starting: nothing denoised to show yet.
        if step >= 1 and latents is not None and previewer.due(final=step == total):
            try:
                webp = previewer.webp(latents)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
                return
            conn.send({"type": "preview", "step": step})
            conn.send_bytes(webp)

    return send


def _generate(conn: Connection, runner: Any, request: dict[str, Any], cancel: Any,
              keep_frames: bool = False, previewer: Any = None) -> bool:
    """Run one request and report it; False when the pipeline can no longer be used."""
    from videoserve.core.media import StreamingMp4Encoder
    from videoserve.engines.fastvideo import adapter

    seq = request["seq"]
    encoder = StreamingMp4Encoder(request["fps"])
    chunks: list[Any] = []

    def sink(chunk: Any) -> None:
        chunks.append(chunk if keep_frames else None)  # a chunk holds its frames' memory
        encoder.put(chunk)

    previews = _previews(conn, runner, previewer, bool(request.get("preview")))

    def on_step(step: int, total: int) -> None:
        conn.send({"type": "step", "step": step, "total": total})
        if previews is not None:
            previews(step, total)

    hooks = adapter.RunHooks(
        on_stage=lambda stage: conn.send({"type": "stage", "stage": stage}),
        on_step=on_step,
        should_stop=lambda: cancel.value == seq,
        frame_sink=sink,
    )
    start = time.perf_counter()
    try:
        lora_switch_s = runner.apply_loras(request.get("loras") or [])
        result = runner.generate(hooks, **request["kwargs"])
        inference_time = time.perf_counter() - start
        if not chunks:
            # This model could not stream its decode: fastvideo handed back the whole video.
            frames = _frames_array(result["frames"])
            encoder.put(lambda: frames)
        conn.send({"type": "stage", "stage": "encoding_video"})
        tail = time.perf_counter()
        mp4 = encoder.finish()
        encoding_time = time.perf_counter() - tail
    except adapter.StopDenoising:
        encoder.abort()
        conn.send({"type": "cancelled", "step": hooks.steps_done, "stage": hooks.stage})
        return True
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        encoder.abort()
        usable = runner.usable()
        conn.send({"type": "error", "message": _describe(exc), "fatal": not usable})
        return usable
    height, width = encoder.size
    conn.send({"type": "video", "num_frames": encoder.frames, "height": height, "width": width,
               "inference_time": inference_time, "encoding_time": encoding_time,
               "stages": hooks.stages_seen, "peak_gib": runner.peak_gib(result),
               "steps_skipped": runner.steps_skipped(), "lora_switch_s": lora_switch_s})
    conn.send_bytes(mp4)
    if keep_frames:
        frames = np.concatenate([chunk() for chunk in chunks]) if chunks else _frames_array(
            result["frames"])
        conn.send({"shape": frames.shape})
        conn.send_bytes(memoryview(np.ascontiguousarray(frames)).cast("B"))
    return True


def _describe(exc: BaseException) -> str:
    # VideoGenerator wraps the pipeline thread's error; the cause is what the user needs.
    root = exc.__cause__ if exc.__cause__ is not None else exc
    return f"{type(root).__name__}: {root}"
