"""LoRA adapters: the folder they live in, their two key formats, and whether one fits a model.

Pure Python: a ``.safetensors`` file starts with a JSON header naming every tensor's dtype and
shape, so the ingress lists LoRAs and checks them against a model's layers without torch and
without reading their weights. The engines (``videoserve.engines.lora``) merge them with the
same key reading (``read_layout``).

Two key formats, one set of target names (diffusers' ``WanTransformer3DModel`` module names):
- diffusers / PEFT: ``transformer.blocks.0.attn1.to_q.lora_A.weight`` (rank x in) and
  ``...lora_B.weight`` (out x rank), optionally ``...alpha``;
- the original Wan code's names that shared Wan LoRAs (ComfyUI, LightX2V) use:
  ``diffusion_model.blocks.0.self_attn.q.lora_down.weight``, ``lora_up``, ``alpha``; and
  ``.diff`` / ``.diff_b`` (a full delta of a weight / bias, e.g. of a norm).

Security: a LoRA id is a file name, never a path (``ID_PATTERN``); only regular ``.safetensors``
files directly inside the folder are read (no symlinks, so nothing outside it), and nothing
is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from videoserve.core.errors import InvalidInput, NotFound

LORA_SUFFIX = ".safetensors"
MAX_LORAS = 4  # per request
MAX_SCALE = 2.0
DEFAULT_MAX_BYTES = 2 * 1024**3  # a rank-128 Wan-14B LoRA in bf16 is about 1.2 GiB
# A file name without its suffix: letters, digits, '.', '_', '-'; no leading dot, no '/'.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_HEADER_BYTES = 64 * 1024 * 1024  # a 14B model's header is a few hundred KB

# Original Wan module names -> diffusers names (block-relative, then top-level).
_WAN_BLOCK = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0", "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj", "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k", "cross_attn.norm_k_img": "attn2.norm_added_k",
    "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2", "norm3": "norm2",
    "modulation": "scale_shift_table",
}
_WAN_TOP = {
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
    "head.head": "proj_out", "head.modulation": "scale_shift_table",
}
# Parameters rather than modules: a ``.diff`` of them is the parameter itself.
_PARAMETERS = ("scale_shift_table",)
_PREFIXES = ("diffusion_model.", "transformer.", "model.diffusion_model.", "model.")
_SUFFIXES = {".lora_A.weight": "down", ".lora_B.weight": "up", ".lora_down.weight": "down",
             ".lora_up.weight": "up", ".alpha": "alpha", ".diff": "diff", ".diff_b": "diff_b"}
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


class LoraError(ValueError):
    """A file that cannot be used as a LoRA; the message says why."""


@dataclass(frozen=True)
class LayerKeys:
    """The tensors of one low-rank layer delta: up @ down x (alpha / rank)."""

    down: str
    up: str
    alpha: str | None
    rank: int
    out_features: int
    in_features: int


@dataclass(frozen=True)
class Layout:
    """What a LoRA file changes, by diffusers target name."""

    format: str  # "diffusers" or "wan"
    layers: dict[str, LayerKeys]  # module name -> its low-rank tensors
    diffs: dict[str, tuple[str, tuple[int, ...]]]  # parameter name -> (key, shape)

    @property
    def rank(self) -> int:
        return max((k.rank for k in self.layers.values()), default=0)


def natural_key(name: str) -> list[Any]:
    """Sorts blocks.2 before blocks.10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def read_header(path: Path | str, fd: int | None = None) -> dict[str, Any]:
    """The JSON header of a safetensors file: {name: {"dtype", "shape", ...}, ...}."""
    def read(n: int) -> bytes:
        return os.read(fd, n) if fd is not None else handle.read(n)

    handle = open(path, "rb") if fd is None else None  # noqa: SIM115 - closed below
    try:
        size = os.fstat(fd if fd is not None else handle.fileno()).st_size
        head = read(8)
        if len(head) < 8:
            raise LoraError("not a safetensors file (shorter than its header)")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise LoraError("not a safetensors file (its header length is impossible)")
        raw = read(length)
        try:
            header = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise LoraError("not a safetensors file (its header is not JSON)") from None
        if not isinstance(header, dict):
            raise LoraError("not a safetensors file (its header is not a JSON object)")
        return header
    finally:
        if handle is not None:
            handle.close()


def _target(module: str) -> tuple[str, bool]:
    """(diffusers name, written with Wan's names) of a module name without prefix."""
    if module in _WAN_TOP:
        return _WAN_TOP[module], True
    match = _BLOCK.fullmatch(module)
    if match and match.group(2) in _WAN_BLOCK:
        return f"blocks.{match.group(1)}.{_WAN_BLOCK[match.group(2)]}", True
    return module, False


def _split(key: str) -> tuple[str, str]:
    """(module name, kind) of a tensor key; LoraError for keys of no known LoRA form."""
    for suffix, kind in _SUFFIXES.items():
        if key.endswith(suffix):
            module = key[: -len(suffix)]
            for prefix in _PREFIXES:
                if module.startswith(prefix):
                    return module[len(prefix):], kind
            return module, kind
    raise LoraError(f"unsupported key {key!r} (expected lora_A/lora_B, lora_down/lora_up, "
                    "alpha, diff or diff_b tensors)")


def _shape(header: dict[str, Any], key: str) -> tuple[int, ...]:
    entry = header[key]
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise LoraError(f"key {key!r} has no valid shape")
    return tuple(shape)


def read_layout(header: dict[str, Any]) -> Layout:
    """The layers a LoRA file changes, by diffusers target name; LoraError when it is not one."""
    parts: dict[str, dict[str, str]] = {}
    diffs: dict[str, tuple[str, tuple[int, ...]]] = {}
    wan = False
    for key in header:
        if key == "__metadata__":
            continue
        module, kind = _split(key)
        target, wan_name = _target(module)
        wan = wan or wan_name
        if kind in ("diff", "diff_b"):
            param = target if target in _PARAMETERS else (
                f"{target}.weight" if kind == "diff" else f"{target}.bias")
            diffs[param] = (key, _shape(header, key))
        else:
            parts.setdefault(target, {})[kind] = key
    layers = {target: _layer(target, found, header) for target, found in parts.items()}
    if not layers and not diffs:
        raise LoraError("no LoRA tensors in the file")
    return Layout("wan" if wan else "diffusers", layers, diffs)


def _layer(target: str, found: dict[str, str], header: dict[str, Any]) -> LayerKeys:
    if "down" not in found or "up" not in found:
        missing = "down (lora_A / lora_down)" if "down" not in found else "up (lora_B / lora_up)"
        raise LoraError(f"layer {target}: its {missing} tensor is missing")
    down, up = _shape(header, found["down"]), _shape(header, found["up"])
    if len(down) != 2 or len(up) != 2 or down[0] != up[1]:
        raise LoraError(f"layer {target}: down {list(down)} and up {list(up)} are not a "
                        "rank-r pair (r x in, out x r)")
    alpha = found.get("alpha")
    if alpha is not None and _shape(header, alpha) not in ((), (1,)):
        raise LoraError(f"layer {target}: alpha must be a single number")
    return LayerKeys(found["down"], found["up"], alpha, down[0], up[0], down[1])


def first_mismatch(layout: Layout, model: dict[str, tuple[int, ...]]) -> str | None:
    """The first layer (in block order) where the LoRA does not fit ``model`` (parameter name
    -> shape), described; None when it fits."""
    for target in sorted(layout.layers, key=natural_key):
        keys = layout.layers[target]
        shape = model.get(f"{target}.weight")
        if shape is None:
            return f"layer {target}: the model has no such layer"
        if shape != (keys.out_features, keys.in_features):
            return (f"layer {target}: the LoRA is for {keys.out_features}x{keys.in_features} "
                    f"but the model's is {'x'.join(map(str, shape))}")
    for param in sorted(layout.diffs, key=natural_key):
        shape = model.get(param)
        if shape is None:
            return f"parameter {param}: the model has no such parameter"
        if shape != layout.diffs[param][1]:
            return (f"parameter {param}: the LoRA's delta is {list(layout.diffs[param][1])} "
                    f"but the model's is {list(shape)}")
    return None


def model_shapes(model_folder: Path) -> dict[str, tuple[int, ...]]:
    """Every transformer parameter's shape, from the headers of ``transformer/*.safetensors``."""
    folder = Path(model_folder) / "transformer"
    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        header = read_header(path)
        shapes.update({k: _shape(header, k) for k in header if k != "__metadata__"})
    if not shapes:
        raise LoraError(f"no transformer weights under {folder}")
    return shapes


@dataclass(frozen=True)
class LoraInfo:
    """One file of the LoRA folder, as listed by GET /v1/loras."""

    id: str
    path: Path
    bytes: int
    sha256: str | None = None
    layout: Layout | None = None
    error: str | None = None
    stamp: tuple[int, int, int] = (0, 0, 0)  # (inode, size, mtime_ns): when to read it again

    def describe(self, tasks: list[str]) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": self.id, "object": "lora", "bytes": self.bytes,
                                 "sha256": self.sha256}
        if self.error is not None:
            return {**entry, "tasks": [], "rank": None, "format": None, "error": self.error}
        assert self.layout is not None
        return {**entry, "tasks": tasks, "rank": self.layout.rank, "format": self.layout.format}


@dataclass
class LoraCatalog:
    """The LoRA folder: files are read when first seen and again when they change (so new ones
    show up without a restart); each one's layout and sha256 are kept until then."""

    folder: Path
    max_bytes: int = DEFAULT_MAX_BYTES
    _known: dict[str, LoraInfo] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def ids(self) -> list[str]:
        names = sorted(entry.name for entry in os.scandir(self.folder)
                       if entry.name.endswith(LORA_SUFFIX))
        return [n[: -len(LORA_SUFFIX)] for n in names
                if ID_PATTERN.fullmatch(n[: -len(LORA_SUFFIX)])]

    def scan(self) -> list[LoraInfo]:
        """Every LoRA of the folder (slow the first time a large file is seen: its sha256)."""
        found = []
        for lora_id in self.ids():
            try:
                found.append(self.get(lora_id))
            except NotFound:
                continue  # removed meanwhile
        return found

    def get(self, lora_id: str) -> LoraInfo:
        """The LoRA named ``lora_id``: 422 for an id that is not a plain name, 404 when no
        such file is in the folder. A file that is no LoRA comes back with its ``error``."""
        if not isinstance(lora_id, str) or not ID_PATTERN.fullmatch(lora_id):
            raise InvalidInput(f"loras: {lora_id!r} is not a LoRA id (a file name in the LoRA "
                               "folder without .safetensors: letters, digits, '.', '_', '-')",
                               param="loras", code="invalid_lora_id")
        path = self.folder / (lora_id + LORA_SUFFIX)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"loras: no LoRA {lora_id!r} (GET /v1/loras lists them)",
                           param="loras", code="lora_not_found") from None
        except OSError:
            return LoraInfo(lora_id, path, 0, error="the file may not be read (symlinks and "
                            "unreadable files are not accepted)")
        try:
            return self._info(lora_id, path, fd)
        finally:
            os.close(fd)

    def _info(self, lora_id: str, path: Path, fd: int) -> LoraInfo:
        info = os.fstat(fd)
        stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
        with self._lock:
            known = self._known.get(lora_id)
        if known is not None and known.stamp == stamp:
            return known
        read = self._read(lora_id, path, fd, info)
        read = LoraInfo(read.id, read.path, read.bytes, read.sha256, read.layout, read.error,
                        stamp)
        with self._lock:
            self._known[lora_id] = read
        return read

    def _read(self, lora_id: str, path: Path, fd: int, info: os.stat_result) -> LoraInfo:
        if not stat.S_ISREG(info.st_mode):
            return LoraInfo(lora_id, path, 0, error="not a regular file")
        if info.st_size > self.max_bytes:
            return LoraInfo(lora_id, path, info.st_size, error=(
                f"the file is {info.st_size / 1e6:.0f} MB, larger than this server's cap of "
                f"{self.max_bytes / 1e6:.0f} MB (--lora_max_mb)"))
        try:
            layout = read_layout(read_header(path, fd))
        except LoraError as exc:
            return LoraInfo(lora_id, path, info.st_size, error=str(exc))
        digest = hashlib.sha256()
        os.lseek(fd, 0, os.SEEK_SET)
        while chunk := os.read(fd, 8 * 1024 * 1024):
            digest.update(chunk)
        return LoraInfo(lora_id, path, info.st_size, digest.hexdigest(), layout)

    def usable(self, lora_id: str) -> LoraInfo:
        """Like ``get``, and 422 ``lora_unreadable`` when the file is no usable LoRA."""
        info = self.get(lora_id)
        if info.error is not None:
            raise InvalidInput(f"loras: {lora_id!r} cannot be used: {info.error}",
                               param="loras", code="lora_unreadable")
        return info


def check_fits(info: LoraInfo, model: dict[str, tuple[int, ...]] | None, model_name: str) -> None:
    """422 ``lora_incompatible`` naming the first layer that does not match the model."""
    if model is None or info.layout is None:
        return  # the model's layers are unknown here: its replica checks them
    mismatch = first_mismatch(info.layout, model)
    if mismatch is not None:
        raise InvalidInput(f"loras: {info.id!r} does not fit model {model_name}: {mismatch}",
                           param="loras", code="lora_incompatible")


def parse_lora_flag(text: str) -> tuple[str, float]:
    """``ID[:SCALE]`` of ``--t2v_lora`` / ``--i2v_lora`` -> (id, scale)."""
    name, _, scale = text.partition(":")
    try:
        value = float(scale) if scale else 1.0
    except ValueError:
        raise ValueError(f"{text!r}: the scale after ':' must be a number") from None
    if not ID_PATTERN.fullmatch(name):
        raise ValueError(f"{text!r}: {name!r} is not a LoRA id (a file name without "
                         ".safetensors)")
    if not 0.0 <= value <= MAX_SCALE:
        raise ValueError(f"{text!r}: the scale must be between 0 and {MAX_SCALE:g}")
    return name, value
