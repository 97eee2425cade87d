"""The DiT speed levers' arithmetic, without a GPU: FP8 linear layers and the step cache."""

import pytest
import torch

from videoserve.engines.fastvideo.dit import StepCache, fp8_linear, fp8_linears, quantize_rows


def test_fp8_rows_keep_the_linear_within_a_few_percent():
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 40, 256), torch.randn(128, 256) * 0.02, torch.randn(128)
    wq, scale = quantize_rows(w)
    assert wq.dtype == torch.float8_e4m3fn and scale.shape == (128, 1)
    out = fp8_linear(x, wq, scale, b)
    ref = torch.nn.functional.linear(x, w, b)
    assert out.shape == ref.shape == (3, 40, 128) and out.dtype == torch.bfloat16
    error = ((out.float() - ref).norm() / ref.norm()).item()
    assert 0 < error < 0.05


class FakeLinear(torch.nn.Module):
    """Shaped like fastvideo's ReplicatedLinear: forward goes through ``quant_method``."""

    class Plain:
        def apply(self, layer, x, bias=None):
            return torch.nn.functional.linear(x, layer.weight, bias)

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n_out, n_in) * 0.05)
        self.bias = torch.nn.Parameter(torch.zeros(n_out))
        self.quant_method = self.Plain()

    def forward(self, x):
        return self.quant_method.apply(self, x, self.bias), None


def test_fp8_linears_quantize_only_the_video_token_layers():
    block = torch.nn.Module()
    block.to_q, block.ffn = FakeLinear(64, 64), torch.nn.Module()
    block.ffn.fc_in = FakeLinear(64, 128)
    block.attn2 = torch.nn.Module()
    block.attn2.to_k = FakeLinear(64, 64)  # sees only the text: left alone
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([block])
    model.proj_out = FakeLinear(64, 16)  # outside the blocks: left alone
    x = torch.randn(2, 10, 64)
    before = block.ffn.fc_in(x)[0]
    assert fp8_linears(model) == 2
    assert block.to_q.weight.dtype == block.ffn.fc_in.weight.dtype == torch.float8_e4m3fn
    assert block.attn2.to_k.weight.dtype == model.proj_out.weight.dtype == torch.float32
    after = block.ffn.fc_in(x)[0]
    assert ((after.float() - before).norm() / before.norm()).item() < 0.05


class Block(torch.nn.Module):
    """Adds a fixed vector (scaled by the call's input mean) and counts its calls."""

    def __init__(self, value: float):
        super().__init__()
        self.value, self.calls = value, 0

    def forward(self, hidden_states, *args):
        self.calls += 1
        return hidden_states + self.value * (1 + hidden_states.mean())


class Context:
    step, negative = 0, False

    def __call__(self):
        return self.step, self.negative


def run(blocks, context, steps, inputs, cfg=False):
    outs = []
    for step in range(steps):
        context.step = step
        for negative in ([False, True] if cfg else [False]):
            context.negative = negative
            hidden = inputs[step] + (0.5 if negative else 0.0)
            for block in blocks:
                hidden = block(hidden)
            outs.append(hidden)
    return outs


def blocks_and_cache(threshold, n=4):
    blocks = [Block(0.1 * (i + 1)) for i in range(n)]
    context = Context()
    cache = StepCache(blocks, threshold, context)
    return blocks, context, cache


INPUTS = [torch.full((2, 3), 1.0 + 0.001 * i) for i in range(8)]


def test_a_zero_threshold_skips_nothing_and_changes_nothing():
    reference = run([Block(0.1 * (i + 1)) for i in range(4)], Context(), 8, INPUTS)
    blocks, context, cache = blocks_and_cache(0.0)
    cache.start(8)
    outs = run(blocks, context, 8, INPUTS)
    assert cache.skipped == 0 and cache.computed == 8
    assert all(torch.equal(a, b) for a, b in zip(outs, reference, strict=True))
    assert [b.calls for b in blocks] == [8] * 4


def test_slowly_changing_inputs_skip_the_middle_steps_but_never_the_first_two_or_last():
    blocks, context, cache = blocks_and_cache(1.0)
    cache.start(8)
    outs = run(blocks, context, 8, INPUTS)
    # Steps 0, 1 and 7 ran every block; 2..6 only the first one.
    assert (cache.computed, cache.skipped) == (3, 5)
    assert blocks[0].calls == 8 and [b.calls for b in blocks[1:]] == [3, 3, 3]
    reference = run([Block(0.1 * (i + 1)) for i in range(4)], Context(), 8, INPUTS)
    # A skipped step reuses the residual of the last computed one: close, not equal.
    assert not torch.equal(outs[3], reference[3])
    assert torch.allclose(outs[3], reference[3], rtol=1e-2)
    # The next generation starts afresh.
    cache.start(8)
    run(blocks, context, 8, INPUTS)
    assert (cache.computed, cache.skipped) == (3, 5)


def test_cfg_passes_keep_their_own_residuals_and_share_the_decision():
    blocks, context, cache = blocks_and_cache(1.0)
    cache.start(6)
    outs = run(blocks, context, 6, INPUTS, cfg=True)
    assert (cache.computed, cache.skipped) == (3, 3)
    assert [b.calls for b in blocks[1:]] == [6, 6, 6]  # 3 computed steps x 2 passes
    # Step 3 (skipped): the unconditional pass used its own cached residual, not the other's.
    reference = run([Block(0.1 * (i + 1)) for i in range(4)], Context(), 6, INPUTS, cfg=True)
    cond, uncond = outs[6], outs[7]
    assert torch.allclose(cond, reference[6], rtol=1e-2)
    assert torch.allclose(uncond, reference[7], rtol=1e-2)
    assert not torch.allclose(cond, uncond)


def test_a_big_change_computes_the_step():
    blocks, context, cache = blocks_and_cache(0.05)
    inputs = [torch.full((2, 3), float(v)) for v in (1, 1, 1, 9, 9.001, 9.002)]
    cache.start(6)
    run(blocks, context, 6, inputs)
    # Step 2 changed little (skipped); step 3's input jumped (computed); 4 skipped; 5 is last.
    assert (cache.computed, cache.skipped) == (4, 2)


def test_a_dit_of_one_block_is_refused():
    with pytest.raises(ValueError):
        StepCache([Block(1.0)], 0.1, Context())
