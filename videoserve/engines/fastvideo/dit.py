"""Speed levers on fastvideo 0.2.0's Wan DiT, applied to a loaded pipeline in the engine's own
process: FP8 matmuls for the blocks' big linear layers, a step cache that skips the blocks when
their input barely changed since the last computed step, and compiled code that rounds as eager
code does.

Each changes the frames a little; docs/BENCHMARKS.md has their speed and PSNR against the noise
floor of two exact attention kernels, and which speed mode turns them on
(``videoserve.core.config.SPEED_LEVERS``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

FP8_MAX = 448.0  # largest finite float8_e4m3fn
# Linear layers of a block that see the video's tokens (32,760 at 480x832x81). Those that see
# only the text (512 tokens) or image (257) context gain nothing and would only add error.
FP8_LAYERS = ("to_q", "to_k", "to_v", "to_out", "attn2.to_q", "attn2.to_out",
              "ffn.fc_in", "ffn.fc_out")


def quantize_rows(x: Any) -> tuple[Any, Any]:
    """``x`` (rows x k) as float8_e4m3fn with one float32 scale per row (rows x 1)."""
    import torch

    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / FP8_MAX
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def fp8_linear(x: Any, weight: Any, weight_scale: Any, bias: Any | None) -> Any:
    """``F.linear(x, W, bias)`` with W given as per-row FP8 (``quantize_rows``) and x quantized
    per token on the fly: torch's row-wise scaled matmul on CUDA, the same arithmetic in
    float32 elsewhere (tests)."""
    import torch

    shape = x.shape
    rows = x.reshape(-1, shape[-1])
    # Autocast would hand bf16 or fp32 here; the output keeps the bf16 of the DiT's activations.
    out_dtype = torch.bfloat16
    xq, x_scale = quantize_rows(rows)
    if rows.is_cuda:
        out = torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=weight_scale.t(),
                               bias=None if bias is None else bias.to(out_dtype),
                               out_dtype=out_dtype)
    else:
        out = (xq.float() * x_scale) @ (weight.float() * weight_scale).t()
        out = (out if bias is None else out + bias.float()).to(out_dtype)
    return out.reshape(*shape[:-1], weight.shape[0])


class _Fp8Method:
    """Stands in for fastvideo's ``UnquantizedLinearMethod`` on a ``ReplicatedLinear`` whose
    weight was turned into FP8 (``layer.weight`` float8, ``layer.weight_scale`` per row)."""

    def apply(self, layer: Any, x: Any, bias: Any | None = None) -> Any:
        import torch

        with torch.autocast(device_type=x.device.type, enabled=False):
            return fp8_linear(x, layer.weight, layer.weight_scale, bias)


def fp8_linears(transformer: Any) -> int:
    """Quantize the DiT blocks' big linear layers (``FP8_LAYERS``) to FP8 with per-row scales,
    in place; returns how many. Halves their weights' memory."""
    import torch

    count = 0
    method = _Fp8Method()
    for name, module in transformer.named_modules():
        if not _fp8_target(name, module):
            continue
        weight, scale = quantize_rows(module.weight.data)
        module.weight = torch.nn.Parameter(weight, requires_grad=False)
        module.register_buffer("weight_scale", scale, persistent=False)
        module.quant_method = method
        count += 1
    return count


def _fp8_target(name: str, module: Any) -> bool:
    if not name.startswith("blocks.") or not hasattr(module, "quant_method"):
        return False
    rest = name.split(".", 2)[-1]
    weight = getattr(module, "weight", None)
    # The scaled matmul needs both sizes divisible by 16.
    return (rest in FP8_LAYERS and weight is not None and weight.dim() == 2
            and weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0)


def precise_compile() -> None:
    """Make inductor round intermediate results to their dtype where eager code does (bf16 after
    each op), instead of keeping fused intermediates in float32: compiled frames then stay as
    close to eager ones as another attention kernel's."""
    import torch._inductor.config as inductor

    inductor.emulate_precision_casts = True


class StepCache:
    """A first-block step cache (in the style of TeaCache and FBCache) on a Wan DiT.

    At each denoising step the first block runs; the relative change of its residual
    (output - input) since the previous step is accumulated, and while the sum stays under
    ``threshold`` the other blocks are skipped: the output of the last block is the first
    block's output plus the residual the other blocks added at the last step they ran. The sum
    restarts at every computed step. The first ``keep_first`` steps and the last step always
    run all blocks. Conditional and unconditional (CFG) passes keep residuals of their own and
    follow the decision taken by the step's first pass, so they stay in step.

    ``context`` gives (step index, is the unconditional pass) for the current DiT call.
    """

    def __init__(self, blocks: Any, threshold: float, context: Callable[[], tuple[int, bool]],
                 keep_first: int = 2):
        if len(blocks) < 2:
            raise ValueError("a step cache needs a DiT of at least two blocks")
        self.threshold, self.context, self.keep_first = float(threshold), context, keep_first
        self.total_steps: int | None = None
        self.computed = self.skipped = 0
        self._branches: dict[bool, dict[str, Any]] = {}
        self._step, self._skip, self._acc = -1, False, 0.0
        self._first_out: Any = None
        blocks = list(blocks)
        self._wrap_first(blocks[0])
        for block in blocks[1:-1]:
            self._wrap_middle(block)
        self._wrap_last(blocks[-1])

    def start(self, total_steps: int) -> None:
        """Before each generation: forget the last one's residuals and counts."""
        self.total_steps, self.computed, self.skipped = total_steps, 0, 0
        self._branches.clear()
        self._step, self._skip, self._acc = -1, False, 0.0

    def _decide(self, step: int, change: float | None) -> bool:
        last = self.total_steps is not None and step >= self.total_steps - 1
        if step < self.keep_first or last or change is None:
            self._acc = 0.0
            return False
        self._acc += change
        if self._acc < self.threshold:
            return True
        self._acc = 0.0
        return False

    def _first(self, hidden: Any, out: Any) -> None:
        step, negative = self.context()
        branch = self._branches.setdefault(negative, {})
        residual = (out - hidden).float()
        previous = branch.get("first_residual")
        if step != self._step:  # the step's first pass decides for both passes
            self._step = step
            change = None
            if previous is not None and branch.get("rest") is not None:
                change = float((residual - previous).abs().mean()
                               / previous.abs().mean().clamp(min=1e-12))
            self._skip = self._decide(step, change)
            self.skipped += self._skip
            self.computed += not self._skip
        if self._skip and branch.get("rest") is None:
            self._skip = False  # this pass has nothing cached yet (e.g. CFG just started)
        branch["first_residual"] = residual
        self._branch, self._first_out = branch, out

    def _wrap_first(self, block: Any) -> None:
        forward = block.forward

        def first(hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
            out = forward(hidden_states, *args, **kwargs)
            self._first(hidden_states, out)
            return out

        block.forward = first

    def _wrap_middle(self, block: Any) -> None:
        forward = block.forward

        def middle(hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
            return hidden_states if self._skip else forward(hidden_states, *args, **kwargs)

        block.forward = middle

    def _wrap_last(self, block: Any) -> None:
        forward = block.forward

        def last(hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
            if self._skip:
                return self._first_out + self._branch["rest"]
            out = forward(hidden_states, *args, **kwargs)
            self._branch["rest"] = out - self._first_out
            return out

        block.forward = last


def forward_context() -> tuple[int, bool]:
    """(denoising step index, whether this is CFG's unconditional pass) from fastvideo's
    forward context of the DiT call in progress."""
    from fastvideo.forward_context import get_forward_context

    context = get_forward_context()
    batch = getattr(context, "forward_batch", None)
    return int(context.current_timestep), bool(getattr(batch, "is_cfg_negative", False))
