"""Command line of the backend: flags -> Settings -> Ray Serve application.

Models given as Hub ids are fetched into the Hugging Face cache before Ray starts
(videoserve.serve.model_fetch); ``--download_only`` does only that and exits.

Exit codes: 0 after a SIGTERM/SIGINT shutdown (or after ``--download_only`` fetched every model);
2 for bad flags or a setup that cannot work (a port in use, a damaged job table); 3 when a model
could not be fetched or did not start (its reason is printed as the last ``error:`` line) or was
not running after the one-hour load timeout.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from videoserve.core.config import (
    ENGINES,
    TASKS,
    ConfigError,
    ModelSpec,
    Settings,
    Task,
    parse_defaults,
    parse_resources,
)
from videoserve.core.errors import InvalidInput, NotFound
from videoserve.core.job_table import check_or_recover
from videoserve.core.loras import (
    DEFAULT_MAX_BYTES,
    MAX_LORAS,
    LoraCatalog,
    LoraError,
    check_fits,
    model_shapes,
    parse_lora_flag,
)
from videoserve.core.model_switch import StartupFailed
from videoserve.http.hosts import ANY as ANY_HOST
from videoserve.http.hosts import default_allowed_hosts, normalize_host
from videoserve.serve.model_fetch import ModelFetchError, resolve_models
from videoserve.serve.placement import cuda_gpu_count, gpu_free_gib
from videoserve.serve.presets import PRESETS, SPEEDS, build_specs, preset_specs

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
        parser.add_argument(f"--{task}_speed", choices=SPEEDS, default=None,
                            help=f"{task} speed mode: quality (default; levers that keep the "
                                 "video as exact attention kernels would) or fast (adds FP8 "
                                 "matmuls and a step cache: faster, slightly different "
                                 "videos; fastvideo on a GPU only)")
        parser.add_argument(f"--{task}_lora", action="append", default=None,
                            metavar="ID[:SCALE]",
                            help=f"a LoRA of the LoRA folder every {task} request that names "
                                 "none runs with (scale default 1; repeatable)")
        parser.add_argument(f"--{task}_defaults", default=None, metavar="KEY=VALUE,...",
                            help=f"override the {task} model's sampling defaults, e.g. "
                                 "num_inference_steps=4,guidance_scale=1 for a "
                                 "step-distilled LoRA")
    parser.add_argument("--lora_dir", default=None,
                        help="the LoRA folder: its .safetensors files are the LoRAs requests "
                             "may name (default: loras/ next to --output_path; created)")
    parser.add_argument("--lora_max_mb", type=int, default=None,
                        help="larger LoRA files are listed with an error and never loaded "
                             f"(default: {DEFAULT_MAX_BYTES // 2**20})")
    parser.add_argument("--no_preview", action="store_true",
                        help="no live previews of the denoising (GET /v1/videos/{id}/preview "
                             "answers 409); default: on, a request may turn its own off")
    parser.add_argument("--output_path", default="outputs",
                        help="where videos (and by default input images) live")
    parser.add_argument("--input_path", default=None,
                        help="the only directory image_path may point into "
                             "(default: <output_path>/inputs)")
    parser.add_argument("--model_dir", default=None,
                        help="the folder whose model folders PUT /v1/models may load (besides "
                             "Hub ids and the models started with); default: none")
    parser.add_argument("--recover_jobs", action="store_true",
                        help="if the job table (<output_path>/jobs.sqlite3) is damaged, copy "
                             "its readable jobs into a new one (the damaged file is kept "
                             "aside) instead of stopping")
    parser.add_argument("--ray_address", default=None,
                        help="join this Ray cluster (e.g. auto or ray://host:10001); "
                             "default: start a local one")
    parser.add_argument("--num_cpus", type=int, default=None,
                        help="CPUs for a locally started Ray (default: all)")
    parser.add_argument("--metrics_export_port", type=int, default=None,
                        help="port where a locally started Ray exports its own and Ray Serve's "
                             "Prometheus metrics (default: a random port); with --ray_address, "
                             "set it on ray start instead")
    parser.add_argument("--generator_resources", default=None, metavar="JSON",
                        help="custom Ray resources every generator replica needs, as a JSON "
                             "object, e.g. '{\"gpu_node\": 1}': in a cluster, replicas go "
                             "only to nodes started with `ray start --resources` that have them")


API_KEYS_ENV = "VIDEOSERVE_API_KEYS"
ADMIN_KEYS_ENV = "VIDEOSERVE_ADMIN_API_KEYS"
# Idle keep-alive connections are closed after this long (Serve's default is 90 s). Uvicorn in
# Serve's proxy has no header or body read timeout of its own; bodies have one in the app
# (Settings.body_idle_timeout_s), headers need a reverse proxy (see README, Security).
KEEP_ALIVE_S = 5
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# A model failed to load (its replicas failed every try) or did not load within the timeout.
EXIT_MODEL_FAILED = 3
# Loading the 14B model takes minutes on a cold disk; a model that cannot load ends the wait
# as soon as Serve gives up on it, long before this.
READY_TIMEOUT_S = 3600.0


def add_access_flags(parser: argparse.ArgumentParser) -> None:
    """API key and CORS flags (shared with start_ray_serve_app.py)."""
    parser.add_argument("--api_key", action="append", default=None, metavar="KEY",
                        help="require this API key (Authorization: Bearer KEY); repeat for "
                             f"several. Also from {API_KEYS_ENV} (comma-separated)")
    parser.add_argument("--admin_api_key", action="append", default=None, metavar="KEY",
                        help="a key that may also manage models (PUT/DELETE /v1/models/*), "
                             "which other keys may not; repeat for several. Also from "
                             f"{ADMIN_KEYS_ENV} (comma-separated)")
    parser.add_argument("--allow_model_management", action="store_true",
                        help="without any key, let every client manage models; only on a "
                             "backend that listens on loopback")
    parser.add_argument("--cors_origins", default="",
                        help="comma-separated origins (https://host[:port]) whose web pages may "
                             "call the API; default: none besides the API's own")
    parser.add_argument("--allowed_hosts", default=None,
                        help="comma-separated host names the API answers to (the Host header), "
                             "e.g. the name clients reach it by, besides loopback, the --host "
                             "name (with 0.0.0.0 or ::, this machine's names) and the addresses "
                             "it listens on; others get 421 (DNS rebinding). '*': any host")
    parser.add_argument("--webhook_allow_hosts", default="",
                        help="comma-separated hosts (names or addresses, e.g. 127.0.0.1) that "
                             "webhook endpoints may use whatever they resolve to, over http "
                             "too; default: only https URLs of public addresses")
    parser.add_argument("--webhook_retry_initial_s", type=float, default=None,
                        help="seconds before a failed webhook delivery is first retried "
                             "(then doubling, for up to 24 h; default 5)")


def api_keys(args: argparse.Namespace) -> tuple[str, ...]:
    """Keys from --api_key and the environment, in order, without blanks or repeats."""
    return _keys(args.api_key, API_KEYS_ENV, "--api_key")


def admin_api_keys(args: argparse.Namespace) -> tuple[str, ...]:
    """Keys from --admin_api_key and the environment, like ``api_keys``."""
    return _keys(getattr(args, "admin_api_key", None), ADMIN_KEYS_ENV, "--admin_api_key")


def _keys(given: list[str] | None, env: str, flag: str) -> tuple[str, ...]:
    from_env = os.environ.get(env, "").split(",")
    keys = [k.strip() for k in [*(given or []), *from_env] if k.strip()]
    for key in keys:
        # Servers read header bytes as latin-1 and clients send UTF-8: such a key never matches.
        if not all(" " <= c <= "~" for c in key):
            raise ConfigError(f"{flag} (or {env}): keys must be printable ASCII, since HTTP "
                              "headers carry no other characters reliably; one key has others")
    return tuple(dict.fromkeys(keys))


def allowed_hosts(args: argparse.Namespace) -> tuple[str, ...]:
    """The host names of --allowed_hosts and those of the bind address (--host)."""
    given = [h.strip() for h in (args.allowed_hosts or "").split(",") if h.strip()]
    for host in given:
        if host != ANY_HOST and normalize_host(host) is None:
            raise ConfigError(f"--allowed_hosts: {host!r} is not a host name or address "
                              "(name, name:port, an IPv4 address or [IPv6 address]) or '*'")
    return tuple(dict.fromkeys([*default_allowed_hosts(args.host), *given]))


def webhook_allow_hosts(args: argparse.Namespace) -> tuple[str, ...]:
    """The hosts of --webhook_allow_hosts (lower case, IPv6 without brackets)."""
    from videoserve.core.webhook_urls import normalize_allow_hosts

    return normalize_allow_hosts((getattr(args, "webhook_allow_hosts", "") or "").split(","))


def webhook_retry_initial_s(args: argparse.Namespace) -> float:
    value = getattr(args, "webhook_retry_initial_s", None)
    if value is None:
        return Settings.webhook_retry_initial_s  # the default
    if not 0 < value <= 3600:
        raise ConfigError("--webhook_retry_initial_s: between 0 and 3600 seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Serve FastVideo T2V/I2V models on Ray Serve.",
        epilog="exit codes: 0 stopped by SIGTERM/SIGINT (or --download_only done); 2 bad flags "
               f"or setup; {EXIT_MODEL_FAILED} a model could not be fetched or did not start "
               "(the last 'error:' line says why)")
    parser.add_argument("--download_only", action="store_true",
                        help="fetch the Hub models the other flags name (preset, --tasks, "
                             "--t2v_model_path, --i2v_model_path; without --preset, as when "
                             "serving: fastwan with a GPU, the built-in tiny models without; "
                             "--preset fastwan fetches the real ones on any machine) into the "
                             "Hugging Face cache (HF_HOME), print each one's folder and exit "
                             "without starting Ray")
    parser.add_argument("--drain_timeout", type=float, default=30.0,
                        help="on SIGTERM/SIGINT, seconds that waiting requests get to finish")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port")
    add_access_flags(parser)
    add_model_flags(parser)
    return parser


def parse_tasks(text: str) -> tuple[Task, ...]:
    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ConfigError(f"--tasks must name t2v and/or i2v, got {text!r}")
    return tasks  # type: ignore[return-value]


def default_preset(gpus: int) -> str:
    """The preset when --preset is not given: the real models with a GPU, the tiny ones without."""
    return "fastwan" if gpus else "tiny"


def settings_from_args(args: argparse.Namespace) -> Settings:
    gpus = cuda_gpu_count()
    preset = args.preset or default_preset(gpus)
    tasks = parse_tasks(args.tasks)
    resources = parse_resources(args.generator_resources) if args.generator_resources else {}
    sp_sizes = {task: getattr(args, f"{task}_sp_size") for task in TASKS}
    speeds = {task: getattr(args, f"{task}_speed", None) for task in TASKS}
    specs = build_specs(preset, args.engine, args.t2v_model_path, args.i2v_model_path,
                        gpu_count=gpus, replicas=args.replicas, tasks=tasks,
                        resources=resources, sp_sizes=sp_sizes, speeds=speeds,
                        gpu_free=gpu_free_gib() if gpus else None)
    output = Path(args.output_path).expanduser().resolve()
    inputs = Path(args.input_path).expanduser().resolve() if args.input_path else None
    origins = tuple(o.strip().rstrip("/") for o in args.cors_origins.split(",") if o.strip())
    model_dir = Path(args.model_dir).expanduser().resolve() if args.model_dir else None
    specs = with_model_defaults(specs, args)
    lora_dir = Path(args.lora_dir).expanduser().resolve() if args.lora_dir else None
    lora_max_mb = DEFAULT_MAX_BYTES // 2**20 if args.lora_max_mb is None else args.lora_max_mb
    if lora_max_mb <= 0:
        raise ConfigError("--lora_max_mb must be positive")
    return Settings(models=specs, output_path=output, input_path=inputs,
                    lora_dir=lora_dir, lora_max_bytes=lora_max_mb * 2**20,
                    preview=not args.no_preview,
                    api_keys=api_keys(args), cors_origins=origins,
                    allowed_hosts=allowed_hosts(args),
                    admin_api_keys=admin_api_keys(args), model_dir=model_dir,
                    allow_model_management=args.allow_model_management,
                    recover_jobs=args.recover_jobs,
                    webhook_allow_hosts=webhook_allow_hosts(args),
                    webhook_retry_initial_s=webhook_retry_initial_s(args))


def with_model_defaults(specs: dict[Task, ModelSpec],
                        args: argparse.Namespace) -> dict[Task, ModelSpec]:
    """``--<task>_lora`` and ``--<task>_defaults`` applied to the specs."""
    specs = dict(specs)
    for task, spec in specs.items():
        changes: dict[str, Any] = {}
        given = getattr(args, f"{task}_lora", None) or []
        try:
            loras = [parse_lora_flag(text) for text in given]
        except ValueError as exc:
            raise ConfigError(f"--{task}_lora {exc}") from None
        ids = [lora_id for lora_id, _ in loras]
        if len(set(ids)) != len(ids) or len(ids) > MAX_LORAS:
            raise ConfigError(f"--{task}_lora: at most {MAX_LORAS} different LoRAs")
        if loras:
            changes["loras"] = tuple(loras)
        text = getattr(args, f"{task}_defaults", None)
        if text:
            changes["defaults"] = parse_defaults(text, spec, f"--{task}_defaults")
        specs[task] = replace(spec, **changes)
    return specs


def check_model_loras(settings: Settings) -> None:
    """Every default LoRA is in the LoRA folder and fits its model (ConfigError naming it)."""
    from videoserve.serve.deployments import local_model_folder

    catalog = LoraCatalog(settings.loras_dir, settings.lora_max_bytes)
    for task, spec in settings.models.items():
        for lora_id, _ in spec.loras:
            try:
                info = catalog.usable(lora_id)
                folder = local_model_folder(spec)
                layers = model_shapes(folder) if folder else None
            except (NotFound, InvalidInput) as exc:
                raise ConfigError(f"--{task}_lora {lora_id}: {exc.message} (LoRA folder: "
                                  f"{settings.loras_dir})") from None
            except (LoraError, OSError):
                layers = None  # its replicas check it
            try:
                check_fits(info, layers, spec.model)
            except InvalidInput as exc:
                raise ConfigError(f"--{task}_lora {lora_id}: {exc.message}") from None


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host`` (URL form)."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def check_port_free(host: str, port: int) -> None:
    """ConfigError unless a server could listen on host:port now. Bound the way Serve's proxy
    (uvicorn) binds, with SO_REUSEADDR, so a closed connection's TIME_WAIT is no false alarm."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is already in use: stop what holds "
                                  "it or choose another port") from exc
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def confirm_serving(host: str, port: int, timeout_s: float = 30.0) -> None:
    """ConfigError unless this backend's own /health answers at host:port.

    The port was free before Ray started, but Ray then picks random free ports for its own
    processes, and its metrics exporter answers every path with 200 and Prometheus text. If
    one of them took --port, Serve's proxy could not listen there and a client would talk to
    that process instead: say so and stop rather than serve nothing.
    """
    import requests

    from videoserve.client import json_or_none

    url = f"http://{connect_host(host)}:{port}/health"
    deadline = time.monotonic() + timeout_s
    seen = "nothing answered"
    while True:
        try:
            response = requests.get(url, timeout=5)
            if response.status_code == 200 and json_or_none(response) == {"status": "ok"}:
                return
            # Serve's proxy may answer 404/503 for a moment while it learns the routes.
            seen = (f"HTTP {response.status_code} "
                    f"({response.headers.get('content-type', 'no content type')})")
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise ConfigError(
                f"the backend is deployed but {url} does not answer as this backend "
                f"({seen} for {timeout_s:.0f}s): another process, possibly one Ray started, "
                "holds the port. Start again, or choose another port")
        time.sleep(0.5)


def check_model_management(host: str, settings: Settings) -> None:
    """--allow_model_management: only without keys, and only where no other machine reaches."""
    if not settings.allow_model_management:
        return
    if settings.api_keys or settings.admin_api_keys:
        raise ConfigError("--allow_model_management is for a backend without keys; with keys, "
                          "give the keys that may manage models with --admin_api_key")
    if host not in LOOPBACK:
        raise ConfigError(f"--allow_model_management needs a loopback --host (127.0.0.1, ::1 "
                          f"or localhost), not {host}: on an address others reach, give "
                          "--admin_api_key KEY instead")


def warn_if_open(host: str, settings: Settings) -> None:
    keys = len(settings.api_keys) + len(settings.admin_api_keys)
    if keys:
        log.info("API keys required (%d configured, %d of them admin keys)", keys,
                 len(settings.admin_api_keys))
    elif host not in LOOPBACK:
        log.warning("WARNING: serving on %s without an API key: anyone who can reach this port "
                    "can list, download and delete every video and start generations. Pass "
                    "--api_key KEY (or set %s) or bind 127.0.0.1.", host, API_KEYS_ENV)


@dataclass(frozen=True)
class Running:
    """What ``start`` created, so that shutting down removes exactly that."""

    app: Any  # the ingress's handle
    joined_cluster: bool  # Ray ran before the backend (--ray_address): never stop its nodes
    started_serve: bool  # Serve was not running in that Ray before the backend started it


def start(settings: Settings, host: str, port: int, ray_address: str | None,
          num_cpus: int | None = None, metrics_export_port: int | None = None) -> Running:
    """Start (or join) Ray, deploy the app, wait until every model is up."""
    import ray
    from ray import serve

    from videoserve.serve.deployments import APP_NAME, deploy

    if ray_address:
        if metrics_export_port is not None:
            log.warning("--metrics_export_port applies to a Ray this backend starts; for a "
                        "cluster pass --metrics-export-port to ray start on each node")
        ray.init(address=ray_address)
    else:
        # "local" starts a new Ray even when RAY_ADDRESS is set or a `ray start` cluster on
        # this machine left its address in /tmp/ray (which a bare ray.init() would join): the
        # backend shuts down on exit what it started, and must not have joined someone's cluster.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 _metrics_export_port=metrics_export_port)
    running = Running(None, bool(ray_address), not _serve_running())
    try:
        serve.start(http_options={"host": host, "port": port,
                                  "keep_alive_timeout_s": KEEP_ALIVE_S})
        # The ingress keeps the job table under --output_path on this machine: it runs on the
        # node this process is connected to.
        node_id = ray.get_runtime_context().get_node_id()
        app = deploy(settings, APP_NAME, "/", timeout_s=READY_TIMEOUT_S,
                     ingress_node_id=node_id)
    except BaseException:
        _shutdown(running)  # a model that did not load leaves nothing behind either
        raise
    return replace(running, app=app)


def _serve_running() -> bool:
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


def download_specs(args: argparse.Namespace) -> dict[Task, ModelSpec]:
    """The models ``--download_only`` fetches: those the same flags would serve (the preset,
    the model flags, --tasks), without placing them, so that any machine can fetch them
    (``--preset fastwan`` on one without a GPU)."""
    preset = args.preset or default_preset(cuda_gpu_count())
    if args.preset is None and preset == "tiny":
        log.info("no CUDA GPU visible: the tiny preset, built in (--preset fastwan fetches "
                 "the real models)")
    tasks = parse_tasks(args.tasks)
    overrides = {"t2v": args.t2v_model_path, "i2v": args.i2v_model_path}
    return {task: replace(spec, model=overrides[task] or spec.model)
            for task, spec in preset_specs(preset, 0).items() if task in tasks}


def fetch(specs: dict[Task, ModelSpec], cluster: bool) -> dict[Task, ModelSpec] | int:
    """``specs`` with their Hub models fetched (``resolve_models``), or the exit code after
    printing why not: a fetch that failed, or a Ctrl-C during a download (130)."""
    try:
        return resolve_models(specs, cluster=cluster)
    except ModelFetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MODEL_FAILED
    except KeyboardInterrupt:
        print("error: download interrupted; run again to resume", file=sys.stderr)
        return 130


def download_only(args: argparse.Namespace) -> int:
    """``--download_only``: fetch, print ``<task>: <model> <folder>`` per model, exit."""
    try:
        specs = download_specs(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fetched = fetch(specs, cluster=bool(args.ray_address))
    if isinstance(fetched, int):
        return fetched
    for task, spec in fetched.items():
        where = spec.local_path or "(not a Hub id: nothing to download)"
        print(f"{task}: {spec.model} {where}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    if args.download_only:
        return download_only(args)
    try:
        settings = settings_from_args(args)
        check_model_management(args.host, settings)
        # Before Ray starts: a damaged job table stops the backend here, with its way out.
        check_or_recover(settings.output_path / "jobs.sqlite3", settings.recover_jobs)
        if args.metrics_export_port is not None and args.metrics_export_port == args.port:
            raise ConfigError("--metrics_export_port must differ from --port")
        if not args.ray_address:  # a cluster's Serve may already listen there, for others
            check_port_free(args.host, args.port)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    warn_if_open(args.host, settings)
    # Before Ray starts: replicas load the fetched folders and never download.
    fetched = fetch(settings.models, cluster=bool(args.ray_address))
    if isinstance(fetched, int):
        return fetched
    settings = replace(settings, models=fetched)
    try:
        check_model_loras(settings)  # needs the fetched folders
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _log_models(settings)
    stop = threading.Event()
    _on_stop_signals(stop)
    started = time.perf_counter()
    try:
        running = start(settings, args.host, args.port, args.ray_address, args.num_cpus,
                        args.metrics_export_port)
    except (StartupFailed, TimeoutError) as exc:
        # Expected when a model cannot load (a wrong path, a broken folder, a node of a
        # cluster without the fetched folder): the reason, not a traceback. Serve's log
        # above holds the replicas' own tracebacks.
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MODEL_FAILED
    if not args.ray_address:
        try:
            confirm_serving(args.host, args.port)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            _shutdown(running)
            return 2
    # Again after Ray started: ray.init installs its own SIGTERM handler, which would end the
    # process without draining.
    _on_stop_signals(stop)
    log.info("ready in %.1fs: http://%s:%d (API docs at /docs)", time.perf_counter() - started,
             args.host, args.port)
    _log_placement(running.app)
    stop.wait()
    _drain_and_shut_down(running, args.drain_timeout)
    return 0


def _drain_and_shut_down(running: Running, drain_timeout: float) -> None:
    """On SIGTERM/SIGINT: let waiting requests finish (up to ``drain_timeout``), then stop
    what this process started."""
    log.info("draining (up to %.0fs), then shutting down", drain_timeout)
    try:
        drained = running.app.drain.remote(drain_timeout).result(timeout_s=drain_timeout + 30)
        log.info("drained: %s", drained)
    except Exception:  # noqa: BLE001 - shut down anyway; queued jobs are on disk
        log.exception("drain failed")
    _shutdown(running)


def _log_models(settings: Settings) -> None:
    for spec in settings.models.values():
        note = " (random weights: output is noise)" if spec.synthetic else ""
        log.info("%s: %s on %s via %s%s", spec.task, spec.model, spec.device, spec.engine, note)


def _on_stop_signals(stop: threading.Event) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())


def _log_placement(app: Any) -> None:
    try:
        log.info("placement (Ray node ids): %s", app.placement.remote().result(timeout_s=30))
    except Exception:  # noqa: BLE001 - informative only
        log.warning("could not read the replicas' placement", exc_info=True)


def _shutdown(running: Running) -> None:
    """Remove what the backend created: in a cluster it joined, its application (and Serve if
    it started Serve and nothing else runs on it), then disconnect; never the cluster's nodes."""
    import ray
    from ray import serve

    from videoserve.serve.deployments import APP_NAME, undeploy

    try:
        if not running.joined_cluster:
            serve.shutdown()
            return
        undeploy(APP_NAME)  # the ingress and its generator applications
        if running.started_serve and not serve.status().applications:
            serve.shutdown()
    finally:
        # A driver that joined a cluster only disconnects; a Ray it started is stopped.
        ray.shutdown()


def app_builder(args: dict[str, str]) -> Any:
    """Application builder for
    ``serve run videoserve.serve.backend_cli:app_builder preset=tiny ...``.

    Takes the same options as the backend's flags (without the leading dashes); host, port and
    ray_address belong to ``serve run`` itself there.
    """
    from videoserve.serve.deployments import build_app

    # A YAML config gives generator_resources as a mapping, the command line as JSON text.
    argv = [f"--{key}={json.dumps(value) if isinstance(value, dict) else value}"
            for key, value in args.items()]
    # The builder runs before `serve run` connects to Ray, so the node it will run on is not
    # known yet: the ingress goes to the head node (see deployments.build_app).
    return build_app(settings_from_args(build_parser().parse_args(argv)))
