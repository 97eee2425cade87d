"""GPU tests: real fastvideo on CUDA, no CPU shim. Skipped where no CUDA GPU is visible."""

from __future__ import annotations

import pytest

from tests.conftest import ServeCluster, free_port


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.fixture(scope="session")
def gpu_cluster(tiny_models) -> ServeCluster:
    if not cuda_available():
        pytest.skip("needs a CUDA GPU")
    import ray
    import torch
    from ray import serve

    port = free_port()
    ray.init(num_cpus=8, num_gpus=torch.cuda.device_count(), include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield ServeCluster(port)
    serve.shutdown()
    ray.shutdown()
