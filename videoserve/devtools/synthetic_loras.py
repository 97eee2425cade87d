"""Synthetic (random-weight) LoRA adapters for the Wan models of ``tiny_models``.

They were never trained: applied to a model they change its output, which is noise either way.
They exist so tests and GPU benchmarks can exercise LoRA loading and switching without
downloads. Each adapter is written twice, encoding exactly the same weight delta:

- ``{prefix}-diffusers-r{rank}.safetensors``: diffusers/PEFT keys
  ``transformer.blocks.N.attn1.to_q.lora_A.weight`` (rank, in) and ``...lora_B.weight``
  (out, rank), no alpha keys, so delta = B @ A;
- ``{prefix}-wan-r{rank}.safetensors``: the original Wan / ComfyUI keys
  ``diffusion_model.blocks.N.self_attn.q.lora_down.weight`` (rank, in), ``...lora_up.weight``
  (out, rank) and ``...alpha`` = rank / 2, with lora_up = 2 B and lora_down = A, so
  delta = up @ down * alpha / rank = B @ A (the factors 2 and 1/2 are exact in floating point).

Targets, per block: ``attn1`` and ``attn2`` ``to_q/to_k/to_v/to_out.0``, the I2V image
projections ``attn2.add_k_proj/add_v_proj``, and ``ffn.net.0.proj/ffn.net.2``.

``write_synthetic_loras`` writes them for any Wan model folder in the Diffusers layout (it reads
only the weight shapes); ``ensure_tiny_loras`` builds them once for both tiny models.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videoserve.core.loras import read_header
from videoserve.devtools.model_sizes import SIZES
from videoserve.devtools.tiny_models import (
    MARKER_NAME,
    _exclusive_lock,
    default_cache_dir,
    ensure_tiny_models,
)

FORMATS = ("diffusers", "wan")
DEFAULT_RANK = 64
# Target ||delta W||_F / ||W||_F of every layer (see _b_scale).
DEFAULT_STRENGTH = 0.25
SYNTHETIC_NOTE = "random-weight LoRA; its output is noise"
LORA_DIR_NAME = "loras"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
EXTRA_WEIGHTS_NAME = "fastvideo_extra.safetensors"

# Module names inside a block: diffusers' WanTransformer3DModel -> the original Wan code.
WAN_MODULE_NAMES = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}

_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


@dataclass(frozen=True)
class LoraTarget:
    """One linear layer of the DiT that the synthetic LoRAs adapt."""

    name: str  # diffusers module name, e.g. "blocks.0.attn1.to_q"
    wan_name: str  # the original Wan module name, e.g. "blocks.0.self_attn.q"
    out_features: int
    in_features: int
    dtype: str  # torch dtype name of the model's weight, e.g. "bfloat16"


def lora_targets(model_folder: Path) -> list[LoraTarget]:
    """The adapted layers of the DiT in ``model_folder``, from the safetensors headers only."""
    targets = []
    for file in _transformer_weight_files(Path(model_folder)):
        for key, entry in read_header(file).items():
            if key == "__metadata__":
                continue
            target = _target_for(key, entry["shape"], entry["dtype"])
            if target is not None:
                targets.append(target)
    if not targets:
        raise ValueError(f"no Wan transformer blocks found in {model_folder}/transformer")
    return sorted(targets, key=_block_order)


def write_synthetic_loras(
    model_folder: Path,
    out_dir: Path,
    *,
    prefix: str,
    rank: int = DEFAULT_RANK,
    seed: int = 0,
    strength: float = DEFAULT_STRENGTH,
) -> dict[str, Path]:
    """Write the synthetic LoRA of the model at ``model_folder`` in both formats into ``out_dir``.

    ``rank`` is used as is, even above a layer's dimensions; ``seed`` fixes every value;
    ``strength`` is the intended ||delta W||_F / ||W||_F per layer. The tensors have the
    dtype of the model's weights. Returns ``{"diffusers": path, "wan": path}``.
    """
    if rank < 1:
        raise ValueError(f"rank must be positive, got {rank}")
    targets = lora_targets(model_folder)
    std = _reference_std(Path(model_folder), targets[0])
    pairs = {t.name: _random_pair(t, rank, seed, strength * std) for t in targets}
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = lora_paths(out_dir, prefix, rank)
    metadata = {"format": "pt", "videoserve_synthetic": SYNTHETIC_NOTE, "rank": str(rank)}
    _save_atomic(_diffusers_tensors(pairs), paths["diffusers"], metadata)
    _save_atomic(_wan_tensors(pairs, targets, rank), paths["wan"], metadata)
    return paths


def lora_paths(out_dir: Path, prefix: str, rank: int = DEFAULT_RANK) -> dict[str, Path]:
    """Where ``write_synthetic_loras`` puts the two files: ``{format: path}``."""
    return {fmt: Path(out_dir) / f"{prefix}-{fmt}-r{rank}.safetensors" for fmt in FORMATS}


def ensure_tiny_loras(lora_dir: Path | None = None) -> dict[str, dict[str, Path]]:
    """Build the synthetic LoRAs of both tiny models once (default: ``<model cache>/loras``).

    Complete files are reused; concurrent processes serialise on a lock file in ``lora_dir``.
    Returns ``{"t2v": {"diffusers": path, "wan": path}, "i2v": {...}}``; file stems such as
    ``synthetic-t2v-diffusers-r64`` serve as adapter ids.
    """
    models = ensure_tiny_models()
    root = default_cache_dir() / LORA_DIR_NAME if lora_dir is None else Path(lora_dir)
    root = root.expanduser().absolute()
    paths = {task: lora_paths(root, f"synthetic-{task}") for task in models}
    if all(loras_complete(paths[t], models[t]) for t in models):
        return paths
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / ".tiny-loras.lock"):
        for stale in root.glob(".*.partial-*"):
            stale.unlink(missing_ok=True)  # left by a writer that was killed
        for task, model in models.items():
            # Another process may have written them while we waited for the lock.
            if not loras_complete(paths[task], model):
                write_synthetic_loras(model, root, prefix=f"synthetic-{task}")
    return paths


def loras_complete(paths: dict[str, Path], model_folder: Path, rank: int = DEFAULT_RANK) -> bool:
    """Whether both files exist with the keys and shapes the model's layers need at ``rank``.

    A file is only ever renamed into place whole, but the model may have been rebuilt in
    another shape since; only the headers are read.
    """
    from safetensors import SafetensorError, safe_open

    targets = lora_targets(model_folder)
    try:
        for fmt, path in paths.items():
            with safe_open(str(path), framework="pt") as handle:
                found = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
            if found != _expected_shapes(targets, rank, fmt):
                return False
    except (OSError, SafetensorError):
        return False  # missing, truncated or not safetensors
    return True


def _transformer_weight_files(model_folder: Path) -> list[Path]:
    # The files diffusers loads: those of the index, or the single file. fastvideo's extra
    # weights (fastvideo_extra.safetensors) are never LoRA targets.
    folder = model_folder / "transformer"
    index = folder / f"{WEIGHTS_NAME}.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    if (folder / WEIGHTS_NAME).is_file():
        return [folder / WEIGHTS_NAME]
    return sorted(p for p in folder.glob("*.safetensors") if p.name != EXTRA_WEIGHTS_NAME)


def _target_for(key: str, shape: list[int], dtype_code: str) -> LoraTarget | None:
    # "blocks.N.<module>.weight" with <module> one of WAN_MODULE_NAMES and a 2-D shape.
    parts = key.split(".", 2)
    if len(parts) < 3 or parts[0] != "blocks" or not key.endswith(".weight"):
        return None
    module = parts[2].removesuffix(".weight")
    if module not in WAN_MODULE_NAMES or len(shape) != 2:
        return None
    block = f"blocks.{parts[1]}"
    dtype = _DTYPES.get(dtype_code)
    if dtype is None:
        raise ValueError(f"{key}: unsupported weight dtype {dtype_code}")
    return LoraTarget(f"{block}.{module}", f"{block}.{WAN_MODULE_NAMES[module]}",
                      int(shape[0]), int(shape[1]), dtype)


def _block_order(target: LoraTarget) -> tuple[int, int]:
    module = target.name.split(".", 2)[2]
    return int(target.name.split(".")[1]), list(WAN_MODULE_NAMES).index(module)


def _reference_std(model_folder: Path, probe: LoraTarget) -> float:
    """The typical element std of the DiT's linear weights, to size the delta against.

    A folder built by tiny_models names its size in its marker, and its weights are
    N(0, dit_init_std); any other folder (a real model) is measured on one layer.
    """
    try:
        version = (model_folder / MARKER_NAME).read_text(encoding="utf-8").strip()
    except OSError:
        version = ""
    for size in SIZES.values():
        if size.version == version:
            return size.dit_init_std
    return _measured_std(model_folder, probe)


def _measured_std(model_folder: Path, probe: LoraTarget) -> float:
    from safetensors import safe_open

    key = f"{probe.name}.weight"
    for file in _transformer_weight_files(model_folder):
        with safe_open(str(file), framework="pt") as handle:
            if key in handle.keys():
                return float(handle.get_tensor(key).double().pow(2).mean().sqrt())
    raise ValueError(f"{key} not found in {model_folder}")


def _random_pair(target: LoraTarget, rank: int, seed: int, delta_std: float) -> tuple[Any, Any]:
    """A (rank, in) and B (out, rank) for one layer, in the model's dtype.

    Why this scale: A ~ N(0, 1/in) and B ~ N(0, c^2) give E||B A||_F^2 = out * rank * c^2,
    and a weight of element std s has ||W||_F^2 = out * in * s^2, so
    c = strength * s * sqrt(in / rank) makes ||B A||_F ~ strength * ||W||_F for every layer
    whatever its shape or the rank. With strength 0.25 a LoRA at scale 1 visibly changes the
    output while the weights stay in their usual range (no overflow, no NaN).
    """
    import torch

    # One generator per layer, seeded from its name: a layer's values do not depend on which
    # other layers the model has, and only one layer's float32 draws exist at a time.
    layer_seed = (seed * 1_000_003 + zlib.crc32(target.name.encode())) % (2**63)
    generator = torch.Generator(device="cpu").manual_seed(layer_seed)
    a = torch.randn((rank, target.in_features), generator=generator)
    b = torch.randn((target.out_features, rank), generator=generator)
    a.mul_(1.0 / math.sqrt(target.in_features))
    b.mul_(delta_std * math.sqrt(target.in_features / rank))
    dtype = getattr(torch, target.dtype)
    return a.to(dtype), b.to(dtype)


def _diffusers_tensors(pairs: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    tensors = {}
    for name, (a, b) in pairs.items():
        tensors[f"transformer.{name}.lora_A.weight"] = a
        tensors[f"transformer.{name}.lora_B.weight"] = b
    return tensors


def _wan_tensors(
    pairs: dict[str, tuple[Any, Any]], targets: list[LoraTarget], rank: int
) -> dict[str, Any]:
    import torch

    # alpha / rank = 1/2 and up = 2 B: the same delta B @ A, and unlike alpha = rank it checks
    # that a loader applies alpha at all.
    tensors = {}
    for target in targets:
        a, b = pairs[target.name]
        key = f"diffusion_model.{target.wan_name}"
        tensors[f"{key}.lora_down.weight"] = a
        tensors[f"{key}.lora_up.weight"] = b * 2
        tensors[f"{key}.alpha"] = torch.tensor(rank / 2, dtype=torch.float32)
    return tensors


def _expected_shapes(targets: list[LoraTarget], rank: int, fmt: str) -> dict[str, tuple]:
    shapes: dict[str, tuple] = {}
    for t in targets:
        if fmt == "diffusers":
            shapes[f"transformer.{t.name}.lora_A.weight"] = (rank, t.in_features)
            shapes[f"transformer.{t.name}.lora_B.weight"] = (t.out_features, rank)
        else:
            shapes[f"diffusion_model.{t.wan_name}.lora_down.weight"] = (rank, t.in_features)
            shapes[f"diffusion_model.{t.wan_name}.lora_up.weight"] = (t.out_features, rank)
            shapes[f"diffusion_model.{t.wan_name}.alpha"] = ()
    return shapes


def _save_atomic(tensors: dict[str, Any], path: Path, metadata: dict[str, str]) -> None:
    # Written under a hidden temporary name and renamed into place, so a reader never sees a
    # half-written file and a crash leaves no file that looks complete.
    from safetensors.torch import save_file

    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    os.close(handle)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a service account must read the cache
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
