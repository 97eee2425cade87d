"""Command line of the backend: flags -> Settings -> Ray Serve application."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from videoserve.config import (
    ENGINES,
    PRESETS,
    TASKS,
    ConfigError,
    Settings,
    build_specs,
    cuda_gpu_count,
)

log = logging.getLogger("videoserve.backend")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Model, preset and placement flags (shared with start_ray_serve_app.py)."""
    parser.add_argument("--preset", choices=PRESETS, default=None,
                        help="model pair: fastwan (the real models, needs a CUDA GPU) or tiny "
                             "(random-weight models that produce noise; any machine). "
                             "Default: fastwan with a CUDA GPU, else tiny")
    parser.add_argument("--engine", choices=ENGINES, default=None,
                        help="override the preset's engine for both models")
    parser.add_argument("--t2v_model_path", default=None,
                        help="T2V model: a Diffusers-format folder or hub id")
    parser.add_argument("--i2v_model_path", default=None,
                        help="I2V model: a Diffusers-format folder or hub id")
    parser.add_argument("--tasks", default="t2v,i2v",
                        help="comma-separated tasks to deploy (default: t2v,i2v)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="replicas per model; with enough GPUs each gets its own")
    for task in TASKS:
        parser.add_argument(f"--{task}_sp_size", type=int, default=None, metavar="N",
                            help=f"sequence parallel: each {task} video runs on N GPUs "
                                 "(fastvideo engine; default 1)")
    parser.add_argument("--output_path", default="outputs",
                        help="where videos (and by default input images) live")
    parser.add_argument("--input_path", default=None,
                        help="the only directory image_path may point into "
                             "(default: <output_path>/inputs)")
    parser.add_argument("--ray_address", default=None,
                        help="join this Ray cluster (e.g. auto or ray://host:10001); "
                             "default: start a local one")
    parser.add_argument("--num_cpus", type=int, default=None,
                        help="CPUs for a locally started Ray (default: all)")


API_KEYS_ENV = "VIDEOSERVE_API_KEYS"
# Idle keep-alive connections are closed after this long (Serve's default is 90 s). Uvicorn in
# Serve's proxy has no header or body read timeout of its own; bodies have one in the app
# (Settings.body_idle_timeout_s), headers need a reverse proxy (see README, Security).
KEEP_ALIVE_S = 5
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_access_flags(parser: argparse.ArgumentParser) -> None:
    """API key and CORS flags (shared with start_ray_serve_app.py)."""
    parser.add_argument("--api_key", action="append", default=None, metavar="KEY",
                        help="require this API key (Authorization: Bearer KEY); repeat for "
                             f"several. Also from {API_KEYS_ENV} (comma-separated)")
    parser.add_argument("--cors_origins", default="",
                        help="comma-separated origins (https://host[:port]) whose web pages may "
                             "call the API; default: none besides the API's own")


def api_keys(args: argparse.Namespace) -> tuple[str, ...]:
    """Keys from --api_key and the environment, in order, without blanks or repeats."""
    from_env = os.environ.get(API_KEYS_ENV, "").split(",")
    keys = [k.strip() for k in [*(args.api_key or []), *from_env] if k.strip()]
    return tuple(dict.fromkeys(keys))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve FastVideo T2V/I2V models on Ray Serve.")
    parser.add_argument("--drain_timeout", type=float, default=30.0,
                        help="on SIGTERM/SIGINT, seconds that waiting requests get to finish")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port")
    add_access_flags(parser)
    add_model_flags(parser)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    gpus = cuda_gpu_count()
    preset = args.preset or ("fastwan" if gpus else "tiny")
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ConfigError(f"--tasks must name t2v and/or i2v, got {args.tasks!r}")
    sp_sizes = {task: getattr(args, f"{task}_sp_size") for task in TASKS}
    specs = build_specs(preset, args.engine, args.t2v_model_path, args.i2v_model_path,
                        gpu_count=gpus, replicas=args.replicas, tasks=tasks,  # type: ignore[arg-type]
                        sp_sizes=sp_sizes)
    output = Path(args.output_path).expanduser().resolve()
    inputs = Path(args.input_path).expanduser().resolve() if args.input_path else None
    origins = tuple(o.strip().rstrip("/") for o in args.cors_origins.split(",") if o.strip())
    return Settings(models=specs, output_path=output, input_path=inputs,
                    api_keys=api_keys(args), cors_origins=origins)


def warn_if_open(host: str, settings: Settings) -> None:
    if settings.api_keys:
        log.info("API keys required (%d configured)", len(settings.api_keys))
    elif host not in LOOPBACK:
        log.warning("WARNING: serving on %s without an API key: anyone who can reach this port "
                    "can list, download and delete every video and start generations. Pass "
                    "--api_key KEY (or set %s) or bind 127.0.0.1.", host, API_KEYS_ENV)


def start(settings: Settings, host: str, port: int, ray_address: str | None,
          num_cpus: int | None = None) -> Any:
    """Start (or join) Ray, deploy the app, wait until every replica is up; return its handle."""
    import ray
    from ray import serve

    from videoserve.deployments import APP_NAME, build_app

    if ray_address:
        ray.init(address=ray_address)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False)
    serve.start(http_options={"host": host, "port": port, "keep_alive_timeout_s": KEEP_ALIVE_S})
    return serve.run(build_app(settings), name=APP_NAME, route_prefix="/")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    warn_if_open(args.host, settings)
    for spec in settings.models.values():
        note = " (random weights: output is noise)" if spec.synthetic else ""
        log.info("%s: %s on %s via %s%s", spec.task, spec.model, spec.device, spec.engine, note)
    stop = threading.Event()
    _on_stop_signals(stop)
    started = time.perf_counter()
    app = start(settings, args.host, args.port, args.ray_address, args.num_cpus)
    # Again after Ray started: ray.init installs its own SIGTERM handler, which would end the
    # process without draining.
    _on_stop_signals(stop)
    log.info("ready in %.1fs: http://%s:%d (API docs at /docs)", time.perf_counter() - started,
             args.host, args.port)
    stop.wait()
    log.info("draining (up to %.0fs), then shutting down", args.drain_timeout)
    try:
        drained = app.drain.remote(args.drain_timeout).result(
            timeout_s=args.drain_timeout + 30)
        log.info("drained: %s", drained)
    except Exception:  # noqa: BLE001 - shut down anyway; queued jobs are on disk
        log.exception("drain failed")
    _shutdown()
    return 0


def _on_stop_signals(stop: threading.Event) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())


def _shutdown() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def app_builder(args: dict[str, str]) -> Any:
    """Application builder for ``serve run videoserve.backend_cli:app_builder preset=tiny ...``.

    Takes the same options as the backend's flags (without the leading dashes); host, port and
    ray_address belong to ``serve run`` itself there.
    """
    from videoserve.deployments import build_app

    argv = [f"--{key}={value}" for key, value in args.items()]
    return build_app(settings_from_args(build_parser().parse_args(argv)))
