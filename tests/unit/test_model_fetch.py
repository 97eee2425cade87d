"""Hub models fetched before the replicas start (videoserve.serve.model_fetch): the disk check,
offline and unreachable Hubs, resolution from the cache and ``--download_only``. Nothing is
downloaded: the Hub client is a fake, or the Hub is offline or a closed local port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from huggingface_hub import constants

from tests.conftest import REPO
from tests.helpers import hub_cache_layout
from videoserve.core.config import TINY_DEFAULTS, ModelSpec
from videoserve.serve import model_fetch
from videoserve.serve.backend_cli import main
from videoserve.serve.model_fetch import (
    ALLOW_PATTERNS,
    ModelFetchError,
    is_hub_id,
    resolve_model,
    resolve_models,
)

REPO_ID = "some-org/tiny-t2v"
GB = 10**9


class FakeHub:
    """model_info of one repository: ``files`` maps a path to its size."""

    def __init__(self, files: dict[str, int], error: Exception | None = None):
        self.files, self.error, self.calls = files, error, []

    def model_info(self, repo_id, *, files_metadata=False, timeout=None):
        self.calls.append((repo_id, files_metadata))
        if self.error is not None:
            raise self.error
        siblings = []
        for i, (name, size) in enumerate(self.files.items()):
            lfs = (SimpleNamespace(size=size, sha256=f"{i:064x}", pointer_size=130)
                   if name.endswith((".safetensors", ".bin")) else None)
            siblings.append(SimpleNamespace(rfilename=name, size=size, blob_id=f"{i:040x}",
                                            lfs=lfs))
        return SimpleNamespace(sha="a" * 40, siblings=siblings)


class Downloads:
    def __init__(self, folder: Path | None = None):
        self.folder, self.calls = folder, []

    def __call__(self, repo_id, **kwargs):
        self.calls.append((repo_id, kwargs))
        if kwargs.get("local_files_only"):
            raise FileNotFoundError("not cached")  # as LocalEntryNotFoundError is
        return str(self.folder)


def free(gb: float):
    return lambda path: SimpleNamespace(free=int(gb * GB), total=0, used=0)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """An online Hub (as far as huggingface_hub's settings go) and an empty cache."""
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


@pytest.fixture
def offline_cache(monkeypatch, tmp_path):
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


WAN_FILES = {
    "model_index.json": 500,
    "transformer/config.json": 800,
    "transformer/diffusion_pytorch_model-00001-of-00002.safetensors": 20 * GB,
    "transformer/diffusion_pytorch_model-00002-of-00002.safetensors": 8 * GB,
    "transformer/diffusion_pytorch_model.safetensors.index.json": 100_000,
    "text_encoder/model.safetensors": 2_500_000_000,
    "tokenizer/spiece.model": 4_000_000,
    "tokenizer/tokenizer.json": 16_000_000,
    # Never fetched, so never counted: another format's weights, pictures, docs.
    "transformer/diffusion_pytorch_model.bin": 100 * GB,
    "assets/comparison.png": 5_000_000,
    "README.md": 10_000,
}


def test_too_little_disk_space_fails_naming_both_sizes_and_downloads_nothing(hub):
    # One shard is in the cache already: only the rest is needed.
    blobs = hub / "models--Wan-AI--Wan-big" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{3:064x}").write_bytes(b"")  # the second transformer shard's blob
    fake, download = FakeHub(WAN_FILES), Downloads()
    with pytest.raises(ModelFetchError) as failed:
        resolve_model("Wan-AI/Wan-big", task="i2v", api=fake, download=download,
                      disk_usage=free(12.34))
    assert str(failed.value) == (
        "not enough disk space for Wan-AI/Wan-big: it needs 22.5 GB more in the Hugging Face "
        f"cache {hub}, which has 12.3 GB free. Free space there, point HF_HOME (or "
        "HF_HUB_CACHE) at a disk with room, or pass a local model folder with --i2v_model_path")
    assert fake.calls == [("Wan-AI/Wan-big", True)]
    assert download.calls == []  # nothing downloaded, not even asked
    assert not (hub / "models--Wan-AI--Wan-big" / "snapshots").exists()


def test_with_room_it_downloads_only_what_a_pipeline_folder_needs(hub, tmp_path):
    snapshot = tmp_path / "snapshot"
    download = Downloads(snapshot)
    specs = {"t2v": ModelSpec(task="t2v", model="Wan-AI/Wan-big", engine="diffusers",
                              defaults=TINY_DEFAULTS)}
    resolved = resolve_models(specs, api=FakeHub(WAN_FILES), download=download,
                              disk_usage=free(31))
    assert download.calls == [("Wan-AI/Wan-big", {"repo_type": "model",
                                                  "allow_patterns": list(ALLOW_PATTERNS)})]
    spec = resolved["t2v"]
    # Replicas load the folder; the Hub id stays the model's name.
    assert spec.local_path == str(snapshot) and spec.model == "Wan-AI/Wan-big"
    assert spec.describe()["id"] == "Wan-AI/Wan-big"
    assert "local_path" not in json.dumps(spec.describe())
    assert model_fetch.wanted(WAN_FILES) == [name for name in WAN_FILES if not name.endswith(
        (".bin", ".png", ".md"))]


def test_a_repository_with_only_pickled_weights_is_refused(hub):
    files = {"model_index.json": 1, "transformer/config.json": 1,
             "transformer/diffusion_pytorch_model.bin": GB}
    download = Downloads()
    with pytest.raises(ModelFetchError, match="has no .safetensors weights"):
        resolve_model("org/old", api=FakeHub(files), download=download, disk_usage=free(100))
    assert download.calls == []


def test_offline_with_an_empty_hf_home_fails_at_once_naming_model_and_cache(tmp_path):
    # The real environment variables, read by huggingface_hub itself in a fresh process.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(tmp_path), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    script = ("import time\n"
              "from videoserve.serve.model_fetch import ModelFetchError, resolve_model\n"
              "start = time.monotonic()\n"
              "try:\n"
              "    resolve_model('FastVideo/FastWan2.1-T2V-1.3B-Diffusers', task='t2v')\n"
              "except ModelFetchError as exc:\n"
              "    print(exc)\n"
              "print(round(time.monotonic() - start, 3))\n")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    message, seconds = out.stdout.strip().splitlines()
    assert float(seconds) < 2.0, seconds
    assert message == (
        f"FastVideo/FastWan2.1-T2V-1.3B-Diffusers is not in the Hugging Face cache "
        f"{tmp_path / 'hub'} and HF_HUB_OFFLINE=1 forbids downloading it. On a machine with "
        "internet access run `python ray_serve_backend.py --download_only --tasks t2v "
        "--t2v_model_path FastVideo/FastWan2.1-T2V-1.3B-Diffusers` and copy its Hugging Face "
        "cache folder here (or point HF_HOME or HF_HUB_CACHE at a copy), or pass a local model "
        "folder with --t2v_model_path")
    assert not any(tmp_path.iterdir())  # nothing written either


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_hub_fails_fast_and_the_backend_exits_3_with_one_error_line(tmp_path):
    # HF_ENDPOINT at a closed local port: the real client, refused at once, nothing fetched.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env.update(HF_HOME=str(tmp_path), HF_ENDPOINT=endpoint, PYTHONPATH=str(REPO))
    started = time.monotonic()
    out = subprocess.run([sys.executable, str(REPO / "ray_serve_backend.py"), "--preset", "tiny",
                          "--engine", "diffusers", "--tasks", "t2v", "--t2v_model_path",
                          "some-org/missing", "--output_path", str(tmp_path / "out"),
                          "--port", str(closed_port())],
                         env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    elapsed = time.monotonic() - started
    assert out.returncode == 3, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: the t2v model could not be fetched: some-org/missing is not in the Hugging Face "
        f"cache {tmp_path / 'hub'} and the Hugging Face Hub ({endpoint}) cannot be reached "
        f"(ConnectError: [Errno 111] Connection refused). On a machine with internet access run "
        "`python ray_serve_backend.py --download_only --tasks t2v --t2v_model_path "
        "some-org/missing` and copy its Hugging Face cache folder here (or point HF_HOME or "
        "HF_HUB_CACHE at a copy), or pass a local model folder with --t2v_model_path"], out.stderr
    assert "Traceback" not in out.stderr
    assert elapsed < 60, elapsed  # a Python start and imports on a busy machine
    assert "Ray instance" not in out.stderr  # Ray never started


def test_offline_it_resolves_to_the_cached_snapshot(offline_cache, tiny_models):
    snapshot = hub_cache_layout(offline_cache, REPO_ID, tiny_models["t2v"])
    api = FakeHub({}, error=AssertionError("offline: the Hub must not be asked"))
    assert resolve_model(REPO_ID, api=api) == snapshot
    specs = {"t2v": ModelSpec(task="t2v", model=REPO_ID, engine="diffusers",
                              defaults=TINY_DEFAULTS)}
    spec = resolve_models(specs, api=api)["t2v"]
    assert spec.local_path == str(snapshot) and spec.model == REPO_ID
    assert spec.synthetic  # its SYNTHETIC.txt came along
    assert api.calls == []


def test_an_unreachable_hub_falls_back_to_the_cached_snapshot(hub, tiny_models):
    snapshot = hub_cache_layout(hub, REPO_ID, tiny_models["t2v"])
    api = FakeHub({}, error=httpx.ConnectError("[Errno -3] name resolution failed"))
    assert resolve_model(REPO_ID, api=api) == snapshot
    missing = FakeHub({}, error=httpx.ConnectError("[Errno -3] name resolution failed"))
    with pytest.raises(ModelFetchError, match=r"some-org/other is not in the Hugging Face cache "
                                              r".* cannot be reached \(ConnectError: "):
        resolve_model("some-org/other", api=missing)


def test_download_only_prints_each_models_folder_and_exits_0(offline_cache, tiny_models,
                                                             capsys):
    snapshot = hub_cache_layout(offline_cache, REPO_ID, tiny_models["t2v"])
    code = main(["--download_only", "--preset", "tiny", "--t2v_model_path", REPO_ID])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out == [f"t2v: {REPO_ID} {snapshot}",
                   "i2v: builtin:tiny-wan-i2v (not a Hub id: nothing to download)"]
    assert main(["--download_only", "--preset", "tiny", "--tasks", "t2v",
                 "--t2v_model_path", "some-org/not-cached"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: the t2v model could not be fetched: some-org/not-cached is not "
                          f"in the Hugging Face cache {offline_cache} and HF_HUB_OFFLINE=1"), err


def test_download_only_fetches_the_real_presets_models_without_a_gpu(offline_cache, monkeypatch,
                                                                   capsys):
    monkeypatch.setattr("videoserve.serve.backend_cli.cuda_gpu_count", lambda: 0)
    fetched = []

    def fake_resolve(specs, cluster=False):
        fetched.append({t: s.model for t, s in specs.items()})
        return specs

    monkeypatch.setattr("videoserve.serve.backend_cli.resolve_models", fake_resolve)
    assert main(["--download_only", "--preset", "fastwan", "--tasks", "i2v"]) == 0
    assert fetched == [{"i2v": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"}]


@pytest.mark.parametrize(("model", "hub"), [
    ("FastVideo/FastWan2.1-T2V-1.3B-Diffusers", True),
    ("builtin:tiny-wan-t2v", False),
    ("/models/wan", False),
    ("./wan", False),
    ("~/wan", False),
    ("just-a-name", False),
    ("a/b/c", False),
])
def test_what_counts_as_a_hub_id(model, hub):
    assert is_hub_id(model) is hub


def test_an_existing_relative_folder_is_no_hub_id(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id("org/name")


def test_a_replica_without_the_fetched_folder_says_what_every_node_needs(tmp_path):
    from videoserve.engines import model_source

    spec = ModelSpec(task="t2v", model=REPO_ID, engine="diffusers", defaults=TINY_DEFAULTS,
                     local_path=str(tmp_path / "not-on-this-node"))
    with pytest.raises(FileNotFoundError, match="every GPU node needs it at the same path"):
        model_source(spec)
    spec = ModelSpec(task="t2v", model=REPO_ID, engine="diffusers", defaults=TINY_DEFAULTS,
                     local_path=str(tmp_path))
    assert model_source(spec) == tmp_path


def test_a_model_switch_does_not_keep_the_old_models_folder():
    from videoserve.core.model_switch import ModelManager

    base = ModelSpec(task="t2v", model=REPO_ID, engine="diffusers", defaults=TINY_DEFAULTS,
                     local_path="/cache/snapshot")
    assert ModelManager._changed_spec(base, REPO_ID, None, 2).local_path == "/cache/snapshot"
    assert ModelManager._changed_spec(base, "other/model", None, None).local_path is None


def test_fastvideo_gets_the_hub_ids_pipeline_config_for_a_snapshot_folder(tmp_path):
    pytest.importorskip("fastvideo")
    from fastvideo.configs.pipelines.wan import WanT2V480PConfig, WanT2V720PConfig
    from fastvideo.registry import get_pipeline_config_cls_from_name

    from videoserve.engines.fastvideo.adapter import register_hub_folder

    # Wan2.1-T2V-14B's folder, model_index.json naming WanPipeline: fastvideo's detectors alone
    # would pick the 1.3B model's 480P config.
    folder = tmp_path / "snapshots" / ("b" * 40)
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline",
                                                           "_diffusers_version": "0.33.0"}))
    assert get_pipeline_config_cls_from_name(str(folder)) is WanT2V480PConfig
    assert register_hub_folder(str(folder), "Wan-AI/Wan2.1-T2V-14B-Diffusers") == (
        "Wan-AI/Wan2.1-T2V-14B-Diffusers")
    assert get_pipeline_config_cls_from_name(str(folder)) is WanT2V720PConfig
    assert register_hub_folder(str(tmp_path), "someone/unknown-model") is None
    assert register_hub_folder(str(tmp_path), None) is None


def test_in_a_cluster_the_error_says_every_node_needs_the_same_path(offline_cache, caplog):
    specs = {"i2v": ModelSpec(task="i2v", model="org/missing", engine="diffusers",
                              defaults=TINY_DEFAULTS)}
    with pytest.raises(ModelFetchError) as failed:
        resolve_models(specs, cluster=True)
    assert str(failed.value).endswith(
        "(in a Ray cluster every GPU node needs the model at the same path as the backend's node "
        "(shared storage, or the same Hugging Face cache: run `ray_serve_backend.py "
        "--download_only` with the same flags on each node))")


def test_the_launcher_fetches_first_and_stops_on_a_failed_fetch(tmp_path, monkeypatch, capsys):
    import threading

    from videoserve.serve.launcher import build_parser, fetch_models

    for name in [k for k in os.environ if k.startswith(("HF_", "HUGGINGFACE_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(["--preset", "tiny", "--tasks", "t2v",
                                      "--t2v_model_path", "org/missing"])
    assert fetch_models(args, threading.Event()) == 3
    assert "fetching the models failed (exit code 3, reason above); the backend was not " \
           "started" in capsys.readouterr().out


def test_an_unknown_or_gated_repository_says_so(hub):
    from huggingface_hub.errors import GatedRepoError

    response = httpx.Response(401, request=httpx.Request("GET", "https://hub.example/api"))
    api = FakeHub({}, error=GatedRepoError("gated", response=response))
    with pytest.raises(ModelFetchError) as failed:
        resolve_model("org/gated", task="i2v", api=api, download=Downloads())
    assert str(failed.value) == (
        f"the Hugging Face Hub ({constants.ENDPOINT}) has no model org/gated that this machine "
        "may read (GatedRepoError): check the id; for a gated or private model accept its terms "
        "on the Hub and log in (`hf auth login`, or set HF_TOKEN); or pass a local model folder "
        "with --i2v_model_path")
