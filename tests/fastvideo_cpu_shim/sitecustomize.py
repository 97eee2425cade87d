"""Test-only shim that lets fastvideo 0.2.x generate on a machine without a GPU.

NEVER part of the product path. Activate it for a test run with both:

    PYTHONPATH=tests/fastvideo_cpu_shim${PYTHONPATH:+:$PYTHONPATH}
    VIDEOSERVE_FASTVIDEO_CPU_SHIM=1

Python imports ``sitecustomize`` at startup in every interpreter that sees that PYTHONPATH,
including fastvideo's spawned worker processes, which is where the model actually runs. Without
the env var, or where fastvideo is not installed, or where CUDA is available, it does nothing.

It patches four points lazily, right after the fastvideo module that defines each is imported
(importing fastvideo here would cost tens of seconds in every Python process):

- ``fastvideo.distributed.parallel_state.get_local_torch_device`` returns ``mps`` on any
  non-CUDA/NPU platform; it is imported by name into dozens of modules, so its code object is
  swapped to return ``cpu`` on the CPU platform;
- ``CpuPlatform`` has no attention backend ("Invalid attention backend for CPU"); it gets SDPA;
- the stages run the bf16 DiT under ``torch.autocast("cuda")`` with fp32 activations; without
  CUDA that autocast disables itself and the matmuls fail on mixed dtypes, so a ``cuda``
  autocast becomes a ``cpu`` autocast (CPU autocast supports bf16).
- with sequence parallel (several worker processes, a gloo world on the CPU) the pipeline
  warms its collectives up on "cuda" tensors; that warm-up is skipped.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_ENV = "VIDEOSERVE_FASTVIDEO_CPU_SHIM"
_SDPA_BACKEND = "fastvideo.attention.backends.sdpa.SDPABackend"


def _patch_parallel_state(module) -> None:
    original = module.get_local_torch_device
    if getattr(original, "_videoserve_cpu_shim", False):
        return
    import types

    # A copy of the original keeps CUDA/NPU behaviour reachable from the swapped code.
    module._videoserve_original_get_local_torch_device = types.FunctionType(
        original.__code__,
        original.__globals__,
        original.__name__,
        original.__defaults__,
        original.__closure__,
    )

    def get_local_torch_device():
        import torch
        from fastvideo.platforms import current_platform

        if current_platform.is_cpu():
            return torch.device("cpu")
        return _videoserve_original_get_local_torch_device()  # noqa: F821

    # Same function object, new body: every `from ... import get_local_torch_device` sees it.
    original.__code__ = get_local_torch_device.__code__
    original._videoserve_cpu_shim = True


def _patch_cpu_platform(module) -> None:
    platform_cls = module.CpuPlatform
    if getattr(platform_cls, "_videoserve_cpu_shim", False):
        return

    def get_attn_backend_cls(cls, selected_backend, head_size, dtype) -> str:
        return _SDPA_BACKEND

    platform_cls.get_attn_backend_cls = classmethod(get_attn_backend_cls)
    platform_cls._videoserve_cpu_shim = True


def _patch_autocast(_module) -> None:
    import torch

    if getattr(torch.autocast, "_videoserve_cpu_shim", False) or torch.cuda.is_available():
        return
    original = torch.autocast

    class autocast(original):  # noqa: N801 - stands in for torch.autocast
        _videoserve_cpu_shim = True

        def __init__(self, device_type, *args, **kwargs):
            if device_type == "cuda":
                device_type = "cpu"
            super().__init__(device_type, *args, **kwargs)

    torch.autocast = autocast


def _patch_sp_warmup(module) -> None:
    import torch

    if not torch.cuda.is_available():
        # The warm-up puts its tensors on "cuda" and synchronizes CUDA; on the CPU there is
        # nothing to warm up. The module skips it once this flag is set.
        module._sp_warmup_done = True


_HOOKS = {
    "fastvideo": _patch_autocast,
    "fastvideo.distributed.communication_op": _patch_sp_warmup,
    "fastvideo.distributed.parallel_state": _patch_parallel_state,
    "fastvideo.platforms.cpu": _patch_cpu_platform,
}


class _PostImportPatcher(importlib.abc.MetaPathFinder):
    """Runs a patch right after one of the named modules finishes executing."""

    def find_spec(self, fullname, path=None, target=None):
        hook = _HOOKS.get(fullname)
        if hook is None:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader_exec = spec.loader.exec_module

        def exec_module(module):
            loader_exec(module)
            hook(module)

        # An instance attribute keeps the loader's type (and get_data, get_source, ...) intact.
        spec.loader.exec_module = exec_module
        return spec


def _install() -> None:
    if os.environ.get(_ENV) != "1":
        return
    try:
        if importlib.util.find_spec("fastvideo") is None:
            return
    except (ImportError, ValueError):
        return
    if any(isinstance(f, _PostImportPatcher) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _PostImportPatcher())
    # Modules imported before this ran (unusual for sitecustomize) get patched right away.
    for name, hook in _HOOKS.items():
        module = sys.modules.get(name)
        if module is not None:
            hook(module)


try:
    _install()
except Exception as exc:  # a broken shim must not break every Python process
    print(f"videoserve fastvideo CPU shim not installed: {exc!r}", file=sys.stderr)
