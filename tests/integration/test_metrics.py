"""GET /metrics and the probes' quiet access logs on the real Ray Serve app (CPU, tiny T2V)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_jobs_api import LONG, create, finished, poll_until
from videoserve.core.config import Settings
from videoserve.serve.presets import build_specs

APP = "observe"
SMALL = {"num_frames": 5, "height": 32, "width": 32, "num_inference_steps": 4}


@pytest.fixture(scope="module")
def observed(serve_cluster, tmp_path_factory):
    from ray import serve

    from videoserve.serve.deployments import build_app

    specs = build_specs("tiny", gpu_count=0, tasks=("t2v",))
    # One job may wait: the next one is refused, which the refusal counter must show.
    specs = {"t2v": replace(specs["t2v"], max_queued_requests=1)}
    settings = Settings(models=specs, output_path=tmp_path_factory.mktemp("observe"))
    serve.run(build_app(settings), name=APP, route_prefix="/" + APP)
    yield serve_cluster.url + "/" + APP, specs["t2v"].model
    serve.delete(APP)


def scrape(url: str) -> dict[str, list]:
    """Samples by family name, from the exposition as Prometheus parses it."""
    response = requests.get(url + "/metrics", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {family.name: family.samples
            for family in text_string_to_metric_families(response.text)}


def sample(families: dict, family: str, name: str | None = None, **labels) -> float:
    """The value of the one sample of ``family`` with these labels (0 when there is none)."""
    found = [s.value for s in families.get(family, [])
             if s.name == (name or family) and labels.items() <= s.labels.items()]
    assert len(found) <= 1, (family, labels, found)
    return found[0] if found else 0.0


def test_metrics_count_jobs_and_time_them(observed):
    url, model = observed
    t2v = {"task": "t2v", "model": model}
    before = scrape(url)

    def moved(after: dict, status: str) -> float:
        return (sample(after, "videoserve_jobs", "videoserve_jobs_total", **t2v, status=status)
                - sample(before, "videoserve_jobs", "videoserve_jobs_total", **t2v,
                         status=status))

    running = create(url, {"prompt": "a long one", **LONG})
    poll_until(url, running["id"], lambda s: s["progress_detail"]["step"] >= 1)
    queued = create(url, {"prompt": "waiting", **SMALL})
    refused = requests.post(url + "/v1/videos", json={"prompt": "one too many", **SMALL},
                            timeout=30)
    assert refused.status_code == 429
    during = scrape(url)
    assert sample(during, "videoserve_jobs_running", **t2v) == 1
    assert sample(during, "videoserve_queue_depth", **t2v) == 1
    assert sample(during, "videoserve_replicas_running", **t2v) == 1
    assert sample(during, "videoserve_ready", **t2v) == 1
    assert (sample(during, "videoserve_jobs_refused", "videoserve_jobs_refused_total", **t2v)
            - sample(before, "videoserve_jobs_refused", "videoserve_jobs_refused_total",
                     **t2v)) == 1

    for job in (queued, running):
        requests.post(f"{url}/v1/videos/{job['id']}/cancel", timeout=60).raise_for_status()
        # A running job turns cancelled when its generator stops (the cancel answers at once).
        assert poll_until(url, job["id"], finished)[-1]["status"] == "cancelled"
    completed = [create(url, {"prompt": f"small {i}", **SMALL}) for i in range(2)]
    for job in completed:
        assert poll_until(url, job["id"], finished)[-1]["status"] == "completed"

    after = scrape(url)
    assert moved(after, "completed") == 2
    assert moved(after, "cancelled") == 2
    assert moved(after, "failed") == 0
    submitted = ("videoserve_jobs_submitted", "videoserve_jobs_submitted_total")
    assert sample(after, *submitted, **t2v) - sample(before, *submitted, **t2v) == 4
    assert sample(after, "videoserve_queue_depth", **t2v) == 0
    assert sample(after, "videoserve_jobs_running", **t2v) == 0
    for family, labels in (("videoserve_queue_wait_seconds", t2v),
                           ("videoserve_stage_seconds", {**t2v, "stage": "denoising"}),
                           ("videoserve_job_seconds", t2v),
                           ("videoserve_denoising_steps_per_second", t2v)):
        buckets = [s for s in after[family] if s.name == family + "_bucket"
                   and labels.items() <= s.labels.items()]
        assert {s.labels["le"] for s in buckets} >= {"0.1", "+Inf"}, family
        assert max(s.value for s in buckets) >= 2, family  # the two completed jobs at least
    # Both completed jobs went through every stage of the diffusers engine; the long one left
    # encoding_prompt before it was cancelled while denoising (that cut-short stage is left out).
    for stage, jobs in (("encoding_prompt", 3), ("denoising", 2), ("decoding", 2),
                        ("encoding_video", 2)):
        count = sample(after, "videoserve_stage_seconds", "videoserve_stage_seconds_count",
                       **t2v, stage=stage)
        assert count - sample(before, "videoserve_stage_seconds",
                              "videoserve_stage_seconds_count", **t2v, stage=stage) == jobs, stage


def ingress_log_files() -> list[Path]:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return sorted(logs.glob(f"replica_{APP}_Ingress_*.log"))


def test_probes_are_not_in_the_access_log(observed):
    url, _ = observed
    for _ in range(5):
        for path in ("/ready", "/health", "/metrics"):
            assert requests.get(url + path, timeout=30).status_code == 200
    assert requests.get(url + "/v1/models", timeout=30).status_code == 200
    # The /v1/models line shows the access log is written (and flushed) at all.
    deadline, text = time.monotonic() + 30, ""
    while time.monotonic() < deadline:
        text = "".join(p.read_text(errors="replace") for p in ingress_log_files())
        if f"GET /{APP}/v1/models 200" in text:
            break
        time.sleep(0.2)
    assert f"GET /{APP}/v1/models 200" in text, ingress_log_files()
    for path in ("/ready", "/health", "/metrics"):
        assert f"GET /{APP}{path} " not in text, path
