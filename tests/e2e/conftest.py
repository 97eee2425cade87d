"""Fixtures of the end-to-end suite: a tiny backend under a route prefix and the Gradio UI
in front of it, served in-process on a free port (shared by the browser and client tests)."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, free_port
from videoserve.core.config import Settings
from videoserve.serve.presets import build_specs

SCREENSHOTS = REPO / "test-output" / "screenshots"
# The backend requires this key; the UI is given it (a second key shows its jobs are private).
API_KEY = "e2e-key-one"
OTHER_KEY = "e2e-key-two"
ADMIN_KEY = "e2e-key-admin"  # switches models (the UI's key may not)
# The T2V model's default LoRA and sampling defaults, set as --t2v_lora / --t2v_defaults set
# them: the UI's form must start from these, not from the tiny preset's (2 steps, no LoRA).
T2V_DEFAULT_LORA = ("synthetic-t2v-wan-r64", 0.5)
T2V_DEFAULTS = {"num_inference_steps": 4, "negative_prompt": "e2e default negative"}
BROKEN_LORA = "not-a-lora"  # a file of the LoRA folder that no model can use


@dataclass
class UiServer:
    url: str
    backend_url: str
    api_key: str = API_KEY


@pytest.fixture(scope="package")
def e2e_lora_dir(tmp_path_factory) -> Path:
    """The e2e backend's LoRA folder: copies of the tiny models' synthetic LoRAs (the backend
    refuses symlinks), ids ``synthetic-{t2v,i2v}-{diffusers,wan}-r64``, and one broken file."""
    from videoserve.devtools.synthetic_loras import ensure_tiny_loras

    folder = tmp_path_factory.mktemp("e2e-loras")
    for by_format in ensure_tiny_loras().values():
        for path in by_format.values():
            shutil.copyfile(path, folder / path.name)
    (folder / f"{BROKEN_LORA}.safetensors").write_bytes(b"no safetensors header")
    return folder


def with_t2v_defaults(specs: dict) -> dict:
    """The T2V model's default LoRA and sampling defaults, through the backend CLI's code."""
    from videoserve.serve.backend_cli import with_model_defaults

    lora_id, scale = T2V_DEFAULT_LORA
    defaults = ",".join(f"{key}={value}" for key, value in T2V_DEFAULTS.items())
    flags = argparse.Namespace(t2v_lora=[f"{lora_id}:{scale}"], t2v_defaults=defaults)
    return with_model_defaults(specs, flags)


@pytest.fixture(scope="package")
def e2e_backend(serve_cluster, tmp_path_factory, e2e_lora_dir) -> str:
    """The tiny T2V + I2V app on the shared Serve instance, under /e2e: T2V on the diffusers
    engine, I2V on fastvideo (through the test-only CPU shim), so the UI meets both engines.
    It requires an API key, as a shared server would. T2V has a default LoRA and overridden
    sampling defaults (T2V_DEFAULT_LORA, T2V_DEFAULTS)."""

    from videoserve.client import VideoClient
    from videoserve.serve.deployments import deploy, undeploy

    specs = build_specs("tiny", gpu_count=0)
    specs["i2v"] = replace(specs["i2v"], engine="fastvideo")
    settings = Settings(models=with_t2v_defaults(specs),
                        output_path=tmp_path_factory.mktemp("e2e-out"),
                        api_keys=(API_KEY, OTHER_KEY), admin_api_keys=(ADMIN_KEY,),
                        model_dir=tmp_path_factory.getbasetemp(), lora_dir=e2e_lora_dir)
    deploy(settings, "e2e", "/e2e")
    url = serve_cluster.url + "/e2e"
    # serve.run returns once the replicas are up; the models must answer "ready" too.
    VideoClient(url).wait_ready(timeout=120, poll_s=0.5)  # /ready needs no key
    assert requests.get(url + "/v1/videos", timeout=30).status_code == 401
    yield url
    undeploy("e2e")


@pytest.fixture(scope="package")
def ui_server(e2e_backend, tmp_path_factory) -> UiServer:
    """The Gradio UI (``videoserve.ui.app``) launched in-process against the prefixed backend."""
    from videoserve.ui.app import UiConfig, build_ui

    assets = tmp_path_factory.mktemp("ui-assets")
    demo = build_ui(UiConfig(e2e_backend, api_key=API_KEY), assets)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                        allowed_paths=[str(assets)], show_error=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    assert requests.get(url, timeout=30).status_code == 200
    yield UiServer(url=url, backend_url=e2e_backend)
    demo.close()
