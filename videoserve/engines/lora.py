"""LoRA adapters merged into a loaded DiT's weights, exactly and reversibly; both engines.

Why merged weights rather than adapters computed beside each layer: a merged layer costs
nothing per step (an adapter adds two thin matmuls to each of the ~400 linear layers of every
step), and a replica runs one generation at a time, so the weights can be those of the job's
LoRAs while it runs.

Why the original weights are kept: subtracting a merged delta again does not give the original
back in bf16 (each add rounds), so LoRA after LoRA would drift the base model. The first time a
LoRA touches a parameter its original is copied aside (to the CPU, page-locked when the DiT is
on a GPU) and every merge starts from that copy: any set of LoRAs, in any order, gives the
weights that merging it into the base model gives, and a job without LoRAs runs on the exact
base weights. Switching costs copying the touched weights back plus the low-rank products
(docs/BENCHMARKS.md has the figure on an H200); jobs with the same LoRAs switch nothing.

Why the copies go into a few large buffers, touched and then page-locked in place with
``cudaHostRegister`` (``HostBuffers``): for 480 weights of a 14B DiT's shapes (32 GB) on an H200
machine, one pinned allocation per weight took 24-40 s, one pinned 32 GB allocation 15 s
(torch's pinned allocator rounds sizes up to powers of two), one plain buffer touched and
registered 9 s; copies into page-locked memory run at about 55 GB/s, into plain memory at
1.2 GB/s (and back at 5.8 GB/s instead of 55). Served, the first switch of the I2V-14B now
takes 10.6 s instead of 40 s (docs/BENCHMARKS.md "LoRA adapters").

The file is read once, checked against the sha256 its job was admitted with (a file replaced
in the folder since is refused, not silently used), and parsed with safetensors (no pickle).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from videoserve.core.loras import Layout, LoraError, natural_key, read_header, read_layout
from videoserve.engines.base import GenerationError, LoraFile

log = logging.getLogger(__name__)

# Parsed LoRAs kept in memory per replica, by sha256 (a 14B rank-64 one is about 0.7 GB).
CACHED_LORAS = 2


def read_lora(lora: LoraFile) -> tuple[Layout, dict[str, Any]]:
    """The file's layout and tensors (CPU); GenerationError when it changed since admission
    or is not a LoRA."""
    from safetensors.torch import load

    try:
        fd = os.open(lora.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise GenerationError(f"LoRA {lora.id!r} cannot be read on this replica: "
                              f"{exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read()
        if hashlib.sha256(data).hexdigest() != lora.sha256:
            raise GenerationError(f"LoRA {lora.id!r} changed since this job was submitted (its "
                                  "sha256 differs); submit the job again")
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return read_layout(read_header(lora.path, fd)), load(data)
        except (LoraError, ValueError) as exc:
            raise GenerationError(f"LoRA {lora.id!r} is not usable: {exc}") from None


# Host buffers the originals are copied into: up to this many, filled on as many threads.
HOST_BUFFER_THREADS = 8
ALIGN = 64  # bytes: each copy starts at a multiple (any dtype's view is aligned)


class HostBuffers:
    """Page-locked CPU copies of GPU tensors (plain CPU copies of CPU tensors), made in up to
    HOST_BUFFER_THREADS large buffers at once rather than one allocation per tensor."""

    def __init__(self) -> None:
        self.buffers: list[Any] = []  # kept alive (and registered) for the merger's life

    def copies_of(self, tensors: Sequence[Any]) -> list[Any]:
        """Host tensors holding each of ``tensors``' values (the copies from a GPU are queued
        on its current stream: later work on that stream sees them done)."""
        import torch

        if not tensors:
            return []
        groups = _groups([t.numel() * t.element_size() for t in tensors], HOST_BUFFER_THREADS)
        pin = tensors[0].device.type == "cuda"
        if pin:
            from concurrent.futures import ThreadPoolExecutor

            # Touching the pages (zero_) and locking them are the slow parts; torch and the
            # driver release the GIL for both.
            with ThreadPoolExecutor(len(groups)) as pool:
                buffers = list(pool.map(lambda g: _locked_buffer(g[-1][1] + g[-1][2]), groups))
        else:
            buffers = [torch.empty(g[-1][1] + g[-1][2], dtype=torch.uint8) for g in groups]
        self.buffers.extend(buffers)
        copies: list[Any] = [None] * len(tensors)
        for group, buffer in zip(groups, buffers, strict=True):
            for index, offset, size in group:
                source = tensors[index]
                view = buffer[offset:offset + size].view(source.dtype).view(source.shape)
                copies[index] = view.copy_(source, non_blocking=pin)
        return copies


def _groups(sizes: list[int], count: int) -> list[list[tuple[int, int, int]]]:
    """Split tensors (by byte size, in order) into up to ``count`` groups of about equal bytes:
    each group a list of (index, byte offset in the group's buffer, bytes)."""
    target = -(-sum(sizes) // count)
    groups: list[list[tuple[int, int, int]]] = [[]]
    offset = 0
    for index, size in enumerate(sizes):
        if offset >= target and len(groups) < count:
            groups.append([])
            offset = 0
        groups[-1].append((index, offset, size))
        offset += -(-size // ALIGN) * ALIGN
    return groups


def _locked_buffer(size: int) -> Any:
    """A plain CPU buffer of ``size`` bytes, its pages touched and then page-locked for the
    GPU's copies (left pageable, with a warning, where the driver refuses)."""
    import torch

    buffer = torch.empty(size, dtype=torch.uint8)
    buffer.zero_()  # touch every page: locking pages that exist is fast
    result = torch.cuda.cudart().cudaHostRegister(buffer.data_ptr(), size, 0)
    if int(result) != 0:
        log.warning("LoRA originals: %d MB could not be page-locked (%s); copies to and "
                    "from them will be slower", size // 2**20, result)
    return buffer


def renamed(mapping: dict[str, str]) -> Callable[[str], str]:
    """A parameter-name translation from regex -> replacement pairs (first match wins), as
    fastvideo's DiTs declare from diffusers' names to theirs."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in mapping.items()]

    def rename(name: str) -> str:
        for pattern, replacement in compiled:
            if pattern.match(name):
                return pattern.sub(replacement, name)
        return name

    return rename


class LoraMerger:
    """Keeps a DiT's weights equal to its base weights plus the current job's LoRAs."""

    def __init__(self, transformer: Any, rename: Callable[[str], str] | None = None,
                 read: Callable[[LoraFile], tuple[Layout, dict[str, Any]]] = read_lora):
        self.params = dict(transformer.named_parameters())
        self.rename = rename or (lambda name: name)
        self.read = read
        self.originals: dict[str, Any] = {}  # diffusers name -> the base weight (a copy)
        self._host = HostBuffers()
        self.merged: set[str] = set()  # parameters that differ from their original now
        self.current: tuple[tuple[str, float], ...] = ()
        self.last_switch_s: float | None = None
        self._cache: OrderedDict[str, tuple[Layout, dict[str, Any]]] = OrderedDict()

    def apply(self, loras: Sequence[LoraFile]) -> float | None:
        """Make the weights the base weights plus ``loras`` (scale 0 ones are left out); the
        seconds it took, None when they already were."""
        import torch

        loras = [lora for lora in loras if lora.scale != 0]
        wanted = tuple((lora.sha256, float(lora.scale)) for lora in loras)
        if wanted == self.current:
            return None
        with torch.no_grad():
            return self._switch(loras, wanted)

    def _switch(self, loras: list[LoraFile], wanted: tuple[tuple[str, float], ...]) -> float:
        start = time.perf_counter()
        deltas: dict[str, list[tuple[Any, ...]]] = {}
        for lora in loras:
            self._collect(lora, deltas)
        # Checked before any weight changes: a LoRA that does not fit leaves the model as it was.
        self._check(deltas)
        # Until the loop ends the weights are neither set: a failure in it (out of memory, say)
        # makes the next job restore every touched parameter.
        self.current = (("", -1.0),)
        self._set_aside(sorted(set(deltas) - set(self.originals), key=natural_key))
        self.merged |= set(deltas)
        for name in sorted(self.merged, key=natural_key):
            param = self._param(name, "")
            original = self.originals[name]
            if name in deltas:
                param.data.copy_(self._merge(original, param, deltas[name]))
            else:
                param.data.copy_(original.to(param.device, non_blocking=True))
        self.merged, self.current = set(deltas), wanted
        self._synchronize()
        self.last_switch_s = time.perf_counter() - start
        log.info("LoRAs %s merged in %.2fs (%d parameters changed)",
                 [lora.id for lora in loras] or "none", self.last_switch_s, len(deltas))
        return self.last_switch_s

    def _collect(self, lora: LoraFile, deltas: dict[str, list[tuple[Any, ...]]]) -> None:
        layout, tensors = self._load(lora)
        for target, keys in layout.layers.items():
            alpha = float(tensors[keys.alpha].item()) if keys.alpha else float(keys.rank)
            factor = lora.scale * alpha / keys.rank
            deltas.setdefault(f"{target}.weight", []).append(
                (lora.id, "lora", tensors[keys.up], tensors[keys.down], factor))
        for name, (key, _) in layout.diffs.items():
            deltas.setdefault(name, []).append((lora.id, "diff", tensors[key], lora.scale))

    def _check(self, deltas: dict[str, list[tuple[Any, ...]]]) -> None:
        for name in sorted(deltas, key=natural_key):
            for lora_id, kind, *tensors, _ in deltas[name]:
                param = self._param(name, lora_id)
                shape = ((tensors[0].shape[0], tensors[1].shape[1]) if kind == "lora"
                         else tuple(tensors[0].shape))
                if tuple(param.shape) != tuple(shape):
                    raise GenerationError(
                        f"lora_incompatible: LoRA {lora_id!r}: layer {name}: the LoRA is for "
                        f"{'x'.join(map(str, shape))} but the model's is "
                        f"{'x'.join(map(str, param.shape))}")

    def _load(self, lora: LoraFile) -> tuple[Layout, dict[str, Any]]:
        if lora.sha256 in self._cache:
            self._cache.move_to_end(lora.sha256)
            return self._cache[lora.sha256]
        loaded = self.read(lora)
        self._cache[lora.sha256] = loaded
        while len(self._cache) > CACHED_LORAS:
            self._cache.popitem(last=False)
        return loaded

    def _param(self, name: str, lora_id: str) -> Any:
        import torch

        param = self.params.get(self.rename(name))
        if param is None:
            raise GenerationError(f"lora_incompatible: LoRA {lora_id!r}: layer {name}: the "
                                  "model has no such layer")
        if param.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise GenerationError(f"LoRA {lora_id!r}: layer {name} is stored as {param.dtype} "
                                  "(the fp8 speed lever); LoRAs need the quality speed mode")
        return param

    def _set_aside(self, names: list[str]) -> None:
        """Copy the original weights of ``names`` (touched for the first time) aside."""
        if names:
            copies = self._host.copies_of([self._param(name, "").data for name in names])
            self.originals.update(zip(names, copies, strict=True))

    @staticmethod
    def _merge(original: Any, param: Any, entries: list[tuple[Any, ...]]) -> Any:
        """base + sum of the deltas, added in float32, rounded once to the parameter's dtype."""
        import torch

        # A copy always: a float32 original on the parameter's device would otherwise be the
        # very tensor the deltas are added to.
        total = original.to(param.device, torch.float32, non_blocking=True, copy=True)
        for _, kind, *tensors, factor in entries:
            if kind == "lora":
                up, down = (t.to(param.device, torch.float32) for t in tensors)
                total.add_(up @ down, alpha=factor)
            else:
                total.add_(tensors[0].to(param.device, torch.float32), alpha=factor)
        return total.to(param.dtype)

    def _synchronize(self) -> None:
        import torch

        if any(p.device.type == "cuda" for p in self.params.values()):
            torch.cuda.synchronize()
