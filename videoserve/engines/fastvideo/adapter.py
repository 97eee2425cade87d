"""Every fastvideo internal the project relies on, pinned to fastvideo 0.2.0, in one place.

fastvideo's public ``VideoGenerator`` spawns a worker process and offers no step callback and no
cancel. Its constructor does accept any ``Executor``; this module supplies one that holds
fastvideo's own ``Worker`` (and so the pipeline) in the calling process, then reaches into the
pipeline's stages for three things the public API lacks:

- stage start events (text encoding, denoising, decoding), by wrapping each stage's ``forward``;
- per-step progress and cancel, through the denoising stages' ``progress_bar()`` (a tqdm they
  ``update()`` once per step): our stand-in reports the step and raises ``StopDenoising`` when
  the job was cancelled, so the latents are never decoded;
- frames that leave the GPU once, as uint8, chunk by chunk: the Wan VAE's causal
  ``streaming_decode`` replaces the one-shot decode, each chunk is handed to a ``FrameSink``
  (the MP4 encoder) while the next chunk decodes, and fastvideo's own float copy of the whole
  video to the host is skipped (``batch.output`` becomes an empty tensor).

With ``sp_size`` > 1 (sequence parallel: one video on several GPUs) the pipeline needs one
fastvideo ``Worker`` per GPU in a torch.distributed world, so fastvideo's own
``MultiprocExecutor`` runs it (``Distributed``): the same stage hooks are installed inside each
worker process through ``collective_rpc``, rank 0's progress and every rank's cancel flag travel
through a shared-memory ``ProgressChannel``, and the video comes back whole from fastvideo's
own decode.

A fastvideo upgrade should only touch this file: ``check_version`` refuses untested versions
unless ``VIDEOSERVE_FASTVIDEO_ANY_VERSION=1``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from videoserve.engines.fastvideo.options import TESTED_VERSIONS
from videoserve.engines.fastvideo.progress_channel import ProgressChannel

# Stage kinds reported to clients; stages of any other class report nothing.
STAGE_KINDS = {
    "TextEncodingStage": "encoding_prompt",
    "ImageEncodingStage": "encoding_image",
    "ImageVAEEncodingStage": "encoding_image",
    "DenoisingStage": "denoising",
    "DmdDenoisingStage": "denoising",
    "DecodingStage": "decoding",
}


class StopDenoising(Exception):
    """Raised from the hooks of a cancelled job: unwinds the pipeline at the next denoising step
    (so the latents are never decoded) or, if cancelled while decoding, at the next chunk."""


@dataclass
class RunHooks:
    """What one generation wants to hear about; set on the pipeline for the length of a job."""

    on_stage: Callable[[str], None]
    on_step: Callable[[int, int], None]
    should_stop: Callable[[], bool]
    # Called with each decoded chunk: a callable that waits for the host copy and returns a
    # (frames, height, width, 3) uint8 array. None keeps fastvideo's own decode.
    frame_sink: Callable[[Callable[[], Any]], None] | None = None
    # What a cancelled job raises from its hooks (fastvideo's worker processes survive only
    # KeyboardInterrupt; see Distributed).
    stop_error: type[BaseException] = StopDenoising
    steps_done: int = 0
    stage: str | None = None
    stages_seen: list[str] = field(default_factory=list)

    def enter_stage(self, kind: str) -> None:
        self.stage = kind
        self.stages_seen.append(kind)
        self.on_stage(kind)

    def step(self, done: int, total: int) -> None:
        self.steps_done = done
        self.on_step(done, total)


def _no_hooks() -> RunHooks:
    """For a pipeline run outside a job (nothing to report to, nothing to stop)."""
    return RunHooks(lambda _: None, lambda *_: None, lambda: False)


def check_version() -> str:
    from fastvideo.version import __version__

    if __version__ not in TESTED_VERSIONS and os.environ.get(
            "VIDEOSERVE_FASTVIDEO_ANY_VERSION") != "1":
        raise RuntimeError(
            f"fastvideo {__version__} is installed; this engine is tested with "
            f"{', '.join(TESTED_VERSIONS)} (set VIDEOSERVE_FASTVIDEO_ANY_VERSION=1 to try anyway)")
    return __version__


def _in_process_executor_class() -> type:
    from fastvideo.utils import get_distributed_init_method, get_loopback_ip, get_open_port
    from fastvideo.worker.executor import Executor
    from fastvideo.worker.gpu_worker import Worker

    class InProcessExecutor(Executor):
        """One fastvideo ``Worker`` in this process: no spawned worker, no SIGQUIT to us."""

        def _init_executor(self) -> None:
            method = get_distributed_init_method(get_loopback_ip(), get_open_port())
            self.worker = Worker(self.fastvideo_args, local_rank=0, rank=0,
                                 distributed_init_method=method)
            self.worker.init_device()

        def execute_forward(self, forward_batch: Any, fastvideo_args: Any) -> Any:
            return self.worker.execute_forward(forward_batch, fastvideo_args)

        def collective_rpc(self, method: Any, timeout: float | None = None, args: tuple = (),
                           kwargs: dict[str, Any] | None = None) -> list[Any]:
            call = getattr(self.worker, method) if isinstance(method, str) else (
                lambda *a, **k: method(self.worker, *a, **k))
            return [call(*args, **(kwargs or {}))]

        def set_lora_adapter(self, lora_nickname: str, lora_path: str | None = None,
                             strength: float = 1.0, accumulate: bool = False) -> None:
            self.worker.set_lora_adapter(lora_nickname, lora_path, strength, accumulate)

        def merge_lora_weights(self) -> None:
            self.worker.merge_lora_weights()

        def unmerge_lora_weights(self) -> None:
            self.worker.unmerge_lora_weights()

        def set_log_queue(self, log_queue: Any) -> None:
            pass  # logs already go to this process's handlers

        def clear_log_queue(self) -> None:
            pass

        def shutdown(self) -> None:
            self.worker.shutdown()

    return InProcessExecutor


class _ExpectedEmptyOutput(logging.Filter):
    """The streamed decode leaves an empty output on purpose; fastvideo warns about it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Output shape %s does not match")


def load_generator(model_path: str, options: dict[str, Any]) -> Any:
    """A ``VideoGenerator`` whose pipeline lives in this process (same options as
    ``VideoGenerator.from_pretrained``)."""
    check_version()
    from fastvideo import VideoGenerator

    logging.getLogger("fastvideo.entrypoints.video_generator").addFilter(_ExpectedEmptyOutput())

    executor_class = _in_process_executor_class()
    if options.get("dit_layerwise_offload"):
        pin_layers_in_one_block()

    class InProcessVideoGenerator(VideoGenerator):
        @classmethod
        def from_fastvideo_args(cls, fastvideo_args: Any, *, log_queue: Any = None) -> Any:
            return cls(fastvideo_args=fastvideo_args, executor_class=executor_class,
                       log_stats=False, log_queue=log_queue)

    return InProcessVideoGenerator.from_pretrained(model_path, **options)


# Host memory is laid out in blocks aligned to this many bytes (any dtype's element size).
HOST_ALIGN = 64


def pin_layers_in_one_block() -> None:
    """Make fastvideo's layerwise DiT offload keep each layer's weights in one page-locked
    host block of the layer's exact size.

    fastvideo copies every parameter to pageable memory and then pins it on its own
    (``param.to("cpu").pin_memory()``): about a thousand pinned allocations for the I2V-14B,
    each rounded up to a power of two by torch's pinned allocator, plus a pageable copy of all
    28 GB first; that was 54 s of the shared-GPU start (docs/BENCHMARKS.md). Here each layer's
    parameters are copied from the GPU straight into one host block, page-locked once with
    ``cudaHostRegister``; the per-parameter tensors fastvideo streams from are views of it, so
    its prefetch and release code is unchanged.
    """
    from fastvideo.hooks.layerwise_offload import LayerwiseOffloadState

    if getattr(LayerwiseOffloadState, "videoserve_blocks", False):
        return
    offload = LayerwiseOffloadState.on_init

    def on_init(state: Any, module: Any) -> None:
        try:
            host_block_for_layer(state, module)
        except (RuntimeError, AttributeError) as exc:  # registration refused or unavailable
            logging.getLogger(__name__).warning(
                "pinning a layer in one block failed (%s); fastvideo's own pinning is used", exc)
            offload(state, module)

    LayerwiseOffloadState.on_init = on_init
    LayerwiseOffloadState.videoserve_blocks = True


def host_block_for_layer(state: Any, module: Any, pin: bool = True) -> None:
    """``LayerwiseOffloadState.on_init`` with one host block per layer (``pin``: page-lock it;
    CUDA only)."""
    import torch
    from fastvideo.hooks.layerwise_offload import _tensor_placeholder

    state.module_ref = module
    params = [(name, p) for name, p in module.named_parameters() if state._will_offload(name)]
    if not params:
        return
    offsets, total = [], 0
    for _, param in params:
        offsets.append(total)
        total += -(-param.data.nbytes // HOST_ALIGN) * HOST_ALIGN
    # Registered for the life of the process; the views below keep the block alive.
    block = torch.empty(total, dtype=torch.uint8)
    if pin:
        block.fill_(0)  # fault the pages in with all threads before one thread locks them
        error = int(torch.cuda.cudart().cudaHostRegister(block.data_ptr(), total, 0))
        if error != 0:
            raise RuntimeError(f"cudaHostRegister failed with CUDA error {error}")
    for (name, param), offset in zip(params, offsets, strict=True):
        data = param.data.detach()
        host = block[offset:offset + data.nbytes].view(data.dtype).view(data.shape)
        host.copy_(data)
        state.cpu_named_parameters[name] = host
        param.data = _tensor_placeholder(data, state.device)


def pipeline_of(generator: Any) -> Any:
    return generator.executor.worker.pipeline


class _StepBar:
    """Stands in for the tqdm a denoising stage creates: reports steps, stops cancelled jobs."""

    def __init__(self, hooks: RunHooks, total: int):
        self.hooks, self.total = hooks, int(total or 0)
        if hooks.should_stop():
            raise hooks.stop_error()
        # The model may run another number of steps than asked (DMD models have a fixed list).
        hooks.step(hooks.steps_done, self.total)

    def __enter__(self) -> _StepBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, n: int = 1) -> None:
        _wait_for_device()  # the step is done on the GPU, not only queued
        self.hooks.step(self.hooks.steps_done + n, self.total)
        if self.hooks.should_stop():
            raise self.hooks.stop_error()

    def close(self) -> None:
        return None


def _wait_for_device() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.current_stream().synchronize()


SDPA_BACKENDS = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION",
                 "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}


def instrument(pipeline: Any, current: Callable[[], RunHooks | None]) -> None:
    """Wrap the pipeline's stages so they report to ``current()`` (the running job's hooks,
    None between jobs). Stages are created on the first forward: create them now."""
    pipeline.post_init()
    for stage in pipeline.stages:
        _wrap(stage, current)


def _wrap(stage: Any, current: Callable[[], RunHooks | None]) -> None:
    kind = next((STAGE_KINDS[c.__name__] for c in type(stage).__mro__
                 if c.__name__ in STAGE_KINDS), None)
    original = stage.forward

    def forward(batch: Any, fastvideo_args: Any) -> Any:
        hooks = current()
        if hooks is not None and kind is not None:
            hooks.enter_stage(kind)
        if kind == "decoding" and hooks is not None and hooks.frame_sink is not None:
            decoded = _stream_decode(stage, batch, fastvideo_args, hooks)
            if decoded is not None:
                return decoded
        return original(batch, fastvideo_args)

    stage.forward = forward
    if kind == "denoising":
        stage.progress_bar = lambda iterable=None, total=None: _StepBar(
            current() or _no_hooks(), total)


def attention_priority(sdpa_priority: list[str] | None, cudnn_benchmark: bool) -> list[Any] | None:
    """Apply ``cudnn_benchmark`` to this process; the SDPA backends in ``sdpa_priority``'s
    order (None: torch's default). Both apply on CUDA only; elsewhere they are ignored."""
    import torch

    if (sdpa_priority or cudnn_benchmark) and not torch.cuda.is_available():
        logging.getLogger(__name__).info(
            "sdpa_priority / cudnn_benchmark apply to CUDA only; ignored here")
        return None
    if cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if not sdpa_priority:
        return None
    from torch.nn.attention import SDPBackend

    return [getattr(SDPBackend, SDPA_BACKENDS[name]) for name in sdpa_priority]


def streamed_vaes(pipeline: Any) -> Iterator[tuple[Any, Any]]:
    """(stage, VAE) for each stage that decodes with a streamed VAE (``_stream_decode``)."""
    for stage in pipeline.stages:
        vae = getattr(stage, "vae", None)
        if vae is not None and hasattr(stage, "streaming_decode"):
            yield stage, vae


def channels_last_vae(pipeline: Any) -> None:
    """Decode in cuDNN's channels-last 3-D layout, which can feed the tensor cores more fully
    than the default one: the VAE's 3-D convolution weights are converted once, each latent
    chunk as it is decoded (``_stream_decode``). CUDA only; elsewhere ignored."""
    import torch

    if not torch.cuda.is_available():
        logging.getLogger(__name__).info("vae_channels_last applies to CUDA only; ignored here")
        return
    for stage, vae in streamed_vaes(pipeline):
        # Only the decoding half: an I2V's image encoding must stay as it is (its layout would
        # change the conditioning's rounding, which the DiT's steps then amplify).
        parts = [getattr(vae, name, None) for name in ("post_quant_conv", "decoder")]
        for module in (m for part in parts if part is not None for m in part.modules()):
            if isinstance(module, torch.nn.Conv3d):
                module.weight.data = module.weight.data.contiguous(
                    memory_format=torch.channels_last_3d)
        stage.videoserve_channels_last = True


# The module-level ContextVars through which fastvideo's Wan VAE hands its causal feature cache
# (and the chunk's position) from layer to layer inside the decoder.
WAN_DECODER_CONTEXT = ("is_first_frame", "feat_cache", "feat_idx", "first_chunk",
                       "use_light_vae")


class _Slot:
    """Stands in for one of those ContextVars during a compiled decoder call: torch.compile
    cannot trace ``ContextVar.set()`` (a graph break), a plain attribute it can."""

    def __init__(self) -> None:
        self.value: Any = None

    def get(self) -> Any:
        return self.value

    def set(self, value: Any) -> None:
        self.value = value


# One set for the process: compiled code guards on the identity of the globals it read, so
# every call (and every decoder) must find the same slots there.
_SLOTS = {name: _Slot() for name in WAN_DECODER_CONTEXT}


# The temporal upsampler (``Resample``, mode ``upsample3d``) keeps the string "Rep" in the
# causal cache as a placeholder and compares each entry with it (``entry != "Rep"``). For a
# tensor entry that is ``Tensor.__ne__(str)``, which returns NotImplemented; torch 2.11's
# dynamo cannot trace that, and the graph break inside the decoder's loop over its up blocks
# sends the whole decoder back to per-block graphs (seen on an H100: decode 1.58 s instead of
# 1.18 s). An entry is None, "Rep" or a tensor, so a type test says the same thing.
_REP_TESTS = (('_feat_cache[idx] != "Rep"', 'not isinstance(_feat_cache[idx], str)'),
              ('_feat_cache[idx] == "Rep"', 'isinstance(_feat_cache[idx], str)'))


def traceable_upsampler_forward(module: Any) -> Callable[..., Any] | None:
    """``Resample.forward`` of fastvideo's Wan VAE with its "Rep" comparisons written as type
    tests, compiled in the wanvae module's namespace (so it reads the same globals, swapped
    ones too); None if the source does not have them (another fastvideo version)."""
    import inspect
    import textwrap

    function = type(module).forward
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        return None
    if not all(old in source for old, _ in _REP_TESTS):
        return None
    for old, new in _REP_TESTS:
        source = source.replace(old, new)
    namespace: dict[str, Any] = {}
    globals_ = sys.modules[function.__module__].__dict__
    exec(compile(source, inspect.getsourcefile(function) or "<wanvae>", "exec"),  # noqa: S102
         globals_, namespace)
    return namespace[function.__name__]


class CompiledDecoder:
    """A Wan VAE decoder's ``forward``, torch.compile'd for given video sizes; installed as the
    decoder's ``forward``, so the VAE's own decode loops call it unchanged.

    The decoder runs once per latent frame and passes its causal cache between layers through
    module-level ContextVars. Compiled as it is, each ``ContextVar.set()`` breaks the graph,
    and the resumed frames of every residual block (one code object for all of them) exceed
    the recompile limit. So for the length of a compiled call those module globals point at
    ``_Slot``s holding the same values: the whole decoder is one graph, with no graph breaks,
    compiled anew only while the cache fills (the first latent frames find it empty, then
    partly filled, then a compiled graph's own outputs: three graphs for a frame size, on a
    CPU and on an H100), then none. The temporal upsamplers run a traceable copy of their
    forward (``traceable_upsampler_forward``). After the call the context gets
    what the eager forward would have left there. ``dynamic=False``: exact shapes, never
    dynamic-shape kernels.

    Compiled per video size: ``sizes``, [height, width] pairs (None: the first size it
    decodes). Other sizes run the eager forward, so a request at one waits for no compile; the
    engine's warm-up at load decodes each compiled size once and pays for its compile (about
    70 s a size for FastWan's VAE on an H100). After a size's first video, a call that would
    need a new graph (a state that video did not meet) runs eagerly instead
    (``eager_on_recompile``): no request compiles. One decode at a time: the module globals
    are swapped for the whole process.
    """

    # Graphs one size may need: three were seen (one per cache state), the rest is room.
    # Dynamo's recompile limit counts the graphs of one code object (the decoder's forward, for
    # all sizes); past it the decoder would run eagerly for good.
    GRAPHS_PER_SIZE = 8

    def __init__(self, decoder: Any, backend: str = "inductor",
                 sizes: list[Any] | None = None):
        import types

        import torch
        import torch._dynamo

        self.module = sys.modules[type(decoder).__module__]
        upsamplers = [m for m in decoder.modules() if getattr(m, "mode", None) == "upsample3d"]
        forward = traceable_upsampler_forward(upsamplers[0]) if upsamplers else None
        if upsamplers and forward is None:
            logging.getLogger(__name__).info(
                "vae_compile: this fastvideo's Wan upsampler has no \"Rep\" comparisons to "
                "rewrite; it is compiled as it is (it may split the decoder's graph)")
        for module in upsamplers if forward else ():
            module.forward = types.MethodType(forward, module)
        self.context = {name: getattr(self.module, name) for name in WAN_DECODER_CONTEXT}
        self.eager = decoder.forward
        self.compiled = torch.compile(self.eager, backend=backend, dynamic=False)
        self.torch = torch
        # Video pixels per latent pixel: each up block but the last doubles height and width.
        self.scale = 2 ** (len(decoder.up_blocks) - 1)
        self.sizes = {tuple(size) for size in sizes} if sizes else None
        self.decoded: set[tuple[int, int]] = set()  # sizes with a video decoded
        self.frozen: set[tuple[int, int]] = set()  # sizes that compile no more
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit,
                                     self.GRAPHS_PER_SIZE * len(self.sizes or [None]))

    @staticmethod
    def supports(decoder: Any) -> bool:
        """True for a decoder of fastvideo's Wan VAE (the ContextVars this class replaces)."""
        import contextvars

        module = sys.modules.get(type(decoder).__module__)
        return decoder is not None and all(
            isinstance(getattr(module, name, None), contextvars.ContextVar)
            for name in WAN_DECODER_CONTEXT)

    def __call__(self, x: Any) -> Any:
        size = (x.shape[-2] * self.scale, x.shape[-1] * self.scale)
        if self.sizes is None:
            self.sizes = {size}
        if size not in self.sizes:
            return self.eager(x)
        if self.context["first_chunk"].get():  # a video's first latent frame
            if size in self.decoded:
                # Its first video (the warm-up's) compiled what it met; from the next one on,
                # whatever it did not meet runs eagerly rather than make a request compile.
                self.frozen.add(size)
            self.decoded.add(size)
        stance = "eager_on_recompile" if size in self.frozen else "default"
        for name, var in self.context.items():
            _SLOTS[name].value = var.get()
            setattr(self.module, name, _SLOTS[name])
        try:
            with self.torch.compiler.set_stance(stance):
                return self.compiled(x)
        finally:
            for name, var in self.context.items():
                setattr(self.module, name, var)
            # The cache list (updated in place) and the index past the decoder's last causal
            # convolution, as the eager forward leaves them.
            self.context["feat_cache"].set(_SLOTS["feat_cache"].value)
            self.context["feat_idx"].set(_SLOTS["feat_idx"].value)
            for slot in _SLOTS.values():
                slot.value = None


def compile_vae(pipeline: Any, sizes: list[Any] | None = None) -> None:
    """torch.compile the Wan VAE's decoder used by the streamed decode (``CompiledDecoder``)
    for these video sizes; the engine's warm-up at load decodes them and pays for the
    compiles. CUDA only; elsewhere ignored."""
    import torch

    log = logging.getLogger(__name__)
    if not torch.cuda.is_available():
        log.info("vae_compile applies to CUDA only; ignored here")
        return
    for _, vae in streamed_vaes(pipeline):
        decoder = getattr(vae, "decoder", None)
        if not CompiledDecoder.supports(decoder):
            log.info("vae_compile: %s is not a Wan VAE decoder; ignored", type(decoder).__name__)
        elif not isinstance(decoder.forward, CompiledDecoder):
            decoder.forward = CompiledDecoder(decoder, sizes=sizes)


def dit_levers(pipeline: Any, fp8: bool, step_cache: float, compile_precise: bool) -> Any:
    """Apply the DiT speed levers of ``fastvideo_dit`` to the pipeline's transformer (CUDA
    only; elsewhere logged and ignored); returns the step cache, if one was installed."""
    import torch

    log = logging.getLogger(__name__)
    if not (fp8 or step_cache or compile_precise):
        return None
    if not torch.cuda.is_available():
        log.info("dit_fp8 / step_cache / compile_precise apply to CUDA only; ignored here")
        return None
    from videoserve.engines.fastvideo import dit as fastvideo_dit

    if compile_precise:
        fastvideo_dit.precise_compile()
    transformer = pipeline.get_module("transformer")
    if fp8:
        count = fastvideo_dit.fp8_linears(transformer)
        log.info("dit_fp8: %d linear layers of the DiT in FP8 (per-row scales)", count)
    if not step_cache:
        return None
    log.info("step_cache: threshold %s", step_cache)
    return fastvideo_dit.StepCache(transformer.blocks, float(step_cache),
                                   fastvideo_dit.forward_context)


class Instrumented:
    """A loaded generator with hooks on its pipeline stages; ``hooks`` is set per job.

    ``sdpa_priority`` orders torch's dense attention kernels for every generation (cuDNN first
    is the fastest on an H100 for these head sizes); ``cudnn_benchmark`` autotunes the VAE's
    convolutions; ``vae_channels_last`` and ``vae_compile`` speed up the streamed decode. All
    only apply on CUDA; elsewhere they are logged and ignored.
    """

    def __init__(self, generator: Any, sdpa_priority: list[str] | None = None,
                 cudnn_benchmark: bool = False, vae_channels_last: bool = False,
                 vae_compile: bool | list[list[int]] = False, dit_fp8: bool = False,
                 step_cache: float = 0.0, compile_precise: bool = False):
        self.generator = generator
        self.hooks: RunHooks | None = None
        self.loras: Any = None  # a LoraMerger once a job asked for LoRAs
        self._latents: Any = None  # the DiT's latest input latents (live previews)
        instrument(pipeline_of(generator), lambda: self.hooks)
        self._capture_latents(pipeline_of(generator).get_module("transformer"))
        self.sdpa_priority = attention_priority(sdpa_priority, cudnn_benchmark)
        self.step_cache = dit_levers(pipeline_of(generator), dit_fp8, step_cache,
                                     compile_precise)
        if vae_channels_last:
            channels_last_vae(pipeline_of(generator))
        if vae_compile:
            # The [height, width] sizes to compile (the engine passes a list; True: the first
            # size decoded).
            compile_vae(pipeline_of(generator), sizes=None if vae_compile is True else vae_compile)

    def generate(self, hooks: RunHooks, **kwargs: Any) -> dict[str, Any]:
        """One ``generate_video`` call with ``hooks`` attached; StopDenoising when cancelled."""
        self.hooks = hooks
        if self.step_cache is not None:
            self.step_cache.start(int(kwargs.get("num_inference_steps") or 0) or None)
        try:
            with self._attention():
                result = self.generator.generate_video(**kwargs)
            if self.step_cache is not None:
                logging.getLogger(__name__).info(
                    "step cache: %d of %d steps skipped the DiT's blocks",
                    self.step_cache.skipped, self.step_cache.skipped + self.step_cache.computed)
            return result
        except RuntimeError as exc:
            # VideoGenerator runs the pipeline in a thread and re-raises its error wrapped.
            if isinstance(exc.__cause__, StopDenoising):
                raise StopDenoising() from None
            raise
        finally:
            self.hooks = None

    def _attention(self) -> Any:
        import contextlib

        if self.sdpa_priority is None:
            return contextlib.nullcontext()
        from torch.nn.attention import sdpa_kernel

        # The pipeline runs in a thread of VideoGenerator's; the priority order is global to
        # the process, so setting it around the call covers that thread.
        return sdpa_kernel(self.sdpa_priority, set_priority=True)

    def _capture_latents(self, transformer: Any) -> None:
        """Keep a reference to each DiT call's input latents (no copy): the step hook turns the
        latest into a live preview. The DiT's input is what every denoising stage has, the
        DMD one included, where no scheduler step exists to hook."""

        def keep(module: Any, args: tuple, kwargs: dict) -> None:
            latents = kwargs.get("hidden_states", args[0] if args else None)
            if latents is not None and getattr(latents, "dim", lambda: 0)() == 5:
                self._latents = latents

        transformer.register_forward_pre_hook(keep, with_kwargs=True)

    def latest_latents(self) -> Any:
        return self._latents

    def apply_loras(self, loras: list[dict[str, Any]]) -> float | None:
        """Merge the job's LoRAs into the DiT, taking out the previous job's (see
        ``videoserve.engines.lora``); the seconds it took, None when nothing changed."""
        if self.loras is None:
            if not loras:
                return None
            from videoserve.engines.lora import LoraMerger, renamed

            transformer = pipeline_of(self.generator).get_module("transformer")
            # fastvideo names the DiT's parameters its own way; LoRAs name diffusers' layers.
            mapping = getattr(transformer, "param_names_mapping", None) or {}
            self.loras = LoraMerger(transformer, renamed(mapping))
        from videoserve.engines.base import LoraFile

        return self.loras.apply([LoraFile(**lora) for lora in loras])

    def usable(self) -> bool:
        """After a failed job: can the next job use this pipeline?"""
        return pipeline_usable()

    def steps_skipped(self) -> int | None:
        """Denoising steps of the last generation the step cache skipped (None: no cache)."""
        return None if self.step_cache is None else self.step_cache.skipped

    def peak_gib(self, result: dict[str, Any]) -> float | None:
        return peak_memory_gib(reset=True)

    def worker_pids(self) -> list[int]:
        return []  # the pipeline runs in this process

    def shutdown(self) -> None:
        self.generator.shutdown()


# Several GPUs for one video: fastvideo's MultiprocExecutor, our hooks inside its workers.

# Event kinds on the progress channel; a stage event carries the index of its name.
_STAGE_EVENT, _STEP_EVENT = 1, 2
_STAGE_NAMES = ("encoding_prompt", "encoding_image", "denoising", "decoding")
# How often the driving process relays rank 0's progress and passes a cancel on to the ranks.
RELAY_POLL_S = 0.005


class _StopWorkers(KeyboardInterrupt):
    """A cancelled job, inside a fastvideo worker process. Its busy loop ends the process on
    any exception but KeyboardInterrupt, which it answers with an error reply and survives."""


class _WorkerHooks:
    """In each worker process: the hooks of the job the channel names."""

    def __init__(self, rank: int, channel: ProgressChannel):
        self.rank, self.channel = rank, channel
        self.job = -1
        self.hooks: RunHooks | None = None
        self.attention: Any = None  # an entered sdpa_kernel context, kept alive

    def current(self) -> RunHooks:
        # The driver numbers the job in the channel before it starts it, so a new number here
        # means a new job (fresh step count).
        job = self.channel.job
        if self.hooks is None or job != self.job:
            self.job = job
            self.hooks = RunHooks(self._stage, self._step, self._should_stop,
                                  stop_error=_StopWorkers)
        return self.hooks

    def _stage(self, kind: str) -> None:
        if self.rank == 0:
            self.channel.push(_STAGE_EVENT, _STAGE_NAMES.index(kind))

    def _step(self, done: int, total: int) -> None:
        if self.rank == 0:
            self.channel.push(_STEP_EVENT, done, total)

    def _should_stop(self) -> bool:
        return _agree(self.channel.cancel_requested(self.job))


def _agree(flag: bool) -> bool:
    """True on every rank if it is True on any. The ranks run collectives in lockstep: one
    that stopped alone would leave the others waiting in the next one forever."""
    import torch
    import torch.distributed as dist
    from fastvideo.distributed.parallel_state import get_world_group

    world = get_world_group()
    if world.world_size == 1:
        return flag
    # NCCL (the world's device group on CUDA) reduces GPU tensors only; elsewhere use gloo.
    cuda = torch.cuda.is_available()
    vote = torch.tensor([int(flag)], dtype=torch.int32, device=world.device if cuda else "cpu")
    dist.all_reduce(vote, op=dist.ReduceOp.MAX,
                    group=world.device_group if cuda else world.cpu_group)
    return bool(vote.item())


_WORKER_HOOKS: _WorkerHooks | None = None  # the hooks of this worker process, if it is one


def install_worker_hooks(worker: Any, channel_name: str, runtime: dict[str, Any]) -> int:
    """Runs in every fastvideo worker process, through ``collective_rpc`` (so it must stay a
    module-level function: it travels by reference). ``worker`` is fastvideo's worker
    wrapper; its pipeline's stages report to the channel from now on. Returns the pid."""
    global _WORKER_HOOKS
    import atexit

    channel = ProgressChannel.attach(channel_name)
    # Detach before interpreter teardown, which would otherwise find the mapping still viewed.
    atexit.register(channel.close)
    hooks = _WorkerHooks(int(worker.rank), channel)
    instrument(worker.pipeline, hooks.current)
    priority = attention_priority(runtime.get("sdpa_priority"),
                                  bool(runtime.get("cudnn_benchmark")))
    if priority is not None:
        from torch.nn.attention import sdpa_kernel

        # The process runs nothing but this pipeline: keep the order for its whole life.
        hooks.attention = sdpa_kernel(priority, set_priority=True)
        hooks.attention.__enter__()
    _WORKER_HOOKS = hooks
    return os.getpid()


def _survive_worker_failures() -> None:
    """A fastvideo worker that fails sends SIGQUIT to its parent (this process), whose default
    action is to dump core and exit. Ignore it here: ``Distributed`` notices the worker's exit
    itself and reports the job as failed, and the next job loads a fresh pipeline."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGQUIT, lambda *_: None)
    else:
        logging.getLogger(__name__).warning(
            "not the main thread: a failing fastvideo worker will end this process")


class Distributed:
    """A generator whose pipeline runs in fastvideo's worker processes, one per GPU (sequence
    parallel over ``sp_size`` GPUs), with the hooks of ``Instrumented`` installed in each.

    ``generate`` runs ``generate_video`` in a thread and meanwhile relays rank 0's progress to
    the job's hooks and passes a cancel on through the channel. Every rank stops at the same
    step (``_agree``) by raising ``_StopWorkers``; the workers answer the call with an error
    and keep serving, and the caller sees ``StopDenoising``. The video is decoded by fastvideo
    itself and comes back whole (no streamed decode).
    """

    def __init__(self, generator: Any, channel: ProgressChannel):
        self.generator, self.channel = generator, channel
        self.workers = list(generator.executor.workers)

    @classmethod
    def load(cls, model_path: str, options: dict[str, Any], sdpa_priority: list[str] | None = None,
             cudnn_benchmark: bool = False, vae_channels_last: bool = False,
             vae_compile: bool | list[list[int]] = False, dit_fp8: bool = False,
             step_cache: float = 0.0, compile_precise: bool = False) -> Distributed:
        check_version()
        # The workers decode with fastvideo's own one-shot decode, not the streamed one; the
        # DiT levers are applied in this process's pipeline only (a step cache would need the
        # ranks to agree on each skip).
        for name, on in (("vae_channels_last", vae_channels_last), ("vae_compile", vae_compile),
                         ("dit_fp8", dit_fp8), ("step_cache", step_cache),
                         ("compile_precise", compile_precise)):
            if on:
                logging.getLogger(__name__).info("%s is not used with sp_size > 1", name)
        from fastvideo import VideoGenerator

        _survive_worker_failures()
        channel = ProgressChannel.create()
        try:
            # Workers are spawned: they get this process's sys.path, so they import videoserve
            # (and install_worker_hooks, which travels by reference) as this process does.
            generator = VideoGenerator.from_pretrained(
                model_path, distributed_executor_backend="mp", **options)
        except BaseException:
            channel.close()
            raise
        runner = cls(generator, channel)
        runtime = {"sdpa_priority": sdpa_priority, "cudnn_benchmark": cudnn_benchmark}
        try:
            generator.executor.collective_rpc(install_worker_hooks, args=(channel.name, runtime))
        except BaseException as exc:
            runner.shutdown()
            # A failing worker exits, so the pipe's EOFError is all that reaches us here.
            raise RuntimeError("a fastvideo worker failed while setting up progress hooks (its "
                               "traceback is in the log)") from exc
        return runner

    def generate(self, hooks: RunHooks, **kwargs: Any) -> dict[str, Any]:
        """One ``generate_video`` call followed through the channel; StopDenoising when
        cancelled (also while decoding: the result is then dropped)."""
        job = self.channel.begin_job()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = self.generator.generate_video(**kwargs)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                outcome["error"] = exc

        # A daemon thread: after a worker died the call may never return (another rank waits
        # in a collective), and this process must still be able to exit.
        thread = threading.Thread(target=run, name="fastvideo-generate", daemon=True)
        thread.start()
        cancelled = False
        while thread.is_alive():
            thread.join(RELAY_POLL_S)
            self._relay(hooks)
            if not cancelled and hooks.should_stop():
                cancelled = True
                self.channel.request_cancel(job)
            if thread.is_alive() and not self._workers_alive():
                raise RuntimeError("a fastvideo worker process exited during the generation")
        self._relay(hooks)
        error = outcome.get("error")
        if cancelled and (error is None or self._workers_alive()):
            raise StopDenoising()
        if isinstance(error, RuntimeError) and isinstance(error.__cause__, (EOFError, OSError)):
            # A worker that fails exits; its closed pipe is all that reaches this process.
            raise RuntimeError("a fastvideo worker process failed (its traceback is in the "
                               "log)") from error
        if error is not None:
            raise error
        return outcome["result"]

    latest_latents = None  # the DiT runs in fastvideo's workers: no live previews

    @staticmethod
    def apply_loras(loras: list[dict[str, Any]]) -> float | None:
        if loras:
            # The DiT lives in fastvideo's worker processes, one shard per GPU.
            raise ValueError("LoRAs are not supported with sp_size > 1 yet")
        return None

    def _relay(self, hooks: RunHooks) -> None:
        for kind, a, b in self.channel.drain():
            if kind == _STAGE_EVENT:
                hooks.enter_stage(_STAGE_NAMES[a])
            elif kind == _STEP_EVENT:
                hooks.step(a, b)

    def _workers_alive(self) -> bool:
        return all(worker.proc.is_alive() for worker in self.workers)

    def usable(self) -> bool:
        """False after any failure: a worker's busy loop ends its process on every exception
        but KeyboardInterrupt, and the other ranks may be stuck in a collective."""
        return False

    def peak_gib(self, result: dict[str, Any]) -> float | None:
        peak = result.get("peak_memory_mb")  # rank 0's, measured by fastvideo's worker
        return round(peak / 1024, 2) if peak else None

    def worker_pids(self) -> list[int]:
        return [worker.proc.pid for worker in self.workers]

    def steps_skipped(self) -> int | None:
        return None  # no step cache with sp_size > 1

    def shutdown(self) -> None:
        try:
            self.generator.shutdown()
        finally:
            for worker in self.workers:
                if worker.proc.is_alive():
                    worker.proc.kill()  # one stuck in a collective ignores SIGTERM
                worker.proc.join(timeout=10)
            self.channel.close()


def load_runner(model_path: str, options: dict[str, Any], executor: str = "in_process",
                timings: dict[str, float] | None = None, hub_id: str | None = None,
                **runtime: Any) -> Instrumented | Distributed:
    """The pipeline in this process (``in_process``) or in fastvideo's worker processes
    (``multiproc``: required for sp_size > 1). ``timings`` receives where the load's time
    went (see ``timed_load``); ``hub_id``: the Hub id the ``model_path`` folder was fetched as
    (see ``register_hub_folder``)."""
    if executor not in ("in_process", "multiproc"):
        raise ValueError(f"unknown executor {executor!r}; expected in_process or multiproc")
    with timed_load(timings if timings is not None else {}):
        register_hub_folder(model_path, hub_id)
        if executor == "multiproc":
            return Distributed.load(model_path, options, **runtime)
        return Instrumented(load_generator(model_path, options), **runtime)


def register_hub_folder(folder: str, hub_id: str | None) -> str | None:
    """Give a Hub snapshot folder the pipeline config fastvideo registered for its Hub id.

    fastvideo picks a model's pipeline config (flow shift, precisions, resolution presets) by
    its name (registry.py ``_get_config_info``): the exact Hub id, else the id's last part,
    else detectors on the path and on model_index.json's class name. A snapshot folder of the
    Hugging Face cache ends in a commit hash, so a model the backend fetched would be left to
    the detectors, which for some ids pick another config (Wan2.1-T2V-14B's folder would get
    the 480P one). The folder is mapped to the id's entry, as fastvideo's own partial match
    would map it (longest registered id first); the config is chosen in this process (the
    one calling ``from_pretrained``). Returns the id whose entry it got, None if none."""
    if not hub_id:
        return None
    from fastvideo import registry

    names: dict[str, str] = registry._MODEL_HF_PATH_TO_NAME
    short = hub_id.lower().rsplit("/", 1)[-1]
    for known in [hub_id, *sorted(names, key=len, reverse=True)]:
        if known in names and (known == hub_id or known.lower().rsplit("/", 1)[-1] == short):
            names.setdefault(folder, names[known])
            return known
    return None


@contextlib.contextmanager
def timed_load(timings: dict[str, float]) -> Iterator[None]:
    """Record the seconds spent importing fastvideo (``import_s``) and loading each pipeline
    module in this process (``module:<name>``, e.g. ``module:transformer``): a slow start is
    then read per part instead of guessed. With ``sp_size`` > 1 the modules load in the
    workers, so only the import is recorded here."""
    begin = time.perf_counter()
    import fastvideo  # noqa: F401 - the import is what is timed
    from fastvideo.models.loader.component_loader import PipelineComponentLoader

    timings["import_s"] = round(time.perf_counter() - begin, 2)
    original = PipelineComponentLoader.__dict__["load_module"]
    load = original.__func__

    def load_module(*args: Any, **kwargs: Any) -> Any:
        name = kwargs.get("module_name", args[0] if args else "?")
        start = time.perf_counter()
        try:
            return load(*args, **kwargs)
        finally:
            key = f"module:{name}"
            timings[key] = round(timings.get(key, 0.0) + time.perf_counter() - start, 2)

    PipelineComponentLoader.load_module = staticmethod(load_module)
    try:
        yield
    finally:
        PipelineComponentLoader.load_module = original


def _stream_decode(stage: Any, batch: Any, fastvideo_args: Any, hooks: RunHooks) -> Any | None:
    """Decode latent frame by latent frame into the hooks' frame sink (stopping between chunks
    when cancelled); None where only fastvideo's full decode works."""
    import torch

    vae = getattr(stage, "vae", None)
    plain = (fastvideo_args.output_type != "latent" and not batch.return_trajectory_decoded
             and fastvideo_args.model_loaded.get("vae", False)
             and hasattr(vae, "streaming_decode") and batch.latents is not None
             and batch.latents.shape[0] == 1
             and not getattr(batch, "num_cond_frames_added", 0))
    if not plain:
        return None
    latents = batch.latents
    channels_last = getattr(stage, "videoserve_channels_last", False)  # channels_last_vae()
    cache = None
    with torch.no_grad():
        for index in range(latents.shape[2]):
            chunk = latents[:, :, index:index + 1]
            if channels_last:
                chunk = chunk.contiguous(memory_format=torch.channels_last_3d)
            image, cache = stage.streaming_decode(chunk, fastvideo_args, cache,
                                                  is_first_chunk=index == 0)
            hooks.frame_sink(_to_host(image))
            if hooks.should_stop():
                raise StopDenoising()
    _, _, _, height, width = image.shape
    # The frames went to the sink; an empty output makes fastvideo's post-processing a no-op
    # instead of a float copy of the whole video to the host.
    batch.output = torch.empty((1, 3, 0, height, width), dtype=torch.float32)
    if fastvideo_args.vae_cpu_offload:
        stage.vae.to("cpu")
    return batch


def _to_host(image: Any) -> Callable[[], Any]:
    """Start copying one decoded chunk to the host as uint8; return a waiter for the array."""
    import torch

    # Same rounding as fastvideo's post-processing ((x * 255) truncated), so frames match it.
    frames = (image[0] * 255).to(torch.uint8).permute(1, 2, 3, 0).contiguous()
    if frames.device.type != "cuda":
        array = frames.numpy()
        return lambda: array
    host = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(frames, non_blocking=True)
    done = torch.cuda.Event()
    done.record()

    def wait() -> Any:
        done.synchronize()
        return host.numpy()

    return wait


def pipeline_usable() -> bool:
    """After a failed job: can this process still run the pipeline? (False after CUDA faults.)"""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
            (torch.ones(8, device="cuda") * 2).sum().item()
        return True
    except Exception:  # noqa: BLE001 - any failure here means the context is gone
        return False


def peak_memory_gib(reset: bool = False) -> float | None:
    """Peak GPU memory allocated since the last reset (None without CUDA)."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    peak = torch.cuda.max_memory_allocated() / 2**30
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return round(peak, 2)
