"""Cluster mode: a real two-node Ray cluster started with `ray start` on this machine, the backend
joining it with --ray_address and placing its generators on the worker node by a custom resource.

The commands are the README's ("Ray cluster"), with free ports, a token and temp dirs of their
own, so that the cluster touches nothing else on the machine (and no `ray start` cluster or
`ray.init()` of anyone else joins it or is joined by it).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.conftest import REPO, free_port
from tests.helpers import fetch_video, png_b64
from videoserve.serve.launcher import Managed, wait_for_backend

RAY = Path(sys.executable).with_name("ray")
SMALL = {"num_frames": 9, "height": 64, "width": 64, "num_inference_steps": 2}

# Run as a separate driver: the test session may already be connected to its own local Ray.
CLUSTER_STATE = """
import json, sys, ray
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
ray.init(address=sys.argv[1], log_to_driver=False)
nodes = [{"id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"]}
         for n in ray.nodes()]
try:
    ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    serve_running = True
except ValueError:
    serve_running = False
print("STATE " + json.dumps({"nodes": nodes, "serve_running": serve_running}))
"""


class LocalCluster:
    """A head and a worker node, each a `ray start --block` process.

    `ray stop` would stop every Ray process of this user on the machine (the test session's
    own Ray and other people's tests included), so it is never used: each node runs with
    --block in a process group of its own, which `stop` kills, and then any process whose
    command line names this cluster's temp dir (workers the raylets started) is killed too.
    """

    def __init__(self) -> None:
        # Not under pytest's tmp_path: Ray puts Unix sockets in its temp dir, and their paths
        # must stay under 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="vsray-"))
        token = self.root / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        # Token authentication, with a token of this cluster's own (not ~/.ray/auth_token):
        # every node and every driver (the backend) presents it.
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    # The nodes' worker processes import this checkout.
                    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                    "OMP_NUM_THREADS": "1"}
        self.env.pop("RAY_ADDRESS", None)
        self.address = f"127.0.0.1:{free_port()}"
        self.nodes: list[subprocess.Popen] = []

    def start_node(self, name: str, *args: str, tries: int = 2) -> None:
        # A raylet gets 30 s (fixed in Ray) to register with the GCS; on this shared 2-core
        # machine under load that can run out, so a node that fails to start gets one more go.
        for attempt in range(tries):
            try:
                return self._start_node(f"{name}{attempt or ''}", *args)
            except AssertionError:
                if attempt == tries - 1:
                    raise
                self._kill(self.nodes.pop())

    def _start_node(self, name: str, *args: str) -> None:
        temp_dir = self.root / name
        ports = {flag: str(free_port()) for flag in (
            "--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")}
        command = [str(RAY), "start", "--block", "--temp-dir", str(temp_dir),
                   "--object-store-memory", str(100 * 2**20), "--disable-usage-stats",
                   *[x for kv in ports.items() for x in kv], *args]
        log = open(self.root / f"{name}.log", "w")
        self.nodes.append(subprocess.Popen(command, env=self.env, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True))
        # `ray start` writes the cluster's address into its temp dir once the node is up.
        deadline = time.monotonic() + 120
        while not (temp_dir / "ray_current_cluster").exists():
            if self.nodes[-1].poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{name} node did not start:\n"
                                     + (self.root / f"{name}.log").read_text()[-3000:])
            time.sleep(0.2)

    def state(self) -> dict:
        out = subprocess.run([sys.executable, "-c", CLUSTER_STATE, self.address], env=self.env,
                             capture_output=True, text=True, timeout=120)
        lines = [line for line in out.stdout.splitlines() if line.startswith("STATE ")]
        assert lines, out.stdout + out.stderr
        return json.loads(lines[-1].removeprefix("STATE "))

    @staticmethod
    def _kill(node: subprocess.Popen) -> None:
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.wait()

    def stop(self) -> None:
        for node in reversed(self.nodes):
            self._kill(node)
        ours = []
        for proc in psutil.process_iter(["cmdline"]):
            if str(self.root) in " ".join(proc.info["cmdline"] or ()):
                ours.append(proc)
                proc.kill()
        psutil.wait_procs(ours, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster(tiny_models):
    cluster = LocalCluster()
    try:
        cluster.start_node("head", "--head", "--port", cluster.address.split(":")[1],
                           "--num-cpus", "1", "--include-dashboard=false",
                           "--ray-client-server-port", str(free_port()))
        # Room for two generator replicas (each asks for gpu_node 1): only this node has it.
        cluster.start_node("worker", "--address", cluster.address, "--num-cpus", "2",
                           "--resources", json.dumps({"gpu_node": 2}))
        yield cluster
    finally:
        cluster.stop()


def test_backend_joins_a_cluster_and_runs_its_generators_on_the_worker_node(cluster, tmp_path):
    port = free_port()
    backend = Managed("backend", [sys.executable, str(REPO / "ray_serve_backend.py"),
                                  "--ray_address", cluster.address,
                                  "--generator_resources", '{"gpu_node": 1}',
                                  "--preset", "tiny", "--port", str(port),
                                  "--output_path", str(tmp_path), "--drain_timeout", "4"],
                      env=cluster.env)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for_backend(backend, url, 300, threading.Event()), "backend did not start"
        t2v = requests.post(url + "/generate_video", json={"prompt": "a fox", **SMALL},
                            timeout=300)
        assert t2v.status_code == 200, t2v.text
        i2v = requests.post(url + "/generate_video",
                            json={"prompt": "waves", "image": png_b64(), **SMALL}, timeout=300)
        assert i2v.status_code == 200, i2v.text
        for response, task in ((t2v, "t2v"), (i2v, "i2v")):
            body = response.json()
            assert body["model_type"] == task
            video = fetch_video(url, body)
            assert (video.frames, video.height, video.width) == (9, 64, 64)
        placement = requests.get(url + "/v1/placement", timeout=30).json()
        backend.proc.send_signal(signal.SIGTERM)
        assert backend.proc.wait(timeout=120) == 0
    finally:
        backend.stop()

    state = cluster.state()
    ingress_node = placement["ingress"]["node_id"]
    replicas = {task: placement["models"][task]["replicas"] for task in ("t2v", "i2v")}
    print(f"ingress on node {ingress_node}")
    for task, on in replicas.items():
        print(f"{task} replicas on nodes {[r['node_id'] for r in on]}")
    # Only alive nodes: a node start that timed out and was retried may be listed as dead.
    nodes = {n["id"]: n for n in state["nodes"] if n["alive"]}
    assert len(nodes) == 2, state  # the backend left the cluster's nodes running
    worker = next(i for i, n in nodes.items() if "gpu_node" in n["resources"])
    head = next(i for i in nodes if i != worker)
    # The ingress runs where the backend (and its job table) is: the head node here.
    assert ingress_node == head
    for task, on in replicas.items():
        assert [(r["node_id"], r["state"]) for r in on] == [(worker, "RUNNING")], (task, on)
        assert on[0]["node_id"] != ingress_node
    # The backend removed its application and the Serve it started.
    assert not state["serve_running"]
