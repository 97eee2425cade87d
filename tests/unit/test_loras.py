"""The LoRA folder and the two key formats, without torch: headers, layouts, fits, ids, and what
a folder may hold (symlinks, other file types, corrupt or oversized files)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest

from videoserve.core.errors import InvalidInput, NotFound
from videoserve.core.loras import (
    LoraCatalog,
    LoraError,
    check_fits,
    first_mismatch,
    parse_lora_flag,
    read_layout,
)

MODEL = {"blocks.0.attn1.to_q.weight": (8, 8), "blocks.0.attn2.add_k_proj.weight": (8, 4),
         "blocks.0.ffn.net.0.proj.weight": (16, 8), "blocks.0.ffn.net.2.weight": (8, 16),
         "blocks.10.attn1.to_q.weight": (8, 8), "blocks.0.norm2.weight": (8,),
         "scale_shift_table": (1, 2, 8)}


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """A valid safetensors file of float32 zeros with these tensors."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * (1 if not shape else __import__("math").prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset,
                                                                               offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return path


def peft(module: str, out: int, inp: int, rank: int = 4) -> dict[str, tuple[int, ...]]:
    return {f"transformer.{module}.lora_A.weight": (rank, inp),
            f"transformer.{module}.lora_B.weight": (out, rank)}


def wan(module: str, out: int, inp: int, rank: int = 4) -> dict[str, tuple[int, ...]]:
    return {f"diffusion_model.{module}.lora_down.weight": (rank, inp),
            f"diffusion_model.{module}.lora_up.weight": (out, rank),
            f"diffusion_model.{module}.alpha": ()}


def header_of(shapes: dict[str, tuple[int, ...]]) -> dict:
    return {k: {"dtype": "F32", "shape": list(v)} for k, v in shapes.items()}


def test_peft_keys_name_diffusers_layers():
    layout = read_layout(header_of({**peft("blocks.0.attn1.to_q", 8, 8),
                                    **peft("blocks.0.ffn.net.2", 8, 16, rank=4)}))
    assert layout.format == "diffusers" and layout.rank == 4
    assert set(layout.layers) == {"blocks.0.attn1.to_q", "blocks.0.ffn.net.2"}
    assert first_mismatch(layout, MODEL) is None


def test_wan_keys_are_translated_to_diffusers_names():
    shapes = {**wan("blocks.0.self_attn.q", 8, 8), **wan("blocks.0.cross_attn.k_img", 8, 4),
              **wan("blocks.0.ffn.0", 16, 8), **wan("blocks.0.ffn.2", 8, 16),
              "diffusion_model.blocks.0.norm3.diff": (8,),
              "diffusion_model.head.modulation.diff": (1, 2, 8)}
    layout = read_layout(header_of(shapes))
    assert layout.format == "wan"
    assert set(layout.layers) == {"blocks.0.attn1.to_q", "blocks.0.attn2.add_k_proj",
                                  "blocks.0.ffn.net.0.proj", "blocks.0.ffn.net.2"}
    alpha = layout.layers["blocks.0.attn1.to_q"].alpha
    assert alpha == "diffusion_model.blocks.0.self_attn.q.alpha"
    assert set(layout.diffs) == {"blocks.0.norm2.weight", "scale_shift_table"}
    assert first_mismatch(layout, MODEL) is None


def test_the_first_mismatch_in_block_order_is_named():
    layout = read_layout(header_of({**peft("blocks.10.attn1.to_q", 8, 8),
                                    **peft("blocks.0.attn1.to_q", 16, 16)}))
    assert first_mismatch(layout, MODEL) == (
        "layer blocks.0.attn1.to_q: the LoRA is for 16x16 but the model's is 8x8")
    missing = read_layout(header_of(peft("blocks.3.attn1.to_q", 8, 8)))
    assert first_mismatch(missing, MODEL) == (
        "layer blocks.3.attn1.to_q: the model has no such layer")
    info = type("Info", (), {"id": "x", "layout": layout})()
    with pytest.raises(InvalidInput) as caught:
        check_fits(info, MODEL, "tiny")
    assert caught.value.code == "lora_incompatible"
    assert "blocks.0.attn1.to_q" in caught.value.message


@pytest.mark.parametrize("shapes, reason", [
    ({"transformer.blocks.0.attn1.to_q.weight": (8, 8)}, "unsupported key"),
    (dict(list(peft("blocks.0.attn1.to_q", 8, 8).items())[:1]), "up (lora_B / lora_up)"),
    ({"transformer.blocks.0.attn1.to_q.lora_A.weight": (4, 8),
      "transformer.blocks.0.attn1.to_q.lora_B.weight": (8, 3)}, "not a rank-r pair"),
    ({}, "no LoRA tensors"),
])
def test_files_that_are_no_lora_say_why(shapes, reason):
    with pytest.raises(LoraError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        read_layout(header_of(shapes))


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "loras"
    root.mkdir()
    write_safetensors(root / "style.safetensors", peft("blocks.0.attn1.to_q", 8, 8))
    write_safetensors(root / "motion.safetensors", wan("blocks.0.self_attn.q", 8, 8))
    (root / "garbage.safetensors").write_bytes(b"\xff" * 64)
    (root / "pickled.pt").write_bytes(b"\x80\x04not loaded")
    (root / "pickled.bin").write_bytes(b"\x80\x04not loaded")
    (tmp_path / "outside.safetensors").write_bytes(
        (root / "style.safetensors").read_bytes())
    os.symlink(tmp_path / "outside.safetensors", root / "link.safetensors")
    return root


def test_the_catalog_lists_safetensors_files_only(folder):
    catalog = LoraCatalog(folder)
    listed = {info.id: info for info in catalog.scan()}
    assert sorted(listed) == ["garbage", "link", "motion", "style"]  # no .pt, no .bin
    style = listed["style"]
    assert style.error is None and style.layout.format == "diffusers"
    assert style.sha256 == hashlib.sha256((folder / "style.safetensors").read_bytes()).hexdigest()
    assert listed["motion"].layout.format == "wan"
    assert "not a safetensors file" in listed["garbage"].error
    assert "symlinks" in listed["link"].error  # nothing outside the folder is read
    described = style.describe(["t2v"])
    assert described == {"id": "style", "object": "lora", "bytes": style.bytes,
                         "sha256": style.sha256, "tasks": ["t2v"], "rank": 4,
                         "format": "diffusers"}


@pytest.mark.parametrize("bad", ["../style", "/etc/passwd", "a/b", ".hidden", "", "x" * 200,
                                 "style.safetensors/..", "c:\\x"])
def test_ids_are_names_not_paths(folder, bad):
    with pytest.raises(InvalidInput) as caught:
        LoraCatalog(folder).get(bad)
    assert caught.value.code == "invalid_lora_id"


def test_unknown_unreadable_and_oversized(folder):
    catalog = LoraCatalog(folder, max_bytes=100)
    with pytest.raises(NotFound) as missing:
        catalog.get("pickled")  # pickled.pt is no LoRA id: only .safetensors files are
    assert missing.value.code == "lora_not_found"
    with pytest.raises(InvalidInput) as corrupt:
        catalog.usable("garbage")
    assert corrupt.value.code == "lora_unreadable"
    big = catalog.get("style")
    assert "larger than this server's cap" in big.error and big.sha256 is None


def test_a_changed_file_is_read_again(folder):
    catalog = LoraCatalog(folder)
    before = catalog.get("style")
    write_safetensors(folder / "style.safetensors", peft("blocks.0.attn1.to_q", 8, 8, rank=2))
    after = catalog.get("style")
    assert after.layout.rank == 2 and after.sha256 != before.sha256
    write_safetensors(folder / "new.safetensors", peft("blocks.0.attn1.to_q", 8, 8))
    assert "new" in [info.id for info in catalog.scan()]  # no restart needed


@pytest.mark.parametrize("text, parsed", [("style", ("style", 1.0)),
                                          ("style:0.5", ("style", 0.5)),
                                          ("a.b-c_d:2", ("a.b-c_d", 2.0))])
def test_lora_flags(text, parsed):
    assert parse_lora_flag(text) == parsed


@pytest.mark.parametrize("text", ["../x", "x:3", "x:-1", "x:abc", ":1"])
def test_bad_lora_flags(text):
    with pytest.raises(ValueError):
        parse_lora_flag(text)
