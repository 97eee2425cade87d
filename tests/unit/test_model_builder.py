"""The synthetic model builder: full-size architectures (on torch's meta device, no memory) and
the folder layout, shards, shared components and cache reuse (with tiny weights)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from videoserve.devtools.model_sizes import (
    FULL,
    SIZES,
    TINY,
    new_component,
    transformer_extra_shapes,
)
from videoserve.devtools.tiny_models import (
    EXTRA_WEIGHTS_NAME,
    MARKER_NAME,
    ensure_models,
    fastvideo_path_conflicts,
    is_complete,
    main,
)

# The full layout and options with tiny weights, so the layout is tested on any CPU in seconds.
MINI = dataclasses.replace(
    FULL,
    name="mini",
    version="videoserve-mini-wan/test",
    folder_names={"t2v": "mini-wan-t2v", "i2v": "mini-wan-i2v"},
    transformer=TINY.transformer,
    text_encoder=TINY.text_encoder,
    image_encoder=TINY.image_encoder,
    vae=TINY.vae,
    prefer_cuda=False,
    max_shard_size="50KB",
)


def _linear(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


def wan_dit_params(
    dim: int, ffn: int, layers: int, in_channels: int, text_dim: int, image_dim: int | None
) -> int:
    """diffusers' WanTransformer3DModel, counted layer by layer (patch (1, 2, 2), 16 out)."""
    patch = in_channels * 2 * 2 * dim + dim
    time = _linear(256, dim) + _linear(dim, dim) + _linear(dim, 6 * dim)
    text = _linear(text_dim, dim) + _linear(dim, dim)
    # Image embedder: LayerNorm, Linear(image, image) -> GELU -> Linear(image, dim), LayerNorm.
    image = 0
    if image_dim:
        image = 2 * image_dim + _linear(image_dim, image_dim) + _linear(image_dim, dim) + 2 * dim
    # q, k, v, out + RMS norms on q and k (across heads).
    self_attn = 4 * _linear(dim, dim) + 2 * dim
    # I2V cross-attention adds the image key/value projections and a norm on the image key.
    cross_attn = self_attn + (2 * _linear(dim, dim) + dim if image_dim else 0)
    # Affine norm2 (cross_attn_norm), feed-forward, 6 modulation vectors.
    block = self_attn + cross_attn + 2 * dim + _linear(dim, ffn) + _linear(ffn, dim) + 6 * dim
    head = _linear(dim, 16 * 2 * 2) + 2 * dim
    return patch + time + text + image + layers * block + head


def umt5_encoder_params(
    vocab: int, d_model: int, layers: int, heads: int, d_kv: int, d_ff: int, buckets: int
) -> int:
    """UMT5 encoder: no biases, a relative-position bias in every layer, gated-GELU FFN."""
    attention = 4 * d_model * heads * d_kv + buckets * heads
    feed_forward = 3 * d_model * d_ff
    return vocab * d_model + layers * (attention + feed_forward + 2 * d_model) + d_model


def clip_vision_params(hidden: int, layers: int, intermediate: int, image: int, patch: int) -> int:
    """CLIPVisionModel: patch conv without bias, class + position embeddings, pre/post norms."""
    tokens = (image // patch) ** 2 + 1
    embeddings = 3 * patch * patch * hidden + hidden + tokens * hidden
    layer = 4 * _linear(hidden, hidden) + _linear(hidden, intermediate)
    layer += _linear(intermediate, hidden) + 4 * hidden
    return embeddings + 2 * hidden + layers * layer + 2 * hidden


T2V_DIT = wan_dit_params(1536, 8960, 30, 16, 4096, None)
I2V_DIT = wan_dit_params(5120, 13824, 40, 36, 4096, 1280)
UMT5_XXL = umt5_encoder_params(256384, 4096, 24, 64, 64, 10240, 32)
CLIP_H14 = clip_vision_params(1280, 32, 5120, 224, 14)
# fastvideo's per-block to_gate_compress Linear(1536, 1536) of FastWan.
VSA_GATES = 30 * _linear(1536, 1536)

FULL_COMPONENTS = [
    # component, task, derived count, published size it must be within 1% of
    ("transformer", "t2v", T2V_DIT, 1.42e9),
    ("transformer", "i2v", I2V_DIT, 16.4e9),
    ("text_encoder", "t2v", UMT5_XXL, 5.68e9),
    ("image_encoder", "i2v", CLIP_H14, 0.63e9),
]


def _meta(component: str, task: str = "t2v"):
    with torch.device("meta"):
        return new_component(FULL, component, task)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("component", "task", "derived", "published"), FULL_COMPONENTS)
def test_full_components_have_the_real_parameter_counts(component, task, derived, published):
    count = _count(_meta(component, task))
    assert count == derived
    assert abs(count / published - 1) < 0.01


def test_derived_counts_are_the_known_numbers():
    assert (T2V_DIT, I2V_DIT, UMT5_XXL, CLIP_H14) == (
        1_418_996_800,
        16_394_878_784,
        5_680_910_336,
        630_766_080,
    )
    assert VSA_GATES == 70_824_960  # +5.0 % on the 1.3B DiT


def test_full_vae_is_the_default_wan_vae():
    vae = _meta("vae")
    assert FULL.vae == {}
    assert (vae.config.base_dim, vae.config.z_dim, vae.config.num_res_blocks) == (96, 16, 2)


def test_fastwan_weights_include_the_vsa_gates():
    model_keys = set(_meta("transformer", "t2v").state_dict())
    extras = transformer_extra_shapes(FULL, "t2v")
    assert not model_keys & set(extras)
    for i in range(30):
        assert extras[f"blocks.{i}.to_gate_compress.weight"] == (1536, 1536)
        assert extras[f"blocks.{i}.to_gate_compress.bias"] == (1536,)
    assert sum(torch.Size(shape).numel() for shape in extras.values()) == VSA_GATES
    assert "blocks.29.attn1.to_q.weight" in model_keys


def test_i2v_weights_include_norm_added_q():
    model_keys = set(_meta("transformer", "i2v").state_dict())
    extras = transformer_extra_shapes(FULL, "i2v")
    assert set(extras) == {f"blocks.{i}.attn2.norm_added_q.weight" for i in range(40)}
    assert set(extras.values()) == {(5120,)}
    assert {"blocks.0.attn2.add_k_proj.weight", "blocks.0.attn2.norm_added_k.weight"} <= model_keys
    assert not model_keys & set(extras)


@pytest.mark.parametrize("size", sorted(SIZES))
def test_size_components_fit_together(size):
    spec = SIZES[size]
    t2v, i2v = spec.transformer["t2v"], spec.transformer["i2v"]
    clip = spec.image_encoder
    assert t2v["text_dim"] == i2v["text_dim"] == spec.text_encoder["d_model"]
    assert i2v["image_dim"] == clip["hidden_size"]
    assert i2v["added_kv_proj_dim"] == i2v["num_attention_heads"] * i2v["attention_head_dim"]
    assert (t2v["in_channels"], i2v["in_channels"]) == (16, 36)
    # Wan's I2V cross-attention slices 257 image tokens; fastvideo builds 31 CLIP layers.
    assert (clip["image_size"] // clip["patch_size"]) ** 2 + 1 == 257
    assert clip["num_hidden_layers"] >= 32
    for name in spec.folder_names.values():
        assert fastvideo_path_conflicts(name) == []


def _tensor_names(folder: Path) -> dict[str, set[str]]:
    from safetensors import safe_open

    names = {}
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            names[path.name] = set(handle.keys())
    return names


def _bf16(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return all(handle.get_slice(k).get_dtype() == "BF16" for k in handle.keys())


@pytest.fixture(scope="module")
def mini_pair(tmp_path_factory) -> dict[str, Path]:
    return ensure_models(MINI, tmp_path_factory.mktemp("pair"))


def test_i2v_links_the_shared_parts_of_the_t2v_folder(mini_pair):
    t2v, i2v = mini_pair["t2v"], mini_pair["i2v"]
    for name in ("text_encoder", "tokenizer", "vae"):
        link = i2v / name
        assert link.is_symlink() and os.readlink(link) == f"../{t2v.name}/{name}"
        assert link.resolve() == (t2v / name).resolve()
    for name in ("transformer", "image_encoder", "image_processor"):
        assert (i2v / name).is_dir() and not (i2v / name).is_symlink()


def test_large_components_are_sharded_with_an_index(mini_pair):
    t2v = mini_pair["t2v"]
    index = json.loads(
        (t2v / "transformer" / "diffusion_pytorch_model.safetensors.index.json").read_text()
    )
    shards = _tensor_names(t2v / "transformer")
    assert set(index["weight_map"].values()) == set(shards) - {EXTRA_WEIGHTS_NAME}
    assert len(shards) > 2
    assert (t2v / "text_encoder" / "model.safetensors.index.json").is_file()
    assert all(_bf16(p) for p in (t2v / "transformer").glob("*.safetensors"))


def test_extra_weights_sit_beside_the_diffusers_shards(mini_pair):
    gates = _tensor_names(mini_pair["t2v"] / "transformer")[EXTRA_WEIGHTS_NAME]
    assert gates == {
        f"blocks.{i}.to_gate_compress.{kind}" for i in (0, 1) for kind in ("weight", "bias")
    }
    norms = _tensor_names(mini_pair["i2v"] / "transformer")[EXTRA_WEIGHTS_NAME]
    assert norms == {"blocks.0.attn2.norm_added_q.weight", "blocks.1.attn2.norm_added_q.weight"}


def test_folders_are_marked_synthetic(mini_pair):
    for task, folder in mini_pair.items():
        assert json.loads((folder / "model_index.json").read_text())["_videoserve_synthetic"]
        assert "random weights" in (folder / "SYNTHETIC.txt").read_text()
        assert (folder / MARKER_NAME).read_text().strip() == MINI.version
        shift = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        assert shift["flow_shift"] == {"t2v": 8.0, "i2v": 3.0}[task]


def test_complete_folders_are_reused(mini_pair):
    markers = {task: (path / MARKER_NAME).stat().st_mtime_ns for task, path in mini_pair.items()}
    again = ensure_models(MINI, mini_pair["t2v"].parent)
    assert again == mini_pair
    assert {t: (p / MARKER_NAME).stat().st_mtime_ns for t, p in again.items()} == markers
    assert not is_complete(mini_pair["t2v"], TINY)


def test_i2v_built_alone_has_its_own_copies(tmp_path):
    i2v = ensure_models(MINI, tmp_path, tasks=["i2v"])["i2v"]
    assert not (tmp_path / MINI.folder_names["t2v"]).exists()
    assert not any(p.is_symlink() for p in i2v.iterdir())
    assert (i2v / "text_encoder" / "config.json").is_file() and is_complete(i2v, MINI)


def test_i2v_whose_t2v_folder_is_gone_is_incomplete(tmp_path):
    import shutil

    paths = ensure_models(MINI, tmp_path)
    shutil.rmtree(paths["t2v"])
    assert not is_complete(paths["i2v"], MINI)
    ensure_models(MINI, tmp_path, tasks=["i2v"])
    assert is_complete(paths["i2v"], MINI)
    assert not any(p.is_symlink() for p in paths["i2v"].iterdir())


def test_cli_builds_the_asked_size_and_tasks(tmp_path, capsys):
    assert main(["--size", "tiny", "--out", str(tmp_path), "--tasks", "t2v"]) == 0
    assert is_complete(tmp_path / TINY.folder_names["t2v"], "tiny")
    assert not (tmp_path / TINY.folder_names["i2v"]).exists()
    assert str(tmp_path / TINY.folder_names["t2v"]) in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--size", "full"])
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--out", str(tmp_path)])


def test_cli_leaves_a_complete_folder_of_the_same_seed_alone(tmp_path, capsys):
    args = ["--size", "tiny", "--out", str(tmp_path), "--tasks", "t2v"]
    assert main(args) == 0
    folder = tmp_path / TINY.folder_names["t2v"]
    built = (folder / MARKER_NAME).stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert "already built" in capsys.readouterr().out
    assert (folder / MARKER_NAME).stat().st_mtime_ns == built
    # Another seed is another model, and --force builds again.
    for extra in (["--seed", "1"], ["--seed", "1", "--force"]):
        main([*args, *extra])
        assert (folder / MARKER_NAME).stat().st_mtime_ns != built
        built = (folder / MARKER_NAME).stat().st_mtime_ns
        assert (folder / ".seed").read_text().strip() == "1"
