"""Model specs, presets and service settings.

A ``ModelSpec`` says everything a generator deployment needs: which task it serves, which model
folder or hub id it loads, which engine runs it, where it is placed and the model's default
sampling parameters and limits. ``Settings`` is the whole service configuration, built once from
CLI flags (or a ``serve run`` config) and passed down explicitly.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from videoserve.core.loras import DEFAULT_MAX_BYTES

Task = Literal["t2v", "i2v"]


EngineName = Literal["fastvideo", "diffusers"]


TASKS: tuple[Task, ...] = ("t2v", "i2v")


ENGINES: tuple[EngineName, ...] = ("fastvideo", "diffusers")


# Model ids of the built-in random-weight models (see videoserve.devtools.tiny_models).
TINY_MODEL_IDS: dict[Task, str] = {"t2v": "builtin:tiny-wan-t2v", "i2v": "builtin:tiny-wan-i2v"}


DEFAULT_T2V_MODEL = "FastVideo/FastWan2.1-T2V-1.3B-Diffusers"


DEFAULT_I2V_MODEL = "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"


class ConfigError(ValueError):
    """The requested configuration cannot run here; the message names the way out."""


@dataclass(frozen=True)
class SamplingDefaults:
    """Parameters used when a request leaves them unset."""

    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    fps: int
    negative_prompt: str = ""


@dataclass(frozen=True)
class Limits:
    """Largest request a model accepts (sizes are multiples of 16, frames are 4k+1)."""

    max_height: int = 832
    max_width: int = 832
    max_pixels: int = 480 * 832
    max_num_frames: int = 81
    max_num_inference_steps: int = 50
    max_guidance_scale: float = 20.0
    max_fps: int = 60


@dataclass(frozen=True)
class ModelSpec:
    """One generator deployment: task, model, engine, placement and defaults."""

    task: Task
    model: str
    engine: EngineName
    defaults: SamplingDefaults
    limits: Limits = field(default_factory=Limits)
    replicas: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    max_ongoing_requests: int = 1
    # Custom Ray resources each replica needs (e.g. {"gpu_node": 1}): in a cluster, only nodes
    # started with them (`ray start --resources`) take this model's replicas.
    resources: dict[str, float] = field(default_factory=dict)
    # Jobs that may wait in the ingress's queue for this model; beyond it new ones get a 429
    # with Retry-After (estimated from measured job times).
    max_queued_requests: int = 64
    # Engine-specific keyword options (fastvideo offload flags, attention backend, dtypes ...).
    engine_options: dict[str, Any] = field(default_factory=dict)
    # True for random-weight models: their output is noise.
    synthetic: bool = False
    # "quality" or "fast" (SPEEDS): which speed levers the engine runs with.
    speed: str = "quality"
    # How place() placed it and why (GET /v1/placement); empty on the CPU.
    placement: dict[str, Any] = field(default_factory=dict)
    # The folder replicas load ``model`` from when the backend fetched it before they started
    # (a Hub id's snapshot in the Hugging Face cache, see videoserve.serve.model_fetch); None:
    # ``model`` itself. Never shown to clients: ``model`` stays the name.
    local_path: str | None = None
    # LoRAs applied to every request that names none (--t2v_lora / --i2v_lora): (id, scale).
    loras: tuple[tuple[str, float], ...] = ()
    # The LoRA folder its replicas read LoRAs from (the backend's --lora_dir; in a cluster the
    # same path on every node, like the model folders). Never shown to clients.
    lora_dir: str | None = None

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"

    def describe(self) -> dict[str, Any]:
        """Public description served by GET /v1/models."""
        return {
            "id": self.model,
            "task": self.task,
            "engine": self.engine,
            "device": self.device,
            "replicas": self.replicas,
            "synthetic": self.synthetic,
            "speed": self.speed,
            "defaults": self.defaults.__dict__,
            "limits": self.limits.__dict__,
            "loras": [{"id": lora_id, "scale": scale} for lora_id, scale in self.loras],
        }


FASTWAN_T2V_DEFAULTS = SamplingDefaults(
    height=448, width=832, num_frames=61, num_inference_steps=3, guidance_scale=1.0, fps=16
)


WAN_I2V_DEFAULTS = SamplingDefaults(
    height=480,
    width=832,
    num_frames=81,
    num_inference_steps=40,
    guidance_scale=5.0,
    fps=16,
    negative_prompt=(
        "Bright tones, overexposed, static, blurred details, subtitles, worst quality, "
        "low quality, JPEG compression residue, ugly, deformed, disfigured"
    ),
)


TINY_DEFAULTS = SamplingDefaults(
    height=64, width=64, num_frames=9, num_inference_steps=2, guidance_scale=1.0, fps=8
)


def fastvideo_cpu_allowed() -> bool:
    # Only the test suite's platform shim makes fastvideo run on a CPU; never the product path.
    return os.environ.get("VIDEOSERVE_FASTVIDEO_CPU_SHIM") == "1"


# Ray's own resources have their own options (num_cpus, num_gpus); Ray refuses them here.
RESERVED_RESOURCES = ("CPU", "GPU")


def parse_resources(text: str) -> dict[str, float]:
    """``--generator_resources``: a JSON object of custom resource name -> amount (> 0)."""
    flag = "--generator_resources"
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{flag} must be a JSON object such as '{{\"gpu_node\": 1}}'; "
                          f"could not parse {text!r}: {exc.msg}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} must be a JSON object such as '{{\"gpu_node\": 1}}', "
                          f"got {text!r}")
    resources: dict[str, float] = {}
    for name, amount in value.items():
        if not name.strip() or name in RESERVED_RESOURCES:
            raise ConfigError(f"{flag}: {name!r} is not a custom resource name "
                              "(CPUs and GPUs are placed by the preset)")
        # bool is an int in Python, but `true` is no amount.
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise ConfigError(f"{flag}: the amount of {name!r} must be a number, "
                              f"got {amount!r}")
        # Ray counts resources in units of 0.0001; a zero request would pin nothing.
        if not math.isfinite(amount) or amount < 0.0001:
            raise ConfigError(f"{flag}: the amount of {name!r} must be positive (at least "
                              f"0.0001), got {amount!r}")
        resources[name] = float(amount)
    return resources


def parse_defaults(text: str, spec: ModelSpec, flag: str) -> SamplingDefaults:
    """``KEY=VALUE,...`` (``--t2v_defaults``) over the spec's sampling defaults; each value
    takes the type of the default it replaces, and the result must fit the model's limits."""
    values: dict[str, Any] = {}
    known = spec.defaults.__dict__
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise ConfigError(f"{flag}: {item!r} is not KEY=VALUE with KEY one of "
                              f"{', '.join(known)}")
        values[key] = _typed(type(known[key]), raw.strip(), f"{flag}: {key}")
    defaults = replace(spec.defaults, **values)
    _check_defaults(defaults, spec, flag)
    return defaults


def _typed(kind: type, raw: str, what: str) -> Any:
    if kind is str:
        return raw
    try:
        number = float(raw)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or (kind is int and not number.is_integer()):
        raise ConfigError(f"{what} must be {'an integer' if kind is int else 'a number'}, "
                          f"got {raw!r}")
    return kind(number)


def _check_defaults(defaults: SamplingDefaults, spec: ModelSpec, flag: str) -> None:
    from videoserve.core.request import valid_frames, valid_side

    limits = spec.limits
    for name, value in defaults.__dict__.items():
        bound = getattr(limits, f"max_{name}", None)
        if isinstance(value, int | float) and (value <= 0 and name != "guidance_scale" or
                                               bound is not None and value > bound):
            raise ConfigError(f"{flag}: {name}={value} is outside 1..{bound}")
    if not valid_frames(defaults.num_frames):
        raise ConfigError(f"{flag}: num_frames must be 4k+1, got {defaults.num_frames}")
    if not (valid_side(defaults.height) and valid_side(defaults.width)):
        raise ConfigError(f"{flag}: height and width must be multiples of 16")


def is_synthetic(model: str) -> bool:
    """Random-weight models: the built-in tiny ids and folders the model builder marked (its
    SYNTHETIC.txt), full-size ones included: their output is noise."""
    if model in TINY_MODEL_IDS.values():
        return True
    try:
        return (Path(model).expanduser() / "SYNTHETIC.txt").is_file()
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class Settings:
    """Everything the service needs, passed to every deployment."""

    models: dict[Task, ModelSpec]
    output_path: Path = Path("outputs")
    input_path: Path | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    # Bytes received of the bodies of all requests in flight together (each counts until its
    # response is sent); beyond it new ones get 503 with Retry-After. Bounds the ingress's memory.
    max_inflight_body_bytes: int = 64 * 1024 * 1024
    # The share of it one client address may hold (429 with Retry-After beyond).
    max_client_body_bytes: int = 32 * 1024 * 1024
    # Inputs are fitted to the model's size (at most 480x832) anyway; 8 Mpx still takes a
    # 4K photo (3840x2160).
    max_image_pixels: int = 8 * 1024 * 1024
    # Pixels being decoded at once across requests (a decode peaks at ~10 bytes a pixel);
    # others wait up to decode_wait_s, then get 503 with Retry-After.
    max_decode_pixels: int = 24 * 1024 * 1024
    decode_wait_s: float = 10.0
    # A client that stops sending in the middle of a body is answered 408 after this long.
    body_idle_timeout_s: float = 30.0
    # The time a body of max_body_bytes may take to arrive in all (408 after); a smaller body
    # gets its share by size, and at least body_min_timeout_s.
    body_timeout_s: float = 60.0
    body_min_timeout_s: float = 10.0
    request_timeout_s: float = 3600.0
    # API keys; none: the API is open. Kept out of repr so they are never logged.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # Keys that may also manage models (PUT/DELETE /v1/models/*); user keys may not.
    admin_api_keys: tuple[str, ...] = field(default=(), repr=False)
    # Model management without any key; the backend CLI allows it on loopback only.
    allow_model_management: bool = False
    # The folder a model switch may load from, besides Hub ids and the models started with.
    model_dir: Path | None = None
    # The LoRA folder (GET /v1/loras); None: ``loras/`` next to the output folder.
    lora_dir: Path | None = None
    # Larger LoRA files are listed with an error and never loaded.
    lora_max_bytes: int = DEFAULT_MAX_BYTES
    # Live previews of the denoising (a request may turn them off; --no_preview: for all).
    preview: bool = True
    # A damaged job table is recovered (its readable jobs copied) instead of refused.
    recover_jobs: bool = False
    # Origins (scheme://host[:port]) whose browser pages may call the API, besides its own.
    cors_origins: tuple[str, ...] = ()
    # Host names the API answers to besides loopback and the address a connection arrived on
    # ("*": any); other Host headers get 421 (DNS rebinding, see videoserve.http.hosts).
    allowed_hosts: tuple[str, ...] = ()
    # Webhook receivers allowed besides https URLs of public addresses (any address, http too).
    webhook_allow_hosts: tuple[str, ...] = ()
    # The first wait before a failed webhook delivery is retried (then doubling, for 24 h).
    webhook_retry_initial_s: float = 5.0
    # One per backend start: an ingress that Serve restarts within the same run keeps the
    # models switched at runtime; a new run starts from these settings' models.
    run_id: str = field(default_factory=lambda: secrets.token_hex(8))

    @property
    def inputs_dir(self) -> Path:
        return self.input_path if self.input_path is not None else self.output_path / "inputs"

    @property
    def loras_dir(self) -> Path:
        return self.lora_dir if self.lora_dir is not None else self.output_path.parent / "loras"

    @property
    def videos_dir(self) -> Path:
        return self.output_path / "videos"

    def with_output_path(self, path: Path) -> Settings:
        return replace(self, output_path=path)
