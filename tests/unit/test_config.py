import pytest

from videoserve.core.config import ConfigError
from videoserve.engines.fastvideo.options import NO_OFFLOAD
from videoserve.serve.presets import build_specs


def test_tiny_preset_runs_on_cpu_with_diffusers():
    specs = build_specs("tiny", gpu_count=0)
    assert set(specs) == {"t2v", "i2v"}
    for spec in specs.values():
        assert spec.engine == "diffusers" and spec.device == "cpu" and spec.synthetic
        assert (spec.defaults.height, spec.defaults.num_frames) == (64, 9)
        assert (spec.limits.max_num_frames, spec.limits.max_num_inference_steps) == (81, 50)


def test_fastvideo_without_gpu_names_the_way_out(monkeypatch):
    monkeypatch.delenv("VIDEOSERVE_FASTVIDEO_CPU_SHIM", raising=False)
    with pytest.raises(ConfigError) as info:
        build_specs("fastwan", gpu_count=0)
    assert "--preset tiny" in str(info.value) and "--engine diffusers" in str(info.value)
    with pytest.raises(ConfigError):
        build_specs("tiny", engine="fastvideo", gpu_count=0)


def test_fastwan_defaults_match_the_models():
    specs = build_specs("fastwan", gpu_count=2)
    t2v, i2v = specs["t2v"], specs["i2v"]
    assert (t2v.defaults.height, t2v.defaults.width, t2v.defaults.num_frames) == (448, 832, 61)
    assert t2v.defaults.num_inference_steps == 3 and t2v.defaults.fps == 16
    assert (i2v.defaults.num_inference_steps, i2v.defaults.guidance_scale) == (40, 5.0)
    assert (i2v.defaults.height, i2v.defaults.num_frames) == (480, 81)


def test_two_gpus_give_each_model_a_whole_gpu_without_offload():
    specs = build_specs("fastwan", gpu_count=2)
    for spec in specs.values():
        assert spec.num_gpus == 1.0
        for flag, value in NO_OFFLOAD.items():
            assert spec.engine_options[flag] is value


def test_one_gpu_shares_it_and_offloads_the_i2v_text_encoder_and_dit_layers():
    specs = build_specs("fastwan", gpu_count=1)
    assert specs["t2v"].num_gpus == specs["i2v"].num_gpus == 0.5
    assert specs["i2v"].engine_options["text_encoder_cpu_offload"] is True
    assert specs["i2v"].engine_options["dit_layerwise_offload"] is True
    assert specs["t2v"].engine_options["dit_layerwise_offload"] is False
    assert specs["t2v"].engine_options["text_encoder_cpu_offload"] is False


def test_overrides_and_task_subset():
    specs = build_specs("tiny", t2v_model="/models/x", gpu_count=0, tasks=("t2v",), replicas=2)
    assert list(specs) == ["t2v"]
    assert specs["t2v"].model == "/models/x" and specs["t2v"].replicas == 2


def test_unknown_preset():
    with pytest.raises(ConfigError):
        build_specs("huge", gpu_count=0)


def gpus_of(specs) -> dict:
    return {task: (spec.replicas, spec.num_gpus) for task, spec in specs.items()}


@pytest.mark.parametrize(("gpus", "tasks", "replicas", "expected"), [
    # One GPU: replicas share it in fractions Ray can pack (at most ceil(R / G) on a GPU).
    (1, ("t2v",), 2, {"t2v": (2, 0.5)}),
    (1, ("t2v", "i2v"), 1, {"t2v": (1, 0.5), "i2v": (1, 0.5)}),
    # Two GPUs: two FastWan replicas get one each (the throughput setup).
    (2, ("t2v",), 2, {"t2v": (2, 1.0)}),
    (2, ("t2v", "i2v"), 1, {"t2v": (1, 1.0), "i2v": (1, 1.0)}),
    (2, ("t2v", "i2v"), 2, {"t2v": (2, 0.5), "i2v": (2, 0.5)}),
    (2, ("t2v",), 3, {"t2v": (3, 0.5)}),
    (4, ("t2v", "i2v"), 2, {"t2v": (2, 1.0), "i2v": (2, 1.0)}),
    (4, ("t2v",), 3, {"t2v": (3, 1.0)}),
])
def test_replicas_spread_over_the_gpus(gpus, tasks, replicas, expected):
    specs = build_specs("fastwan", gpu_count=gpus, tasks=tasks, replicas=replicas)
    assert gpus_of(specs) == expected
    # Every replica fits: no GPU is asked for more than it has.
    per_gpu = [1.0] * gpus
    for spec in specs.values():
        for _ in range(spec.replicas):
            slot = next(i for i, free in enumerate(per_gpu) if free + 1e-9 >= spec.num_gpus)
            per_gpu[slot] -= spec.num_gpus
    shared = any(0 < s.num_gpus < 1 for s in specs.values())
    if "i2v" in specs:
        assert specs["i2v"].engine_options["text_encoder_cpu_offload"] is shared
    # The compiled VAE decoder (about 8 GiB more at peak) only where the T2V has a GPU to itself.
    assert ("vae_compile" in specs["t2v"].engine_options) is (not shared)


@pytest.mark.parametrize(("gpus", "replicas", "sp", "expected"), [
    (2, 1, {"i2v": 2}, {"i2v": (1, 2.0)}),
    (4, 2, {"i2v": 2}, {"i2v": (2, 2.0)}),
    (4, 1, {"t2v": 2, "i2v": 2}, {"t2v": (1, 2.0), "i2v": (1, 2.0)}),
    (4, 2, {"t2v": 1, "i2v": 1}, {"t2v": (2, 1.0), "i2v": (2, 1.0)}),
])
def test_sp_size_gives_each_replica_that_many_whole_gpus(gpus, replicas, sp, expected):
    specs = build_specs("fastwan", gpu_count=gpus, tasks=tuple(expected), replicas=replicas,
                        sp_sizes=sp)
    assert gpus_of(specs) == expected
    for task, spec in specs.items():
        assert spec.engine_options.get("sp_size", 1) == sp.get(task, 1)
        for flag, value in NO_OFFLOAD.items():
            assert spec.engine_options[flag] is value


@pytest.mark.parametrize(("gpus", "kwargs", "message"), [
    (1, {"sp_sizes": {"i2v": 2}}, "needs 2 GPUs; 1 visible"),
    (0, {"sp_sizes": {"i2v": 2}}, "needs 2 GPUs; 0 visible"),
    (4, {"sp_sizes": {"i2v": 8}}, "needs 8 GPUs; 4 visible"),
    (2, {"sp_sizes": {"i2v": 2}, "engine": "diffusers"}, "needs the fastvideo engine"),
    (2, {"sp_sizes": {"i2v": 0}}, "at least 1"),
    # Both models, I2V on two GPUs: three GPUs needed, a spanning replica cannot share.
    (2, {"sp_sizes": {"i2v": 2}, "tasks": ("t2v", "i2v")}, "need 3 GPUs"),
    (4, {"sp_sizes": {"i2v": 2}, "replicas": 2, "tasks": ("t2v", "i2v")}, "need 6 GPUs"),
])
def test_sp_size_that_cannot_run_here_is_refused(monkeypatch, gpus, kwargs, message):
    monkeypatch.setenv("VIDEOSERVE_FASTVIDEO_CPU_SHIM", "1")  # isolate the sp_size rule at 0
    kwargs = {"tasks": ("i2v",), **kwargs}
    with pytest.raises(ConfigError) as info:
        build_specs("fastwan", gpu_count=gpus, **kwargs)
    assert message in str(info.value)


def test_sp_size_of_a_task_not_deployed_is_ignored():
    specs = build_specs("fastwan", gpu_count=1, tasks=("t2v",), sp_sizes={"i2v": 2})
    assert gpus_of(specs) == {"t2v": (1, 1.0)}
