"""Shared fixtures: one Ray instance and one Serve instance for the whole test session."""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIM_DIR = REPO / "tests" / "fastvideo_cpu_shim"


# Ports handed out this session: each test server gets one of its own.
_HANDED_OUT: set[int] = set()
# Ray's worker processes listen on 10002-19999 (its default range).
_ABOVE_RAY_WORKERS = 20000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free port that no other process is handed while the test starts its server.

    A port from bind(("", 0)) is free only until it is let go: a Ray started afterwards asks
    the kernel for ports the same way (its metrics exporter, its agents) and may be given the
    same one, and the backend's HTTP proxy then cannot listen there. Ports below the kernel's
    ephemeral range and above Ray's worker ports are never handed out by either.
    """
    low = _ephemeral_low()
    candidates = [p for p in range(_ABOVE_RAY_WORKERS, low) if p not in _HANDED_OUT]
    random.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket() as sock:  # no SO_REUSEADDR: a port in TIME_WAIT is passed over
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as sock:  # an unusual ephemeral range: the kernel's choice
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServeCluster:
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    from videoserve.devtools.tiny_models import ensure_tiny_models

    return ensure_tiny_models()


@pytest.fixture(scope="session")
def serve_cluster(tiny_models) -> ServeCluster:
    """A local Ray with small explicit resources and Serve listening on a free port."""
    import ray
    from ray import serve

    # Replicas import test helpers (fault-injecting engine wrappers) and, for the fastvideo
    # tests, the CPU platform shim; worker processes inherit this environment.
    paths = [str(REPO), str(SHIM_DIR), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    os.environ["VIDEOSERVE_FASTVIDEO_CPU_SHIM"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    port = free_port()
    # "local": a bare ray.init() would join a cluster named by RAY_ADDRESS or started with
    # `ray start` on this machine (tests/integration/test_cluster.py starts one).
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield ServeCluster(port)
    serve.shutdown()
    ray.shutdown()
