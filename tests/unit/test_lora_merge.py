"""Merging LoRAs into a module's weights (``videoserve.engines.lora``): exact restore, order
independence, checks before any change, and a file changed after admission refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from videoserve.engines.base import GenerationError, LoraFile
from videoserve.engines.lora import LoraMerger, renamed


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_q = torch.nn.Linear(8, 8)
        self.fc_in = torch.nn.Linear(8, 16)


class Tiny(torch.nn.Module):
    """Parameter names of its own, as fastvideo's DiTs have: ``renamed`` maps diffusers'."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList([Block()]).to(torch.bfloat16)


RENAME = renamed({r"^blocks\.(\d+)\.attn1\.to_q\.(.*)$": r"blocks.\1.to_q.\2",
                  r"^blocks\.(\d+)\.ffn\.net\.0\.proj\.(.*)$": r"blocks.\1.fc_in.\2"})


def write(path: Path, seed: int, out: int = 16, wan: bool = False) -> LoraFile:
    g = torch.Generator().manual_seed(seed)

    def pair(prefix: str, down: str, up: str, rows: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{down}.weight": torch.randn(4, 8, generator=g),
                f"{prefix}.{up}.weight": torch.randn(rows, 4, generator=g)}

    if wan:
        tensors = {**pair("diffusion_model.blocks.0.ffn.0", "lora_down", "lora_up", out),
                   "diffusion_model.blocks.0.ffn.0.alpha": torch.tensor(2.0)}
    else:
        tensors = {**pair("transformer.blocks.0.attn1.to_q", "lora_A", "lora_B", 8),
                   **pair("transformer.blocks.0.ffn.net.0.proj", "lora_A", "lora_B", out)}
    save_file(tensors, str(path))
    return LoraFile(path.stem, str(path), hashlib.sha256(path.read_bytes()).hexdigest(), 1.0)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[name], b[name]) for name in a)


def test_any_order_gives_the_merge_from_the_base_and_none_gives_the_base(tmp_path):
    model = Tiny()
    base = weights(model)
    merger = LoraMerger(model, RENAME)
    a, b = write(tmp_path / "a.safetensors", 1), write(tmp_path / "b.safetensors", 2, wan=True)
    merger.apply([a])
    only_a = weights(model)
    assert not torch.equal(only_a["blocks.0.to_q.weight"], base["blocks.0.to_q.weight"])
    merger.apply([a, b])
    both = weights(model)
    merger.apply([b])
    merger.apply([a, b])
    assert same(weights(model), both)  # reached through another set: the same weights
    merger.apply([a])
    assert same(weights(model), only_a)
    merger.apply([])
    assert same(weights(model), base)  # bf16 rounding never accumulates
    assert merger.apply([]) is None  # nothing to change


def test_the_wan_alpha_scales_the_delta(tmp_path):
    model = Tiny()
    base = weights(model)["blocks.0.fc_in.weight"].float()
    lora = write(tmp_path / "w.safetensors", 3, wan=True)
    LoraMerger(model, RENAME).apply([LoraFile(lora.id, lora.path, lora.sha256, 0.5)])
    from safetensors.torch import load_file

    t = load_file(lora.path)
    delta = t["diffusion_model.blocks.0.ffn.0.lora_up.weight"] @ t[
        "diffusion_model.blocks.0.ffn.0.lora_down.weight"]
    expected = (base + 0.5 * (2.0 / 4) * delta).to(torch.bfloat16)
    assert torch.equal(model.blocks[0].fc_in.weight.detach(), expected)


def test_a_lora_that_does_not_fit_changes_nothing(tmp_path):
    model = Tiny()
    merger = LoraMerger(model, RENAME)
    merger.apply([write(tmp_path / "good.safetensors", 1)])
    before = weights(model)
    with pytest.raises(GenerationError, match="lora_incompatible: LoRA 'bad': layer "
                       "blocks.0.ffn.net.0.proj.weight: the LoRA is for 32x8"):
        merger.apply([write(tmp_path / "bad.safetensors", 1, out=32)])
    assert same(weights(model), before)


def test_a_file_changed_since_admission_is_refused(tmp_path):
    lora = write(tmp_path / "a.safetensors", 1)
    write(tmp_path / "a.safetensors", 2)  # replaced in the folder after the job was admitted
    with pytest.raises(GenerationError, match="changed since this job was submitted"):
        LoraMerger(Tiny(), RENAME).apply([lora])


def test_originals_are_copied_into_a_few_aligned_buffers():
    from videoserve.engines.lora import ALIGN, HOST_BUFFER_THREADS, HostBuffers, _groups

    sizes = [100, 6, 4096, 1, 64, 3000, 10, 10, 500]
    groups = _groups(sizes, 3)
    assert 1 < len(groups) <= 3
    assert [index for group in groups for index, _, _ in group] == list(range(len(sizes)))
    for group in groups:
        ends = [offset + size for _, offset, size in group]
        for (_, offset, _), end in zip(group[1:], ends, strict=False):
            assert offset % ALIGN == 0 and offset >= end  # aligned, never overlapping
    torch.manual_seed(0)
    tensors = [torch.randn(5, 7).to(torch.bfloat16), torch.randn(3), torch.randn(64, 33),
               torch.randn(2, 2, dtype=torch.float64)]
    host = HostBuffers()
    copies = host.copies_of(tensors)
    assert len(host.buffers) <= HOST_BUFFER_THREADS
    for tensor, copy in zip(tensors, copies, strict=True):
        assert copy.dtype == tensor.dtype and torch.equal(copy, tensor)
        tensor.add_(1)  # a copy, not a view of the weight
        assert not torch.equal(copy, tensor)
