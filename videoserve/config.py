"""Model specs, presets and service settings.

A ``ModelSpec`` says everything a generator deployment needs: which task it serves, which model
folder or hub id it loads, which engine runs it, where it is placed and the model's default
sampling parameters and limits. ``Settings`` is the whole service configuration, built once from
CLI flags (or a ``serve run`` config) and passed down explicitly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

Task = Literal["t2v", "i2v"]
EngineName = Literal["fastvideo", "diffusers"]
TASKS: tuple[Task, ...] = ("t2v", "i2v")
ENGINES: tuple[EngineName, ...] = ("fastvideo", "diffusers")
PRESETS = ("fastwan", "tiny")

# Model ids of the built-in random-weight models (see videoserve.tiny_models).
TINY_MODEL_IDS: dict[Task, str] = {"t2v": "builtin:tiny-wan-t2v", "i2v": "builtin:tiny-wan-i2v"}

DEFAULT_T2V_MODEL = "FastVideo/FastWan2.1-T2V-1.3B-Diffusers"
DEFAULT_I2V_MODEL = "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"

# fastvideo's offload flags default to True and one of them stays on unless passed: always pass all.
FASTVIDEO_OFFLOAD_FLAGS = (
    "dit_cpu_offload",
    "dit_layerwise_offload",
    "text_encoder_cpu_offload",
    "image_encoder_cpu_offload",
    "vae_cpu_offload",
    "pin_cpu_memory",
)
NO_OFFLOAD: dict[str, bool] = {flag: False for flag in FASTVIDEO_OFFLOAD_FLAGS}


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


# Speed levers of the fastwan preset, chosen by benchmarks/gpu.py (docs/BENCHMARKS.md): on by
# default only when faster and their frames stay within 1 dB of the noise floor, the PSNR
# between two exact attention kernels' frames in the same run (random weights make any bf16
# reordering visible, so a fixed dB threshold would measure that, not the lever).
# FastWan (H100): bf16 VAE (decode 3.16 -> 2.43 s, 47 dB), a compiled DiT (0.80 -> 0.54 s a step,
# 46 dB; compiled by a warm-up at load) and the VAE decoding in channels-last layout (decode
# 2.69 -> 2.37 s on top of those, 60 dB alone), and a compiled VAE decoder (decode 2.18 ->
# 1.18 s on top of the rest, 44.0 dB; its compile adds about 70 s a video size to the warm-up
# at load and up to 8 GiB to the peak, so place() leaves it off on a GPU the models share
# unless it has room). Compiles are per size: the decoder compiles for Wan's 480x832 (the
# benchmarks' size) only, FastWan's own default 448x832 decodes eagerly; the warm-up runs at
# both (the compiled DiT is per size too), so no request pays for a compile. I2V-14B: the
# channels-last decode (the same VAE), cuDNN-first attention (9.67 -> 7.64 s a step on an H200)
# and a compiled DiT that rounds as eager code does (compile_precise: 9.67 -> 8.09 s a step alone,
# 38.2 dB against a floor of 38.1 dB; plain compile was 31.5 dB on an H100), paid for by a
# two-step warm-up at load.
CUDNN_FIRST = ["cudnn", "flash", "efficient", "math"]
FASTWAN_SPEED: dict[Task, dict[str, Any]] = {
    "t2v": {"vae_precision": "bf16", "compile": True, "warmup": True, "vae_channels_last": True,
            "vae_compile": [[480, 832]], "warmup_sizes": [[480, 832]]},
    "i2v": {"vae_channels_last": True, "sdpa_priority": CUDNN_FIRST, "compile": True,
            "compile_precise": True, "warmup": True},
}

# Speed modes, chosen per model at start (--t2v_speed, --i2v_speed). ``quality`` is the preset's
# levers above: each on only because its frames stay as close to the reference as two exact
# attention kernels' frames are to each other (the noise floor, measured in the same run:
# docs/BENCHMARKS.md). ``fast`` adds the levers that change the video more than that, each with
# its measured speed and PSNR: FP8 matmuls in the DiT and a step cache that skips the DiT's
# blocks on steps where their input barely changed. A request cannot change the mode: it
# would mean reloading or recompiling the model.
SPEEDS = ("quality", "fast")
FAST_LEVERS: dict[Task, dict[str, Any]] = {
    "t2v": {},  # FastWan runs 3 distilled steps: no step to skip, no other lever measured yet
    "i2v": {"dit_fp8": True, "step_cache": 0.1},
}


def preset_specs(preset: str, gpu_count: int) -> dict[Task, ModelSpec]:
    """The two model specs of a preset, placed for ``gpu_count`` GPUs."""
    if preset == "tiny":
        return {
            task: ModelSpec(
                task=task,
                model=TINY_MODEL_IDS[task],
                engine="diffusers",
                defaults=TINY_DEFAULTS,
                synthetic=True,
            )
            for task in TASKS
        }
    if preset == "fastwan":
        t2v = ModelSpec(
            task="t2v",
            model=DEFAULT_T2V_MODEL,
            engine="fastvideo",
            defaults=FASTWAN_T2V_DEFAULTS,
            # FastWan was distilled with video sparse attention; fastvideo falls back to SDPA
            # when the kernel package is missing.
            engine_options={"attention_backend": "VIDEO_SPARSE_ATTN", "VSA_sparsity": 0.8,
                            **FASTWAN_SPEED["t2v"]},
        )
        i2v = ModelSpec(
            task="i2v", model=DEFAULT_I2V_MODEL, engine="fastvideo", defaults=WAN_I2V_DEFAULTS,
            engine_options=dict(FASTWAN_SPEED["i2v"]),
        )
        return {"t2v": t2v, "i2v": i2v}
    raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")


def place(specs: dict[Task, ModelSpec], gpu_count: int,
          gpu_free_gib: list[float] | None = None) -> dict[Task, ModelSpec]:
    """Give each spec its GPU share and offload flags for the GPUs present.

    The deployed GPU models need R = sum(replicas x sp_size) whole GPUs. With at least R, each
    replica gets sp_size whole GPUs (Ray hands it that many devices; fastvideo's workers use
    them as local ranks 0..sp_size-1) and nothing is offloaded. With fewer, replicas share
    GPUs (a fraction each, packed so Ray can place them all). Whether the models that share a
    GPU still fit whole is decided from each GPU's free memory (``gpu_free_gib``, read at
    start) and each model's measured need (``gpu_need_gib``): on a 141 GB H200 a T2V and an
    I2V fit with nothing offloaded. Where they do not fit, or either figure is unknown, the
    I2V model offloads its text encoder and streams DiT layers so both fit in 80 GB (measured
    peak 77.7 of 79.6 GiB on an H100 with a T2V and an I2V at once; with the DiT kept on the
    GPU the T2V ran out of memory, docs/BENCHMARKS.md), and no model compiles its VAE decoder
    (about 8 GiB more at peak, which that margin lacks, and about 70 s more before /ready). A
    replica that spans GPUs cannot share them: with fewer than R GPUs, sp_size > 1 is refused.
    CPU-only specs are left as they are.
    """
    # Tiny random-weight models (synthetic, of no architecture with a measured need) stay on the
    # CPU under the diffusers engine; everything else that can use a GPU gets one; full-size
    # random-weight folders are placed as the real models.
    # A model folder's need is read from its config once: it also tells a tiny model apart.
    all_needs = {t: gpu_need_gib(s) for t, s in specs.items()}
    tiny = {t: s.synthetic and all_needs[t] is None for t, s in specs.items()}
    gpu_specs = [t for t, s in specs.items() if s.engine == "fastvideo" or not tiny[t]]
    needed = sum(specs[t].replicas * sp_size(specs[t]) for t in gpu_specs)
    whole = gpu_count >= needed
    if not whole and any(sp_size(specs[t]) > 1 for t in gpu_specs):
        raise ConfigError(
            f"the deployed models need {needed} GPUs (replicas x sp_size) and {gpu_count} are "
            "visible; a replica with sp_size > 1 needs whole GPUs of its own. Lower --replicas "
            "or --t2v_sp_size/--i2v_sp_size, or deploy fewer --tasks.")
    # Fractions Ray can pack: at most ceil(needed / gpus) replicas on a GPU.
    per_gpu = 1 if whole else math.ceil(needed / max(gpu_count, 1))
    share = 1.0 / per_gpu
    needs = {t: all_needs[t] for t in gpu_specs}
    verdict = shared_fit(needs, specs, per_gpu, gpu_free_gib)
    placed = dict(specs)
    for task in gpu_specs:
        spec = specs[task]
        options = dict(spec.engine_options)
        if spec.engine == "fastvideo":
            options = {**NO_OFFLOAD, **options}
            if share < 1.0 and not verdict.fits:
                if task == "i2v" and not tiny[task]:
                    options.update(text_encoder_cpu_offload=True, dit_layerwise_offload=True)
                options.pop("vae_compile", None)
        num_gpus = float(sp_size(spec)) if whole else share
        offloaded = [flag for flag in FASTVIDEO_OFFLOAD_FLAGS if options.get(flag)]
        placement = {"num_gpus": num_gpus, "shares_gpu": share < 1.0, "offloaded": offloaded,
                     "need_gib": needs[task], "gpu_free_gib": gpu_free_gib,
                     "reason": "a GPU of its own" if share == 1.0 else verdict.reason}
        placed[task] = replace(spec, num_gpus=num_gpus, num_cpus=1.0, engine_options=options,
                               placement=placement)
    return placed


# Peak GPU memory of one replica with nothing offloaded, measured (docs/BENCHMARKS.md), by the
# DiT's (layers, width): Wan2.1-I2V-14B 63.5 GiB at 480x832x81 with guidance; FastWan2.1-T2V-1.3B
# 38.4 GiB with its compiled VAE decoder.
MEASURED_NEED_GIB = {(40, 5120): 63.5, (30, 1536): 38.4}
KNOWN_DIT = {DEFAULT_I2V_MODEL: (40, 5120), DEFAULT_T2V_MODEL: (30, 1536)}
# Part of a GPU's free memory that models may plan to use: the rest is for the CUDA contexts,
# the allocator's fragmentation and what the measured peaks did not see.
USABLE_FRACTION = 0.92


@dataclass(frozen=True)
class Fit:
    fits: bool
    reason: str


def gpu_need_gib(spec: ModelSpec) -> float | None:
    """A replica's GPU memory need: the ``gpu_memory_gib`` engine option, else the measured
    figure of its architecture; None when unknown."""
    if "gpu_memory_gib" in spec.engine_options:
        return float(spec.engine_options["gpu_memory_gib"])
    dit = KNOWN_DIT.get(spec.model) or _dit_shape(spec.model)
    return MEASURED_NEED_GIB.get(dit) if dit else None


def _dit_shape(model: str) -> tuple[int, int] | None:
    try:
        config = json.loads((Path(model) / "transformer" / "config.json").read_text())
        width = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
        return int(config["num_layers"]), width
    except (OSError, ValueError, KeyError, TypeError):
        return None


def shared_fit(needs: dict[Task, float | None], specs: dict[Task, ModelSpec], per_gpu: int,
               gpu_free_gib: list[float] | None) -> Fit:
    """Whether the ``per_gpu`` heaviest replicas fit on the GPU with the least free memory."""
    if per_gpu <= 1:
        return Fit(True, "a GPU of its own")
    if not gpu_free_gib:
        return Fit(False, "the GPUs' free memory is unknown: planned for an 80 GB GPU")
    if any(need is None for need in needs.values()):
        unknown = [t for t, need in needs.items() if need is None]
        return Fit(False, f"the memory need of {', '.join(unknown)} is unknown (set engine "
                          "option gpu_memory_gib): planned for an 80 GB GPU")
    replicas = sorted((needs[t] for t in needs for _ in range(specs[t].replicas)), reverse=True)
    heaviest = sum(replicas[:per_gpu])  # type: ignore[arg-type]
    usable = min(gpu_free_gib) * USABLE_FRACTION
    fits = heaviest <= usable
    verdict = "fit" if fits else "do not fit"
    return Fit(fits, f"{per_gpu} replicas on a GPU need {heaviest:.1f} GiB, {verdict} in "
                     f"{usable:.1f} GiB ({USABLE_FRACTION:.0%} of {min(gpu_free_gib):.1f} GiB "
                     "free)" + ("" if fits else ": the I2V offloads its text encoder and DiT "
                                "layers"))


def sp_size(spec: ModelSpec) -> int:
    """GPUs one replica of ``spec`` spans (fastvideo's sequence parallel; 1 otherwise)."""
    return int(spec.engine_options.get("sp_size", 1))


def cuda_gpu_count() -> int:
    """Number of CUDA GPUs visible to this process (0 when torch or a driver is missing)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_free_gib() -> list[float] | None:
    """Free memory (GiB) of each GPU this process may use, as ``nvidia-smi`` reports it (no CUDA
    context is created here); None when it cannot be read."""
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [[part.strip() for part in line.split(",")] for line in out.splitlines() if line.strip()]
    try:
        free = {(index, uuid): float(mib) / 1024 for index, uuid, mib in rows}
    except ValueError:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(free.values()) or None
    chosen = [v.strip() for v in visible.split(",") if v.strip()]
    picked = [gib for wanted in chosen for (index, uuid), gib in free.items()
              if wanted in (index, uuid) or (wanted.startswith("GPU-") and uuid.startswith(wanted))]
    return picked or None


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


def is_synthetic(model: str) -> bool:
    """Random-weight models: the built-in tiny ids and folders the model builder marked (its
    SYNTHETIC.txt), full-size ones included: their output is noise."""
    if model in TINY_MODEL_IDS.values():
        return True
    try:
        return (Path(model).expanduser() / "SYNTHETIC.txt").is_file()
    except (OSError, ValueError):
        return False


def build_specs(
    preset: str,
    engine: EngineName | None = None,
    t2v_model: str | None = None,
    i2v_model: str | None = None,
    gpu_count: int | None = None,
    replicas: int = 1,
    tasks: tuple[Task, ...] = TASKS,
    resources: dict[str, float] | None = None,
    sp_sizes: dict[Task, int | None] | None = None,
    speeds: dict[Task, str | None] | None = None,
    gpu_free: list[float] | None = None,
) -> dict[Task, ModelSpec]:
    """Resolve a preset plus overrides into placed model specs, refusing what cannot run here.

    ``sp_sizes`` asks for sequence parallel (one video on that many GPUs) per task; ``speeds``
    the speed mode per task (SPEEDS). ``gpu_free`` is each GPU's free memory in GiB; read from
    the GPUs when ``gpu_count`` is not given either (see ``place``).
    """
    if gpu_count is None:
        gpus = cuda_gpu_count()
        gpu_free = gpu_free if gpu_free is not None else (gpu_free_gib() if gpus else None)
    else:
        gpus = gpu_count
    specs = preset_specs(preset, gpus)
    overrides = {"t2v": t2v_model, "i2v": i2v_model}
    for task, spec in list(specs.items()):
        changes: dict[str, Any] = {"replicas": replicas, "resources": dict(resources or {})}
        if engine:
            changes["engine"] = engine
        if overrides[task]:
            changes["model"] = overrides[task]
            changes["synthetic"] = is_synthetic(overrides[task])
        specs[task] = replace(spec, **changes)
    specs = {t: s for t, s in specs.items() if t in tasks}
    for task, size in (sp_sizes or {}).items():
        if task in specs and size is not None and size != 1:
            specs[task] = _with_sp_size(specs[task], size, gpus)
    for task, speed in (speeds or {}).items():
        if task in specs and speed is not None:
            specs[task] = with_speed(specs[task], speed, gpus)
    wants_fastvideo = any(s.engine == "fastvideo" for s in specs.values())
    if wants_fastvideo and gpus == 0:
        if not fastvideo_cpu_allowed():
            raise ConfigError(
                "the fastvideo engine needs a CUDA GPU and none is visible. "
                "Use `--preset tiny` (small random-weight models on CPU) or "
                "`--engine diffusers` (runs the same models on CPU, slowly)."
            )
        return specs
    if gpus == 0:
        return specs
    return place(specs, gpus, gpu_free)


def with_speed(spec: ModelSpec, speed: str, gpus: int) -> ModelSpec:
    """``spec`` in speed mode ``speed``: ``fast`` adds FAST_LEVERS to the fastvideo engine's
    options; where they cannot apply (no GPU, another engine) the mode is logged and ignored."""
    if speed not in SPEEDS:
        raise ConfigError(f"--{spec.task}_speed must be one of {', '.join(SPEEDS)}, "
                          f"got {speed!r}")
    if speed == "quality":
        return replace(spec, speed=speed)
    if spec.engine != "fastvideo" or gpus == 0:
        where = "without a GPU" if gpus == 0 else f"on the {spec.engine} engine"
        logging.getLogger(__name__).info("--%s_speed fast is ignored %s: its levers need "
                                         "fastvideo on a CUDA GPU", spec.task, where)
        return spec
    return replace(spec, speed=speed,
                   engine_options={**spec.engine_options, **FAST_LEVERS[spec.task]})


def _with_sp_size(spec: ModelSpec, size: int, gpus: int) -> ModelSpec:
    if size < 1:
        raise ConfigError(f"--{spec.task}_sp_size must be at least 1, got {size}")
    if spec.engine != "fastvideo":
        raise ConfigError(f"--{spec.task}_sp_size needs the fastvideo engine (the {spec.task} "
                          f"model runs on {spec.engine})")
    if gpus < size:
        raise ConfigError(f"--{spec.task}_sp_size {size} needs {size} GPUs; {gpus} visible")
    return replace(spec, engine_options={**spec.engine_options, "sp_size": size})


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
    # A damaged job table is recovered (its readable jobs copied) instead of refused.
    recover_jobs: bool = False
    # Origins (scheme://host[:port]) whose browser pages may call the API, besides its own.
    cors_origins: tuple[str, ...] = ()
    # Host names the API answers to besides loopback and the address a connection arrived on
    # ("*": any); other Host headers get 421 (DNS rebinding, see videoserve.hosts).
    allowed_hosts: tuple[str, ...] = ()
    # One per backend start: an ingress that Serve restarts within the same run keeps the
    # models switched at runtime; a new run starts from these settings' models.
    run_id: str = field(default_factory=lambda: secrets.token_hex(8))

    @property
    def inputs_dir(self) -> Path:
        return self.input_path if self.input_path is not None else self.output_path / "inputs"

    @property
    def videos_dir(self) -> Path:
        return self.output_path / "videos"

    def with_output_path(self, path: Path) -> Settings:
        return replace(self, output_path=path)
