"""GPU tests: real fastvideo on CUDA, no CPU shim. Skipped where no CUDA GPU is visible."""

from __future__ import annotations

import os
import time
from pathlib import Path

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


WITH_14B = os.environ.get("VIDEOSERVE_GPU_TESTS_14B") == "1"


@pytest.fixture(scope="session")
def full_models(gpu_cluster, tmp_path_factory) -> dict[str, Path]:
    from videoserve.devtools.tiny_models import ensure_full_models

    folder = os.environ.get("VIDEOSERVE_FULL_MODEL_DIR")
    cache = Path(folder) if folder else tmp_path_factory.mktemp("full-size")
    tasks = ("t2v", "i2v") if WITH_14B else ("t2v",)
    start = time.perf_counter()
    models = ensure_full_models(cache, tasks=tasks)
    print(f"full-size models ready in {time.perf_counter() - start:.0f} s: {models}")
    return models
