"""The child process that owns a fastvideo ``VideoGenerator``.

fastvideo's worker processes send SIGQUIT to their parent when they hit an exception, and tie
their lifetime to the thread that created them. Running the generator in a process of our own,
created and driven from that process's main thread, keeps both behaviours away from the Ray
replica: a worker failure ends this process (after reporting the error), never the replica.

Protocol over a ``multiprocessing`` pipe (the parent is ``fastvideo_engine.FastVideoEngine``):
  child -> parent  {"type": "ready", "load_time": s} | {"type": "load_error", "message": str}
  parent -> child  {"kwargs": {...}}  one generation;  None  shut down
  child -> parent  {"type": "frames", "shape": (T, H, W, 3), "time": s, "steps": n} + raw bytes
                   | {"type": "error", "message": str, "fatal": bool}
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

import numpy as np


def _frames_array(frames: Any) -> np.ndarray:
    array = np.stack([np.asarray(f) for f in frames]) if isinstance(frames, list) else frames
    array = np.asarray(array)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(array)


def serve_forever(conn: Connection, model_path: str, options: dict[str, Any]) -> None:
    """Entry point of the child process: load, then answer requests until told to stop."""
    worker_failed = {"flag": False}

    def on_sigquit(signum: int, frame: Any) -> None:
        # A fastvideo worker died; the blocked pipe read in generate() raises next.
        worker_failed["flag"] = True

    signal.signal(signal.SIGQUIT, on_sigquit)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    env = options.pop("env", {})
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        from fastvideo import VideoGenerator

        start = time.perf_counter()
        generator = VideoGenerator.from_pretrained(model_path, **options)
        conn.send({"type": "ready", "load_time": time.perf_counter() - start})
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit
        conn.send({"type": "load_error", "message": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc()})
        return
    try:
        _loop(conn, generator, worker_failed)
    finally:
        try:
            generator.shutdown()
        except Exception:  # noqa: BLE001 - workers may already be gone
            pass


def _loop(conn: Connection, generator: Any, worker_failed: dict[str, bool]) -> None:
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        start = time.perf_counter()
        try:
            result = generator.generate_video(**request["kwargs"])
            frames = _frames_array(result["frames"])
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            fatal = worker_failed["flag"] or not _workers_alive(generator)
            conn.send({"type": "error", "message": f"{type(exc).__name__}: {exc}",
                       "fatal": fatal})
            if fatal:
                return
            continue
        conn.send({"type": "frames", "shape": frames.shape,
                   "time": time.perf_counter() - start})
        conn.send_bytes(memoryview(frames).cast("B"))


def _workers_alive(generator: Any) -> bool:
    executor = getattr(generator, "executor", None)
    workers = getattr(executor, "workers", None) or []
    return all(getattr(w, "proc", None) is None or w.proc.is_alive() for w in workers)
