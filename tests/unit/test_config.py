import pytest

from videoserve.config import NO_OFFLOAD, ConfigError, build_specs


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
