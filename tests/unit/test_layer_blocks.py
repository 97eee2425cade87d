"""The layerwise offload's host memory: one block per layer, views per parameter."""

from __future__ import annotations

import fastvideo.hooks.layerwise_offload as offload
import torch

from videoserve.engines.fastvideo.adapter import HOST_ALIGN, host_block_for_layer


def bare_state():
    # The real state class, without the CUDA stream its constructor makes.
    state = offload.LayerwiseOffloadState.__new__(offload.LayerwiseOffloadState)
    state.cpu_named_parameters, state.gpu_named_parameters = {}, {}
    state.device, state.next_state = torch.device("cpu"), None
    return state


def test_a_layer_lives_in_one_block_of_views():
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.LayerNorm(5),
                                torch.nn.Linear(5, 3, bias=False)).to(torch.bfloat16)
    layer.register_parameter("scale", torch.nn.Parameter(torch.tensor(2.0)))
    before = {name: p.detach().clone() for name, p in layer.named_parameters()}
    state = bare_state()
    host_block_for_layer(state, layer, pin=False)

    assert state.cpu_named_parameters.keys() == before.keys()
    storages = {t.untyped_storage().data_ptr() for t in state.cpu_named_parameters.values()}
    assert len(storages) == 1  # one block for the whole layer
    base = next(iter(storages))
    for name, host in state.cpu_named_parameters.items():
        assert torch.equal(host, before[name]) and host.dtype == before[name].dtype
        assert (host.data_ptr() - base) % HOST_ALIGN == 0
    # The module keeps empty placeholders until fastvideo streams a layer in.
    assert all(p.numel() == 0 for p in layer.parameters())
    assert state.module_ref is layer


def test_fastvideo_pinning_is_kept_where_a_block_cannot_be_pinned(monkeypatch):
    from videoserve.engines.fastvideo import adapter

    cls = offload.LayerwiseOffloadState
    fastvideo_own = []
    monkeypatch.setattr(cls, "on_init", lambda state, module: fastvideo_own.append(module))
    monkeypatch.setattr(cls, "videoserve_blocks", False, raising=False)

    tries = []

    def refused(state, module):
        tries.append(module)
        raise RuntimeError("cudaHostRegister failed with CUDA error 2")

    monkeypatch.setattr(adapter, "host_block_for_layer", refused)
    adapter.pin_layers_in_one_block()
    layer = torch.nn.Linear(3, 3)
    cls.on_init(bare_state(), layer)
    assert fastvideo_own == [layer] and tries == [layer]
    adapter.pin_layers_in_one_block()  # a second load in the process does not wrap it twice
    cls.on_init(bare_state(), layer)
    assert fastvideo_own == [layer, layer] and tries == [layer, layer]
