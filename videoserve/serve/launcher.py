"""start_ray_serve_app.py: run the backend and the UI together, and stop them together.

The backend starts first; the UI starts once every model is loaded. Each process's log lines are
prefixed with its name. Ctrl-C or SIGTERM stops both (the backend shuts down the Ray instance it
started); if either process dies, the other is stopped and the launcher exits non-zero. A backend
that stops before it is ready (a model that cannot load) ends the launcher with the backend's
reason, its last ``error:`` line; the UI is not started then.

Hub models are fetched first, by ``ray_serve_backend.py --download_only`` with the same flags in
the foreground: huggingface_hub's progress bars reach the terminal as they are (the backend's
piped output would cut each refresh into a line of its own), and ``--ready_timeout`` counts
from the end of the download. The backend then finds them in the cache.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from videoserve.client import API_KEY_ENV, BackendError, VideoClient
from videoserve.core.config import ConfigError
from videoserve.serve.backend_cli import (
    ADMIN_KEYS_ENV,
    API_KEYS_ENV,
    add_access_flags,
    add_model_flags,
    admin_api_keys,
    api_keys,
    connect_host,
)

ROOT = Path(__file__).resolve().parents[2]  # the project root: videoserve/serve/launcher.py
FORWARDED = ("preset", "engine", "t2v_model_path", "i2v_model_path", "tasks", "replicas",
             "t2v_sp_size", "i2v_sp_size", "t2v_speed", "i2v_speed", "output_path",
             "input_path", "ray_address", "num_cpus", "metrics_export_port",
             "generator_resources", "cors_origins", "model_dir", "allowed_hosts",
             "lora_dir", "lora_max_mb", "t2v_lora", "i2v_lora", "t2v_defaults",
             "i2v_defaults", "webhook_allow_hosts", "webhook_retry_initial_s")
SWITCHES = ("allow_model_management", "recover_jobs", "no_preview")  # forwarded when given


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Start the backend and the Gradio UI together.")
    parser.add_argument("--backend_host", default="127.0.0.1")
    parser.add_argument("--backend_port", type=int, default=8000)
    parser.add_argument("--frontend_host", default="127.0.0.1")
    parser.add_argument("--frontend_port", type=int, default=7860)
    parser.add_argument("--ready_timeout", type=float, default=3600.0,
                        help="seconds to wait for the models to load")
    add_access_flags(parser)
    add_model_flags(parser)
    return parser


def backend_command(args: argparse.Namespace) -> list[str]:
    command = [sys.executable, str(ROOT / "ray_serve_backend.py"), "--host", args.backend_host,
               "--port", str(args.backend_port)]
    for name in FORWARDED:
        value = getattr(args, name)
        for given in value if isinstance(value, list) else [value]:  # repeatable flags
            if given is not None and given != "":
                command += [f"--{name}", str(given)]
    return command + [f"--{name}" for name in SWITCHES if getattr(args, name)]


def key_environments(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, str]]:
    """Environments of the backend (every key) and the UI (the first): keys travel in the
    environment, not on command lines that every local user can list."""
    keys, admin_keys = api_keys(args), admin_api_keys(args)
    backend = {name: ",".join(given) for name, given in
               ((API_KEYS_ENV, keys), (ADMIN_KEYS_ENV, admin_keys)) if given}
    # The UI manages no models: an admin key only where there is no other.
    ui_key = (keys or admin_keys or ("",))[0]
    return backend, {API_KEY_ENV: ui_key} if ui_key else {}


class Managed:
    """A child process in its own process group, with prefixed output."""

    def __init__(self, name: str, command: list[str], env: dict[str, str] | None = None):
        self.name = name
        self._last_error: str | None = None
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1, start_new_session=True, cwd=ROOT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self._pump = threading.Thread(target=self._forward, args=(self.proc.stdout,),
                                      daemon=True)
        self._pump.start()

    def _forward(self, stream, out=sys.stdout) -> None:
        for line in iter(stream.readline, ""):
            # The backend and the UI print why they stop as "error: ..." (Ray's and the
            # replicas' lines carry a prefix of their own).
            if line.startswith("error: "):
                self._last_error = line[len("error: "):].strip()
            out.write(f"[{self.name}] {line}")
            out.flush()

    def last_error(self, wait_s: float = 5.0) -> str | None:
        """The process's last ``error:`` line, once its output is read to the end (for a
        process that exited; ``wait_s`` bounds the wait should a child it left hold the pipe)."""
        self._pump.join(timeout=wait_s)
        return self._last_error

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 45.0) -> None:
        """SIGINT to the process (it drains and shuts down), then SIGKILL of its whole group
        after ``grace_s``. Only the leader is signalled first: Ray's processes in the group must
        stay up while the backend drains."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in its group
        except ProcessLookupError:
            pass
        self.proc.wait()


def _banner(args: argparse.Namespace) -> None:
    from videoserve.serve.placement import cuda_gpu_count

    if args.preset is None and cuda_gpu_count() == 0:
        print("=" * 72)
        print("No CUDA GPU found: serving the TINY random-weight models (--preset tiny).")
        print("They produce noise; use a CUDA machine for the real FastVideo models.")
        print("=" * 72, flush=True)


def noise_banner(client: VideoClient) -> list[str]:
    """After the backend is ready: a banner naming every random-weight model it serves, however
    it was chosen (--preset tiny, no GPU, a full-size synthetic folder by path); the synthetic
    tasks (empty: none, or the model list could not be read)."""
    try:
        models = client.models()
    except (BackendError, requests.RequestException):
        return []
    noisy = sorted(task for task, model in models.items() if model.get("synthetic"))
    if noisy:
        names = ", ".join(f"{task}: {models[task]['id']}" for task in noisy)
        print("=" * 72)
        print(f"RANDOM-WEIGHT models ({names}): their videos are noise.")
        print("They exist to try and test the stack; real models: docs/GPUS.md.")
        print("=" * 72, flush=True)
    return noisy


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _banner(args)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        backend_env, ui_env = key_environments(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fetched = fetch_models(args, stop)
    if stop.is_set() or fetched != 0:
        return 0 if stop.is_set() else fetched
    backend = Managed("backend", backend_command(args), backend_env)
    children = [backend]
    try:
        backend_url = f"http://{connect_host(args.backend_host)}:{args.backend_port}"
        if not wait_for_backend(backend, backend_url, args.ready_timeout, stop):
            return 0 if stop.is_set() else 1
        noise_banner(VideoClient(backend_url, api_key=ui_env.get(API_KEY_ENV)))
        ui_command = [sys.executable, str(ROOT / "gradio_frontend.py"), "--backend_url",
                      backend_url, "--host", args.frontend_host,
                      "--port", str(args.frontend_port)]
        for name in ("t2v_model_path", "i2v_model_path"):
            if getattr(args, name):
                ui_command += [f"--{name}", getattr(args, name)]
        if args.frontend_host not in ("127.0.0.1", "localhost", "::1"):
            print(f"WARNING: the UI has no login; everyone who reaches {args.frontend_host}:"
                  f"{args.frontend_port} can generate (and see this key's videos)", flush=True)
        frontend = Managed("frontend", ui_command, ui_env)
        children.append(frontend)
        frontend_url = f"http://{connect_host(args.frontend_host)}:{args.frontend_port}"
        if not wait_for_frontend(frontend, frontend_url, stop):
            return 0 if stop.is_set() else 1
        print(f"Backend:  {backend_url}  (API docs: {backend_url}/docs)")
        print(f"Frontend: {frontend_url}")
        print("Press Ctrl-C to stop both.", flush=True)
        while not stop.wait(0.5):
            for child in children:
                if not child.alive():
                    print(f"{child.name} exited with code {child.proc.returncode}; stopping",
                          flush=True)
                    return 1
        return 0
    finally:
        print("Stopping…", flush=True)
        for child in reversed(children):
            child.stop()


def fetch_models(args: argparse.Namespace, stop: threading.Event) -> int:
    """Fetch the Hub models before the backend starts (its ``--download_only``), output
    straight to this terminal; its exit code (0: every model is local now)."""
    proc = subprocess.Popen([*backend_command(args), "--download_only"], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    while True:
        try:
            code = proc.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if stop.is_set():  # Ctrl-C reaches it too (same process group); SIGTERM may not
                proc.terminate()
    if code != 0 and not stop.is_set():
        print(f"fetching the models failed (exit code {code}, reason above); the backend "
              "was not started", flush=True)
    return code


def wait_for_frontend(frontend: Managed, url: str, stop: threading.Event,
                       timeout: float = 300.0) -> bool:
    deadline = time.monotonic() + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        if not frontend.alive():
            print(f"frontend exited with code {frontend.proc.returncode}", flush=True)
            return False
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return True
        except requests.RequestException:
            pass
        stop.wait(0.5)
    return False


def _model_state(task: str, model: dict) -> str:
    # A failed model's reason (from /ready) right away: the backend stops on it.
    reason = model.get("message") if model.get("state") == "UNHEALTHY" else None
    return f"{task}: {model.get('state')}" + (f" ({reason})" if reason else "")


def wait_for_backend(backend: Managed, url: str, timeout: float,
                      stop: threading.Event) -> bool:
    client = VideoClient(url)
    deadline = time.monotonic() + timeout
    last = ""
    while not stop.is_set():
        if not backend.alive():
            reason = backend.last_error()
            print(f"backend exited with code {backend.proc.returncode} before it was ready"
                  + (f": {reason}" if reason else ""), flush=True)
            return False
        try:
            ready, models = client.ready()
            line = ", ".join(_model_state(task, model) for task, model in models.items())
            if ready:
                print(f"Backend ready ({line})", flush=True)
                return True
        except BackendError:
            line = "starting Ray and loading models"
        if line != last:
            print(f"Waiting for the backend: {line}", flush=True)
            last = line
        if time.monotonic() > deadline:
            print(f"backend not ready after {timeout:.0f}s", flush=True)
            return False
        stop.wait(1.0)
    return False
