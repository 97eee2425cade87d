"""Helpers shared by the GPU benchmark scripts: environment, timestamped progress lines, a
backend started as a subprocess, GPU memory as nvidia-smi sees it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
_START = time.monotonic()


def log(message: str) -> None:
    """A progress line with wall-clock and elapsed time, flushed at once (a run cut short
    still shows where it was)."""
    print(f"[{time.strftime('%H:%M:%S')} +{time.monotonic() - _START:6.1f}s] {message}",
          flush=True)


def environment() -> dict:
    import importlib.metadata as meta

    versions = {}
    for package in ("torch", "fastvideo", "fastvideo-kernel", "ray"):
        try:
            versions[package] = meta.version(package)
        except meta.PackageNotFoundError:
            versions[package] = None
    # nvidia-smi, not torch.cuda.get_device_name: that would give this process a CUDA context
    # (memory on GPU 0) for the rest of the run.
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30,
                               check=True).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        names = []
    return {"device": names[0] if names else "cpu", "gpus": len(names),
            "date": date.today().isoformat(), **versions}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gpu_memory_gib() -> list[float] | None:
    """Memory used on each GPU (nvidia-smi; None where it is missing). Reading it this way
    keeps the calling process off the GPU."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return [round(float(line) / 1024, 1) for line in out.stdout.split()]


def wait_for_free_gpus(limit_gib: float = 2.0, timeout: float = 60.0) -> list[float] | None:
    """Poll until every GPU uses less than ``limit_gib`` (what a finished configuration left
    behind must be gone before the next one is measured)."""
    deadline = time.monotonic() + timeout
    used = gpu_memory_gib()
    while used and max(used) >= limit_gib and time.monotonic() < deadline:
        time.sleep(1)
        used = gpu_memory_gib()
    return used


@contextmanager
def served_backend(args: list[str], log_path: Path, ready_timeout: float) -> Iterator[str]:
    """``ray_serve_backend.py ARGS`` in its own process session, until /ready answers 200;
    yields its URL. On exit: SIGINT (it drains and shuts Ray down), then SIGKILL for anything
    of it still running, Ray's processes included."""
    import psutil

    port = free_port()
    command = [sys.executable, str(ROOT / "ray_serve_backend.py"), "--port", str(port),
               "--drain_timeout", "5", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, ready_timeout)
        yield url
    finally:
        family = _descendants(psutil, proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        for member in [*family, *_descendants(psutil, proc.pid)]:
            try:
                member.kill()
            except psutil.Error:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        psutil.wait_procs(family, timeout=30)


def _descendants(psutil, pid: int) -> list:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _wait_ready(proc: subprocess.Popen, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the backend exited with {proc.returncode} before it was ready")
        try:
            if requests.get(url + "/ready", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"the backend was not ready within {timeout:.0f} s")


def add_model_args(parser, default_task: str) -> None:
    """The arguments of a benchmark that serves one model in-process: a full-size folder on the
    GPU or the tiny model on the CPU, its task, the video's size, and where results go."""
    from pathlib import Path

    parser.add_argument("--model", type=Path, help="a full-size model folder (GPU)")
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU")
    parser.add_argument("--task", choices=["t2v", "i2v"], default=default_task)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--json", help="write the results here")


def model_args(parser):
    """Parsed arguments (see add_model_args); ``--tiny`` puts the tiny model in ``model``."""
    args = parser.parse_args()
    if args.tiny:
        from videoserve.devtools.tiny_models import ensure_tiny_models

        args.model = ensure_tiny_models()[args.task]
    elif args.model is None:
        parser.error("give --model (a full-size folder) or --tiny")
    return args


def model_spec(args):
    """The ModelSpec the backend would deploy for ``args``: the tiny preset on the CPU, else the
    fastwan preset's settings for the folder on one GPU (labelled synthetic)."""
    from dataclasses import replace

    from videoserve.serve.presets import build_specs

    if args.tiny:
        specs = build_specs("tiny", gpu_count=0, tasks=(args.task,))
    else:
        specs = build_specs("fastwan", gpu_count=1, tasks=(args.task,),
                            **{f"{args.task}_model": str(args.model)})
    return replace(specs[args.task], synthetic=True)


def job_body(args, seed: int) -> dict:
    """A ``POST /v1/videos`` body for ``args``' model (I2V: a plain picture of the video's size)."""
    import base64
    import io

    body = {"prompt": "the picture moves", "model_type": args.task, "seed": seed}
    if not args.tiny:
        body.update(height=args.height, width=args.width, num_frames=args.frames)
    if args.task == "i2v":
        from PIL import Image

        png = io.BytesIO()
        size = (64, 64) if args.tiny else (args.width, args.height)
        Image.new("RGB", size, (90, 120, 160)).save(png, format="PNG")
        body["image"] = base64.b64encode(png.getvalue()).decode()
    return body


def scratch_folder():
    """A temporary folder (under test-output/ where it exists), removed afterwards."""
    import tempfile

    base = ROOT / "test-output"
    return tempfile.TemporaryDirectory(dir=base if base.is_dir() else None)


def deploy_in_process(settings, app: str, gpus: int) -> str:
    """Deploy ``settings`` (a ``videoserve.core.config.Settings``) in this process's Ray, as the
    backend would, and wait for /ready; the service's URL. ``gpus`` 0: the CPU (tiny models),
    this process's Ray gets 4 CPUs; else 8 CPUs and the GPUs, the replicas' logs shown here."""
    import ray
    from ray import serve

    from videoserve.serve.deployments import deploy

    if gpus:
        ray.init(num_cpus=8, num_gpus=gpus, include_dashboard=False, log_to_driver=True)
    else:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    started = time.perf_counter()
    models = ", ".join(f"{task}: {spec.model} ({spec.engine}, defaults {spec.defaults}, LoRAs "
                       f"{spec.loras})" for task, spec in settings.models.items())
    log(f"deploying {models}")
    deploy(settings, app, "/")
    url = f"http://127.0.0.1:{port}"
    while requests.get(url + "/ready", timeout=30).status_code != 200:
        time.sleep(0.5)
    log(f"ready in {time.perf_counter() - started:.1f} s")
    return url


def follow_job(url: str, job: dict) -> tuple[dict, float | None]:
    """Poll a ``/v1/videos`` job to its end; also the median seconds between the steps its
    progress showed (None with fewer than two steps seen)."""
    import statistics

    seen: dict[int, float] = {}
    while job.get("status") in ("queued", "in_progress"):
        step = (job.get("progress_detail") or {}).get("step", 0)
        seen.setdefault(step, time.perf_counter())
        time.sleep(0.1)
        job = requests.get(f"{url}/v1/videos/{job['id']}", timeout=60).json()
    marks = [seen[k] for k in sorted(seen) if k >= 1]
    steps = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    return job, statistics.median(steps) if steps else None
