"""Synthetic LoRAs of the tiny models: key sets and shapes of both formats, the same delta in
both, determinism, the cache, the CLI, and diffusers loading and fusing both files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from videoserve.devtools.synthetic_loras import (
    ensure_tiny_loras,
    write_synthetic_loras,
)
from videoserve.devtools.tiny_models import main

RANK = 64
# diffusers module (inside blocks.N) -> the original Wan name, written out independently here.
T2V_MODULES = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o", "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o",
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}
I2V_MODULES = {**T2V_MODULES, "attn2.add_k_proj": "cross_attn.k_img",
               "attn2.add_v_proj": "cross_attn.v_img"}
MODULES = {"t2v": T2V_MODULES, "i2v": I2V_MODULES}


@pytest.fixture(scope="module")
def loras(tiny_models, tmp_path_factory) -> dict[str, dict[str, Path]]:
    out = tmp_path_factory.mktemp("loras")
    return {task: write_synthetic_loras(model, out, prefix=f"synthetic-{task}")
            for task, model in tiny_models.items()}


def model_weights(model: Path) -> dict[str, torch.Tensor]:
    return load_file(model / "transformer" / "diffusion_pytorch_model.safetensors")


def num_blocks(model: Path) -> int:
    config = json.loads((model / "transformer" / "config.json").read_text())
    return int(config["num_layers"])


def lora_pairs(files: dict[str, Path], task: str, block: int, module: str):
    """(A, B) of the diffusers file and (down, up, alpha) of the Wan file for one layer."""
    d, w = load_file(files["diffusers"]), load_file(files["wan"])
    dk = f"transformer.blocks.{block}.{module}"
    wk = f"diffusion_model.blocks.{block}.{MODULES[task][module]}"
    return ((d[f"{dk}.lora_A.weight"], d[f"{dk}.lora_B.weight"]),
            (w[f"{wk}.lora_down.weight"], w[f"{wk}.lora_up.weight"], w[f"{wk}.alpha"]))


def test_file_names(loras):
    assert {task: {fmt: p.name for fmt, p in files.items()} for task, files in loras.items()} == {
        "t2v": {"diffusers": "synthetic-t2v-diffusers-r64.safetensors",
                "wan": "synthetic-t2v-wan-r64.safetensors"},
        "i2v": {"diffusers": "synthetic-i2v-diffusers-r64.safetensors",
                "wan": "synthetic-i2v-wan-r64.safetensors"},
    }


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_keys_shapes_and_dtypes(tiny_models, loras, task):
    weights = model_weights(tiny_models[task])
    expected_diffusers, expected_wan = {}, {}
    for n in range(num_blocks(tiny_models[task])):
        for module, wan in MODULES[task].items():
            out_f, in_f = weights[f"blocks.{n}.{module}.weight"].shape
            expected_diffusers[f"transformer.blocks.{n}.{module}.lora_A.weight"] = (RANK, in_f)
            expected_diffusers[f"transformer.blocks.{n}.{module}.lora_B.weight"] = (out_f, RANK)
            expected_wan[f"diffusion_model.blocks.{n}.{wan}.lora_down.weight"] = (RANK, in_f)
            expected_wan[f"diffusion_model.blocks.{n}.{wan}.lora_up.weight"] = (out_f, RANK)
            expected_wan[f"diffusion_model.blocks.{n}.{wan}.alpha"] = ()
    per_block = len(MODULES[task])
    assert per_block == {"t2v": 10, "i2v": 12}[task]
    assert len(expected_diffusers) == 2 * per_block * num_blocks(tiny_models[task])
    for fmt, expected in (("diffusers", expected_diffusers), ("wan", expected_wan)):
        tensors = load_file(loras[task][fmt])
        assert {k: tuple(v.shape) for k, v in tensors.items()} == expected
        for key, tensor in tensors.items():
            # The tiny model's weights are float32; alpha is always a float32 scalar.
            assert tensor.dtype == torch.float32
            assert torch.isfinite(tensor).all()
            if key.endswith(".alpha"):
                assert tensor.item() == RANK / 2


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_metadata_says_synthetic(loras, task):
    for path in loras[task].values():
        with safe_open(str(path), framework="pt") as handle:
            assert handle.metadata() == {
                "format": "pt",
                "videoserve_synthetic": "random-weight LoRA; its output is noise",
                "rank": "64",
            }


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_both_formats_encode_the_same_delta(tiny_models, loras, task):
    weights = model_weights(tiny_models[task])
    for n in range(num_blocks(tiny_models[task])):
        for module in MODULES[task]:
            (a, b), (down, up, alpha) = lora_pairs(loras[task], task, n, module)
            delta = b.double() @ a.double()
            wan_delta = up.double() @ down.double() * (alpha.double() / down.shape[0])
            assert torch.equal(delta, wan_delta), module
            # The magnitude choice: ||delta||_F about 0.25 ||W||_F in every layer.
            ratio = delta.norm() / weights[f"blocks.{n}.{module}.weight"].double().norm()
            assert 0.15 < ratio < 0.4, (module, float(ratio))


def test_deterministic_per_seed(tiny_models, loras, tmp_path):
    model = tiny_models["t2v"]
    again = write_synthetic_loras(model, tmp_path / "again", prefix="synthetic-t2v")
    for fmt in ("diffusers", "wan"):
        # Tensors, not bytes: safetensors writes the __metadata__ entries in a random order.
        first, second = load_file(loras["t2v"][fmt]), load_file(again[fmt])
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first)
    other = write_synthetic_loras(model, tmp_path / "other", prefix="x", seed=1, rank=4)
    assert other["wan"].name == "x-wan-r4.safetensors"
    first = load_file(loras["t2v"]["diffusers"])["transformer.blocks.0.attn1.to_q.lora_A.weight"]
    seeded = load_file(other["diffusers"])["transformer.blocks.0.attn1.to_q.lora_A.weight"]
    assert seeded.shape == (4, 32) and not torch.equal(first[:4], seeded)
    assert not list((tmp_path / "again").glob(".*"))  # no temporary files left


def test_ensure_tiny_loras_builds_once(tiny_models, tmp_path):
    paths = ensure_tiny_loras(tmp_path)
    assert {task: {fmt: p.stem for fmt, p in files.items()} for task, files in paths.items()} == {
        task: {fmt: f"synthetic-{task}-{fmt}-r64" for fmt in ("diffusers", "wan")}
        for task in ("t2v", "i2v")
    }
    stamps = {p: p.stat().st_mtime_ns for files in paths.values() for p in files.values()}
    assert ensure_tiny_loras(tmp_path) == paths
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # A damaged file is written again.
    broken = paths["i2v"]["wan"]
    broken.write_bytes(broken.read_bytes()[:100])
    ensure_tiny_loras(tmp_path)
    assert load_file(broken).keys() == load_file(paths["i2v"]["wan"]).keys()
    assert len(load_file(broken)) == 3 * 12 * num_blocks(tiny_models["i2v"])


def test_cli_writes_loras_of_the_built_models(tiny_models, tmp_path, capsys):
    # A complete model folder in --out is reused by the CLI, so copying the cached one skips
    # the build.
    out = tmp_path / "models"
    shutil.copytree(tiny_models["t2v"], out / tiny_models["t2v"].name, symlinks=True)
    assert main([str(out), "--tasks", "t2v", "--loras", str(tmp_path / "loras")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("t2v\t") and "already built" in lines[0]
    printed = [line.split("\t")[:3] for line in lines[1:]]
    folder = tmp_path / "loras"
    assert printed == [
        ["t2v", "lora-diffusers", str(folder / "synthetic-t2v-diffusers-r64.safetensors")],
        ["t2v", "lora-wan", str(folder / "synthetic-t2v-wan-r64.safetensors")],
    ]
    assert all(Path(p).is_file() for _task, _fmt, p in printed)


@pytest.mark.parametrize("fmt", ["diffusers", "wan"])
@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_diffusers_loads_and_fuses_both_formats(tiny_models, loras, task, fmt):
    # The outside check that the formats are real: diffusers reads the PEFT keys directly and
    # converts the original Wan keys (applying alpha) itself.
    from videoserve.engines.diffusers.loading import load_diffusers_pipeline

    pipe = load_diffusers_pipeline(tiny_models[task], task, torch.float32, "cpu")
    names = [f"blocks.{n}.{module}" for n in range(num_blocks(tiny_models[task]))
             for module in MODULES[task]]
    before = {name: pipe.transformer.get_submodule(name).weight.detach().clone()
              for name in names}
    pipe.load_lora_weights(str(loras[task][fmt]))
    pipe.fuse_lora()
    written = load_file(loras[task]["diffusers"])
    for name in names:
        after = pipe.transformer.get_submodule(name).weight.detach()
        delta = written[f"transformer.{name}.lora_B.weight"] @ written[
            f"transformer.{name}.lora_A.weight"]
        torch.testing.assert_close(after - before[name], delta, rtol=1e-5, atol=1e-5, msg=name)


def test_lora_visibly_changes_tiny_frames(tiny_models, loras):
    from videoserve.engines.diffusers.loading import load_diffusers_pipeline

    pipe = load_diffusers_pipeline(tiny_models["t2v"], "t2v", torch.float32, "cpu")
    pipe.set_progress_bar_config(disable=True)

    def frames(prompt: str) -> np.ndarray:
        result = pipe(prompt=prompt, height=32, width=32, num_frames=5, num_inference_steps=2,
                      guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
                      output_type="np")
        return np.asarray(result.frames[0], dtype=np.float64)

    base, other_prompt = frames("a cat"), frames("a dog running")
    pipe.load_lora_weights(str(loras["t2v"]["wan"]))
    adapted = frames("a cat")
    assert np.isfinite(adapted).all()
    # Far more than the prompt changes the tiny model's frames (about 8 vs 0.3 grey levels).
    lora_change = np.abs(adapted - base).mean() * 255
    assert lora_change > 3 and lora_change > 10 * np.abs(other_prompt - base).mean() * 255
