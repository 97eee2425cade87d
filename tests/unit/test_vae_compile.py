"""The ``vae_compile`` engine option: routed to the child's runtime options, ignored without
CUDA, and a compiled Wan VAE decoder that decodes the same frames as the eager one."""

from __future__ import annotations

import contextvars
import logging
from types import SimpleNamespace

import pytest

from videoserve.engines.fastvideo_engine import FastVideoEngine


def test_vae_compile_is_a_runtime_option_not_a_fastvideo_one():
    opts = FastVideoEngine._generator_options({"vae_compile": True, "vae_channels_last": True})
    assert opts["runtime"] == {"vae_compile": True, "vae_channels_last": True}
    assert "vae_compile" not in opts


def test_vae_compile_without_cuda_is_logged_and_ignored(monkeypatch, caplog):
    import torch

    from videoserve.engines import fastvideo_adapter as adapter

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    decoder = torch.nn.Identity()
    stage = SimpleNamespace(forward=lambda batch, args: batch, streaming_decode=None,
                            vae=SimpleNamespace(decoder=decoder))
    pipeline = SimpleNamespace(stages=[stage], post_init=lambda: None)
    generator = SimpleNamespace(executor=SimpleNamespace(worker=SimpleNamespace(
        pipeline=pipeline)))
    with caplog.at_level(logging.INFO, logger=adapter.__name__):
        adapter.Instrumented(generator, vae_compile=True)
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


def test_compiled_decoder_decodes_like_the_eager_one_in_few_graphs():
    pytest.importorskip("fastvideo")
    import torch
    import torch._dynamo
    from fastvideo.configs.models.vaes import WanVAEConfig
    from fastvideo.models.vaes import wanvae
    from torch._dynamo.utils import counters

    from videoserve.engines.fastvideo_adapter import WAN_DECODER_CONTEXT, CompiledDecoder

    torch.manual_seed(0)
    config = WanVAEConfig(load_encoder=False)
    config.update_model_arch({"base_dim": 8, "z_dim": 16, "dim_mult": (1, 2, 4, 4),
                              "num_res_blocks": 1})
    vae = wanvae.AutoencoderKLWan(config).eval()
    latents = torch.randn(1, 16, 6, 8, 8)
    other_size = torch.randn(1, 16, 3, 6, 10)
    eager, eager_other = _stream(vae, latents), _stream(vae, other_size)

    assert CompiledDecoder.supports(vae.decoder)
    assert not CompiledDecoder.supports(torch.nn.Identity())
    torch._dynamo.reset()
    counters.clear()
    try:
        # aot_eager traces exactly what inductor would compile, without its code generation.
        vae.decoder.forward = CompiledDecoder(vae.decoder, backend="aot_eager")
        assert torch.allclose(_stream(vae, latents), eager, atol=1e-5)
        graphs = counters["stats"]["unique_graphs"]
        # The first, second, third and later latent frames see different caches; nothing
        # breaks the graph (no ContextVar.set inside it).
        assert 1 < graphs <= 4
        assert sum(counters["graph_break"].values()) == 0
        assert torch.allclose(_stream(vae, latents), eager, atol=1e-5)
        # Another size decodes eagerly: the same frames, no new graph.
        assert torch.equal(_stream(vae, other_size), eager_other)
        assert counters["stats"]["unique_graphs"] == graphs
    finally:
        torch._dynamo.reset()
    # The module's ContextVars are back in place, with their defaults outside a decode.
    assert all(isinstance(getattr(wanvae, name), contextvars.ContextVar)
               for name in WAN_DECODER_CONTEXT)
    assert wanvae.feat_cache.get() is None
