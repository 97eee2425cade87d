"""The presets (``fastwan``, ``tiny``), their speed modes, and ``build_specs``: CLI choices
resolved into placed model specs, refusing what cannot run here with the way out."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from videoserve.core.config import (
    DEFAULT_I2V_MODEL,
    DEFAULT_T2V_MODEL,
    FASTWAN_T2V_DEFAULTS,
    TASKS,
    TINY_DEFAULTS,
    TINY_MODEL_IDS,
    WAN_I2V_DEFAULTS,
    ConfigError,
    EngineName,
    ModelSpec,
    Task,
    fastvideo_cpu_allowed,
    is_synthetic,
)
from videoserve.engines.fastvideo.options import CUDNN_FIRST
from videoserve.serve.placement import cuda_gpu_count, gpu_free_gib, place

PRESETS = ("fastwan", "tiny")


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
