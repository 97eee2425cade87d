"""The ``vae_compile`` engine option: routed to the child's runtime options, ignored without
CUDA, and a compiled Wan VAE decoder that decodes the same frames as the eager one."""

from __future__ import annotations

import contextvars
import logging
from types import SimpleNamespace

import pytest

from videoserve.engines.fastvideo.engine import FastVideoEngine


def test_vae_compile_is_a_runtime_option_not_a_fastvideo_one():
    opts = FastVideoEngine._generator_options({"vae_compile": True, "vae_channels_last": True})
    assert opts["runtime"] == {"vae_compile": True, "vae_channels_last": True}
    assert "vae_compile" not in opts


def _tiny_vae():
    """A real fastvideo Wan VAE (decoder only), small enough to compile on a CPU."""
    from fastvideo.configs.models.vaes import WanVAEConfig
    from fastvideo.models.vaes import wanvae

    config = WanVAEConfig(load_encoder=False)
    config.update_model_arch({"base_dim": 8, "z_dim": 16, "dim_mult": (1, 2, 4, 4),
                              "num_res_blocks": 1})
    return wanvae.AutoencoderKLWan(config).eval()


@pytest.fixture
def tiny_vae(monkeypatch):
    """``_tiny_vae()`` with seeded weights. CompiledDecoder raises the process's recompile
    limit; the fixture gives the old one back after the test."""
    pytest.importorskip("fastvideo")
    import torch
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit",
                        torch._dynamo.config.recompile_limit)
    torch.manual_seed(0)
    return _tiny_vae()


def _generator(vae):
    """A loaded generator as the adapter sees it: one stage that decodes with ``vae``."""
    import torch

    stage = SimpleNamespace(forward=lambda batch, args: batch, streaming_decode=None, vae=vae)
    dit = torch.nn.Identity()  # the transformer whose input latents make live previews
    pipeline = SimpleNamespace(stages=[stage], post_init=lambda: None,
                               get_module=lambda name: dit)
    return SimpleNamespace(executor=SimpleNamespace(worker=SimpleNamespace(pipeline=pipeline)))


def test_vae_compile_without_cuda_is_logged_and_ignored(monkeypatch, caplog):
    import torch

    from videoserve.engines.fastvideo import adapter

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    decoder = torch.nn.Identity()
    with caplog.at_level(logging.INFO, logger=adapter.__name__):
        adapter.Instrumented(_generator(SimpleNamespace(decoder=decoder)), vae_compile=True)
    assert "vae_compile applies to CUDA only; ignored here" in caplog.messages
    assert "forward" not in vars(decoder)  # still the class's own forward


def _stream(vae, latents):
    """Decode as the engine's streamed decode does: one latent frame a call, one cache."""
    import torch

    cache, chunks = vae.get_streaming_cache(), []
    with torch.no_grad():
        for index in range(latents.shape[2]):
            image, cache = vae.streaming_decode(latents[:, :, index:index + 1], cache,
                                                is_first_chunk=index == 0)
            chunks.append(image)
    return torch.cat(chunks, dim=2)


def test_compiled_decoder_decodes_like_the_eager_one_in_few_graphs(tiny_vae):
    import torch
    import torch._dynamo
    from fastvideo.models.vaes import wanvae
    from torch._dynamo.utils import counters

    from videoserve.engines.fastvideo.adapter import WAN_DECODER_CONTEXT, CompiledDecoder

    vae = tiny_vae
    latents = torch.randn(1, 16, 6, 8, 8)
    second_size = torch.randn(1, 16, 4, 8, 12)
    other_size = torch.randn(1, 16, 3, 6, 10)
    batch_of_two = torch.randn(2, 16, 3, 8, 8)  # a compiled size in a shape never compiled
    eager, eager_second, eager_other, eager_two = (
        _stream(vae, x) for x in (latents, second_size, other_size, batch_of_two))

    assert CompiledDecoder.supports(vae.decoder)
    assert not CompiledDecoder.supports(torch.nn.Identity())
    torch._dynamo.reset()
    counters.clear()
    try:
        # aot_eager traces exactly what inductor would compile, without its code generation.
        # Two video sizes compiled (8x8 and 8x12 latents: the VAE's 8x), room for their graphs
        # past dynamo's default recompile limit of 8.
        vae.decoder.forward = CompiledDecoder(vae.decoder, backend="aot_eager",
                                              sizes=[(64, 64), (64, 96)])
        assert torch.allclose(_stream(vae, latents), eager, atol=1e-5)
        graphs = counters["stats"]["unique_graphs"]
        # The first, second, third and later latent frames see different caches; nothing
        # breaks the graph (no ContextVar.set inside it).
        assert 1 < graphs <= 4
        assert sum(counters["graph_break"].values()) == 0
        assert torch.allclose(_stream(vae, latents), eager, atol=1e-5)
        assert counters["stats"]["unique_graphs"] == graphs
        # After that size's first video, what would need a new graph runs eagerly: no request
        # compiles.
        assert torch.equal(_stream(vae, batch_of_two), eager_two)
        assert counters["stats"]["unique_graphs"] == graphs
        # The second size compiles its own graphs and decodes the same frames.
        assert torch.allclose(_stream(vae, second_size), eager_second, atol=1e-5)
        both = counters["stats"]["unique_graphs"]
        assert graphs < both <= 2 * graphs
        assert torch._dynamo.config.recompile_limit >= 2 * CompiledDecoder.GRAPHS_PER_SIZE
        # A third size decodes eagerly: the same frames, no new graph.
        assert torch.equal(_stream(vae, other_size), eager_other)
        assert counters["stats"]["unique_graphs"] == both
    finally:
        torch._dynamo.reset()
    # The module's ContextVars are back in place, with their defaults outside a decode.
    assert all(isinstance(getattr(wanvae, name), contextvars.ContextVar)
               for name in WAN_DECODER_CONTEXT)
    assert wanvae.feat_cache.get() is None


def test_the_compiled_decoder_s_upsamplers_compare_no_tensor_with_a_string(monkeypatch,
                                                                            tiny_vae):
    """fastvideo's temporal upsampler compares cache tensors with the string "Rep"; torch
    2.11's dynamo cannot trace ``Tensor.__ne__(str)`` and splits the decoder into per-block
    graphs. Under CompiledDecoder the upsamplers test the entry's type instead, with the same
    frames."""
    import torch

    from videoserve.engines.fastvideo.adapter import CompiledDecoder

    vae = tiny_vae
    latents = torch.randn(1, 16, 4, 8, 8)
    compared: list[str] = []

    def recording(original):
        def method(self, other):
            if isinstance(other, str):
                compared.append(other)
            return original(self, other)
        return method

    def decode_recording_string_comparisons():
        with monkeypatch.context() as patch:
            for name in ("__eq__", "__ne__"):
                patch.setattr(torch.Tensor, name, recording(getattr(torch.Tensor, name)))
            return _stream(vae, latents)

    expected = decode_recording_string_comparisons()
    assert "Rep" in compared  # fastvideo's own upsampler does compare
    compared.clear()
    # Compiled for another size, so this decode runs the same modules eagerly.
    vae.decoder.forward = CompiledDecoder(vae.decoder, backend="aot_eager", sizes=[(96, 96)])
    upsamplers = [m for m in vae.decoder.modules() if getattr(m, "mode", "") == "upsample3d"]
    assert upsamplers and all("forward" in vars(m) for m in upsamplers)
    assert torch.equal(decode_recording_string_comparisons(), expected)
    assert compared == []


def test_warmup_runs_cover_each_size_once_and_refuse_bad_sizes():
    from PIL import Image

    from videoserve.engines import GenerationParams
    from videoserve.engines.base import GenerationError
    from videoserve.engines.fastvideo.engine import warmup_runs

    default = GenerationParams(prompt="warm-up", negative_prompt="", seed=0, height=448,
                               width=832, num_frames=61, num_inference_steps=2,
                               guidance_scale=1.0, fps=16,
                               image=Image.new("RGB", (832, 448)))
    assert warmup_runs(None, [[480, 832]]) == []  # warm-up off: no size warms up
    runs = warmup_runs(default, [[480, 832], [448, 832], [480, 832]])
    assert [(r.height, r.width, r.num_frames) for r in runs] == [(448, 832, 61), (480, 832, 61)]
    assert runs[1].image.size == (832, 480)  # an I2V warm-up's image fits its size
    for bad in ([480], [480, 830], ["480", 832], 480):
        with pytest.raises(GenerationError, match="warmup_sizes"):
            warmup_runs(default, [bad])


def test_the_compiled_sizes_join_the_warm_up(monkeypatch):
    from videoserve.engines import GenerationParams
    from videoserve.engines.base import GenerationError

    monkeypatch.setattr(FastVideoEngine, "_start_child", lambda self: None)
    default = GenerationParams(prompt="warm-up", negative_prompt="", seed=0, height=448,
                               width=832, num_frames=61, num_inference_steps=2,
                               guidance_scale=1.0, fps=16)
    engine = FastVideoEngine("m", "t2v", "cuda", {"warmup": True, "vae_compile": [[480, 832]],
                                                  "warmup_sizes": [[480, 832]]},
                             warmup=default)
    # One warm-up a size; at a compiled size with the frames of Wan's usual length.
    assert [(r.height, r.width, r.num_frames) for r in engine.warmups] == [
        (448, 832, 61), (480, 832, 81)]
    assert engine.options["runtime"]["vae_compile"] == [(480, 832)]
    # true: every size the warm-up decodes.
    engine = FastVideoEngine("m", "t2v", "cuda", {"warmup": True, "vae_compile": True,
                                                  "warmup_sizes": [[480, 832]]}, warmup=default)
    assert engine.options["runtime"]["vae_compile"] == [[448, 832], [480, 832]]
    with pytest.raises(GenerationError, match="vae_compile"):
        FastVideoEngine("m", "t2v", "cuda", {"vae_compile": "480x832"})


def test_the_engine_s_sizes_reach_the_decoder(monkeypatch, tiny_vae):
    import torch

    from videoserve.engines.fastvideo import adapter

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # compile_vae's CUDA check
    vae = tiny_vae
    # As the engine passes them: [height, width] lists, from the preset or the warm-up.
    adapter.Instrumented(_generator(vae), vae_compile=[[480, 832], [448, 832]])
    compiled = vars(vae.decoder)["forward"]
    assert isinstance(compiled, adapter.CompiledDecoder)
    assert compiled.sizes == {(480, 832), (448, 832)} and compiled.scale == 8
