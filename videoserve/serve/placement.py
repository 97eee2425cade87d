"""Where each generator replica runs: its GPU share and what it offloads, decided from each GPU's
free memory (read at start) and each model's measured need; what ``GET /v1/placement`` reports."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

from videoserve.core.config import (
    DEFAULT_I2V_MODEL,
    DEFAULT_T2V_MODEL,
    ConfigError,
    ModelSpec,
    Task,
)
from videoserve.engines.fastvideo.options import FASTVIDEO_OFFLOAD_FLAGS, NO_OFFLOAD


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
