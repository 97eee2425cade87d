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

A fastvideo upgrade should only touch this file: ``check_version`` refuses untested versions
unless ``VIDEOSERVE_FASTVIDEO_ANY_VERSION=1``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TESTED_VERSIONS = ("0.2.0",)
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
    steps_done: int = 0
    stage: str | None = None
    stages_seen: list[str] = field(default_factory=list)


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
            # Stages are otherwise created on the first forward; hooks need them now.
            self.worker.pipeline.post_init()

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

    class InProcessVideoGenerator(VideoGenerator):
        @classmethod
        def from_fastvideo_args(cls, fastvideo_args: Any, *, log_queue: Any = None) -> Any:
            return cls(fastvideo_args=fastvideo_args, executor_class=executor_class,
                       log_stats=False, log_queue=log_queue)

    return InProcessVideoGenerator.from_pretrained(model_path, **options)


def pipeline_of(generator: Any) -> Any:
    return generator.executor.worker.pipeline


class _StepBar:
    """Stands in for the tqdm a denoising stage creates: reports steps, stops cancelled jobs."""

    def __init__(self, hooks: RunHooks, total: int):
        self.hooks, self.total = hooks, int(total or 0)
        if hooks.should_stop():
            raise StopDenoising()
        # The model may run another number of steps than asked (DMD models have a fixed list).
        hooks.on_step(hooks.steps_done, self.total)

    def __enter__(self) -> _StepBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, n: int = 1) -> None:
        _wait_for_device()  # the step is done on the GPU, not only queued
        self.hooks.steps_done += n
        self.hooks.on_step(self.hooks.steps_done, self.total)
        if self.hooks.should_stop():
            raise StopDenoising()

    def close(self) -> None:
        return None


def _wait_for_device() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.current_stream().synchronize()


SDPA_BACKENDS = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION",
                 "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}


class Instrumented:
    """A loaded generator with hooks on its pipeline stages; ``hooks`` is set per job.

    ``sdpa_priority`` orders torch's dense attention kernels for every generation (cuDNN first
    is the fastest on an H100 for these head sizes); ``cudnn_benchmark`` autotunes the VAE's
    convolutions. Both only apply on CUDA; elsewhere they are logged and ignored.
    """

    def __init__(self, generator: Any, sdpa_priority: list[str] | None = None,
                 cudnn_benchmark: bool = False, vae_channels_last: bool = False):
        import torch

        self.generator = generator
        self.hooks: RunHooks | None = None
        self.sdpa_priority: list[Any] | None = None
        self.vae_channels_last = False
        for stage in pipeline_of(generator).stages:
            self._wrap(stage)
        cuda = torch.cuda.is_available()
        if (sdpa_priority or cudnn_benchmark or vae_channels_last) and not cuda:
            logging.getLogger(__name__).info(
                "sdpa_priority / cudnn_benchmark / vae_channels_last apply to CUDA only; "
                "ignored here")
            return
        if cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        if vae_channels_last:
            # cuDNN's channels-last 3-D convolutions use the tensor cores more fully than the
            # default layout; the decoder's weights and each latent chunk are converted once.
            self.vae_channels_last = True
            for stage in pipeline_of(generator).stages:
                if getattr(stage, "vae", None) is not None:
                    stage.vae.to(memory_format=torch.channels_last_3d)
        if sdpa_priority:
            from torch.nn.attention import SDPBackend

            self.sdpa_priority = [getattr(SDPBackend, SDPA_BACKENDS[name])
                                  for name in sdpa_priority]

    def _wrap(self, stage: Any) -> None:
        kind = next((STAGE_KINDS[c.__name__] for c in type(stage).__mro__
                     if c.__name__ in STAGE_KINDS), None)
        original = stage.forward

        def forward(batch: Any, fastvideo_args: Any) -> Any:
            hooks = self.hooks
            if hooks is not None and kind is not None:
                hooks.stage = kind
                hooks.stages_seen.append(kind)
                hooks.on_stage(kind)
            if kind == "decoding" and hooks is not None and hooks.frame_sink is not None:
                decoded = _stream_decode(stage, batch, fastvideo_args, hooks,
                                         self.vae_channels_last)
                if decoded is not None:
                    return decoded
            return original(batch, fastvideo_args)

        stage.forward = forward
        if kind == "denoising":
            stage.progress_bar = lambda iterable=None, total=None: _StepBar(self._require(),
                                                                            total)

    def _require(self) -> RunHooks:
        if self.hooks is None:
            return RunHooks(lambda _: None, lambda *_: None, lambda: False)
        return self.hooks

    def generate(self, hooks: RunHooks, **kwargs: Any) -> dict[str, Any]:
        """One ``generate_video`` call with ``hooks`` attached; StopDenoising when cancelled."""
        self.hooks = hooks
        try:
            with self._attention():
                return self.generator.generate_video(**kwargs)
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

    def shutdown(self) -> None:
        self.generator.shutdown()


def _stream_decode(stage: Any, batch: Any, fastvideo_args: Any, hooks: RunHooks,
                   channels_last: bool = False) -> Any | None:
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
