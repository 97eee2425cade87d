"""Placement from the GPUs' real free memory, and the speed modes, decided without a GPU."""

import json
import logging
import subprocess

import pytest

from videoserve.core.config import ConfigError
from videoserve.engines.fastvideo.options import FASTVIDEO_OFFLOAD_FLAGS
from videoserve.serve.placement import gpu_free_gib
from videoserve.serve.presets import FAST_LEVERS, build_specs

H100_FREE = [79.1]  # GiB free on an idle 80 GB card
H200_FREE = [139.3]  # on an idle 141 GB card


def offloaded(spec) -> list[str]:
    return [flag for flag in FASTVIDEO_OFFLOAD_FLAGS if spec.engine_options.get(flag)]


def test_a_141_gb_gpu_holds_both_models_with_nothing_offloaded():
    specs = build_specs("fastwan", gpu_count=1, gpu_free=H200_FREE)
    assert specs["t2v"].num_gpus == specs["i2v"].num_gpus == 0.5
    assert offloaded(specs["i2v"]) == offloaded(specs["t2v"]) == []
    # FastWan keeps its compiled VAE decoder when the GPU has room for it.
    assert specs["t2v"].engine_options["vae_compile"] == [[480, 832]]
    placement = specs["i2v"].placement
    assert placement["shares_gpu"] and placement["offloaded"] == []
    assert placement["need_gib"] == 63.5 and placement["gpu_free_gib"] == H200_FREE
    assert "101.9 GiB, fit in 128.2 GiB" in placement["reason"]


def test_an_80_gb_gpu_keeps_the_split_that_fits_80_gb():
    specs = build_specs("fastwan", gpu_count=1, gpu_free=H100_FREE)
    assert offloaded(specs["i2v"]) == ["dit_layerwise_offload", "text_encoder_cpu_offload"]
    assert offloaded(specs["t2v"]) == []
    assert "vae_compile" not in specs["t2v"].engine_options
    assert "do not fit" in specs["i2v"].placement["reason"]
    assert specs["i2v"].placement["offloaded"] == offloaded(specs["i2v"])


def test_unknown_free_memory_plans_for_an_80_gb_gpu():
    specs = build_specs("fastwan", gpu_count=1)
    assert offloaded(specs["i2v"]) == ["dit_layerwise_offload", "text_encoder_cpu_offload"]
    assert "unknown" in specs["i2v"].placement["reason"]


@pytest.mark.parametrize("free", [H100_FREE * 2, H200_FREE * 2])
def test_two_gpus_give_each_model_one_and_offload_nothing(free):
    specs = build_specs("fastwan", gpu_count=2, gpu_free=free)
    for spec in specs.values():
        assert spec.num_gpus == 1.0 and offloaded(spec) == []
        assert spec.placement == {"num_gpus": 1.0, "shares_gpu": False, "offloaded": [],
                                  "need_gib": spec.placement["need_gib"], "gpu_free_gib": free,
                                  "reason": "a GPU of its own"}


def test_two_141_gb_gpus_with_two_replicas_each_still_fit_whole():
    # Four replicas on two GPUs: a T2V and an I2V on each (101.9 GiB) fit in 128 GiB.
    specs = build_specs("fastwan", gpu_count=2, replicas=2, gpu_free=H200_FREE * 2)
    assert specs["i2v"].num_gpus == 0.5 and offloaded(specs["i2v"]) == []
    # On two 80 GB GPUs they do not.
    specs = build_specs("fastwan", gpu_count=2, replicas=2, gpu_free=H100_FREE * 2)
    assert "dit_layerwise_offload" in offloaded(specs["i2v"])


def test_the_fullest_gpu_decides():
    specs = build_specs("fastwan", gpu_count=1, gpu_free=[60.0])
    assert "dit_layerwise_offload" in offloaded(specs["i2v"])


def test_the_need_of_a_model_folder_comes_from_its_dit_shape(tmp_path):
    def folder(name: str, layers: int, heads: int):
        path = tmp_path / name / "transformer"
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps(
            {"num_layers": layers, "num_attention_heads": heads, "attention_head_dim": 128}))
        return str(path.parent)

    specs = build_specs("fastwan", t2v_model=folder("t2v", 30, 12),
                        i2v_model=folder("i2v", 40, 40), gpu_count=1, gpu_free=H200_FREE)
    assert (specs["t2v"].placement["need_gib"], specs["i2v"].placement["need_gib"]) == (38.4, 63.5)
    assert offloaded(specs["i2v"]) == []
    # An architecture with no measured need: the 80 GB plan, and the reason says so.
    specs = build_specs("fastwan", i2v_model=folder("other", 48, 24), gpu_count=1,
                        gpu_free=H200_FREE)
    assert "dit_layerwise_offload" in offloaded(specs["i2v"])
    assert "gpu_memory_gib" in specs["i2v"].placement["reason"]


def fake_smi(monkeypatch, stdout: str) -> None:
    def run(*args, **kwargs):
        return subprocess.CompletedProcess(args, 0, stdout=stdout, stderr="")

    monkeypatch.setattr(subprocess, "run", run)


SMI = "0, GPU-aaaa-1111, 143000\n1, GPU-bbbb-2222, 81000\n"


def test_free_memory_is_read_for_the_visible_gpus(monkeypatch):
    fake_smi(monkeypatch, SMI)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_free_gib() == pytest.approx([139.65, 79.1], abs=0.01)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert gpu_free_gib() == pytest.approx([79.1], abs=0.01)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa")
    assert gpu_free_gib() == pytest.approx([139.65], abs=0.01)


def test_free_memory_unreadable_is_none(monkeypatch):
    fake_smi(monkeypatch, "garbage\n")
    assert gpu_free_gib() is None

    def missing(*args, **kwargs):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(subprocess, "run", missing)
    assert gpu_free_gib() is None


# -- speed modes -------------------------------------------------------------------------------

def test_fast_adds_the_opt_in_levers_and_describe_says_so():
    specs = build_specs("fastwan", gpu_count=2, speeds={"i2v": "fast"}, gpu_free=H200_FREE * 2)
    i2v, t2v = specs["i2v"], specs["t2v"]
    assert FAST_LEVERS["i2v"] and FAST_LEVERS["i2v"].items() <= i2v.engine_options.items()
    assert i2v.speed == "fast" and i2v.describe()["speed"] == "fast"
    assert t2v.speed == "quality" and "dit_fp8" not in t2v.engine_options
    quality = build_specs("fastwan", gpu_count=2, gpu_free=H200_FREE * 2)["i2v"]
    assert not set(FAST_LEVERS["i2v"]) & set(quality.engine_options)


def test_an_unknown_speed_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="quality, fast"):
        build_specs("fastwan", gpu_count=1, speeds={"t2v": "turbo"})


def test_fast_without_a_gpu_is_ignored_with_a_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="videoserve.core.config"):
        specs = build_specs("tiny", gpu_count=0, speeds={"t2v": "fast", "i2v": "fast"})
    assert all(s.speed == "quality" and "dit_fp8" not in s.engine_options
               for s in specs.values())
    assert "--i2v_speed fast is ignored without a GPU" in caplog.text


def test_the_speed_flags_reach_the_specs(monkeypatch):
    from videoserve.serve.backend_cli import build_parser, settings_from_args

    monkeypatch.setattr("videoserve.serve.backend_cli.cuda_gpu_count", lambda: 1)
    monkeypatch.setattr("videoserve.serve.backend_cli.gpu_free_gib", lambda: H200_FREE)
    args = build_parser().parse_args(["--preset", "fastwan", "--i2v_speed", "fast"])
    specs = settings_from_args(args).models
    assert specs["i2v"].speed == "fast" and specs["i2v"].engine_options["dit_fp8"] is True
    assert offloaded(specs["i2v"]) == []
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--t2v_speed", "turbo"])


def test_random_weight_folders_given_by_path_are_marked_synthetic_and_placed_as_real(tmp_path):
    def folder(name: str, layers: int, heads: int):
        path = tmp_path / name
        (path / "transformer").mkdir(parents=True)
        (path / "transformer" / "config.json").write_text(json.dumps(
            {"num_layers": layers, "num_attention_heads": heads, "attention_head_dim": 128}))
        (path / "SYNTHETIC.txt").write_text("random weights")
        return str(path)

    full = build_specs("fastwan", i2v_model=folder("full-i2v", 40, 40), gpu_count=1,
                       gpu_free=H100_FREE)["i2v"]
    # Its videos are noise, and GET /v1/models says so...
    assert full.synthetic and full.describe()["synthetic"] is True
    # ...but it is the 14B's size: on a shared 80 GB GPU it offloads as the real one does.
    assert "dit_layerwise_offload" in offloaded(full)
    tiny = build_specs("tiny", i2v_model=folder("tiny-i2v", 2, 1), gpu_count=1)["i2v"]
    assert tiny.synthetic and tiny.device == "cpu"
    real = build_specs("fastwan", i2v_model=str(tmp_path / "real"), gpu_count=1)["i2v"]
    assert not real.synthetic
