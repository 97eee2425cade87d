"""A burst of video creates on the tiny models: what is accepted completes, what is refused is
refused fast.

Starts a tiny backend in this process (diffusers engine on the CPU, default queue limit of 64
jobs per model), fires ``--requests`` POST /v1/videos from ``--threads`` threads at once
(16x16, 5 frames, 1 step), waits for every accepted job and prints the outcome and latencies.

    python benchmarks/burst.py [--requests 300 --threads 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--port", type=int, default=8779)
    args = parser.parse_args()

    import ray
    from ray import serve

    from videoserve.core.config import Settings
    from videoserve.serve.deployments import deploy
    from videoserve.serve.presets import build_specs

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    url = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as out:
        deploy(Settings(models=build_specs("tiny", gpu_count=0), output_path=Path(out)),
               "burst", "/")
        while requests.get(url + "/ready", timeout=10).status_code != 200:
            time.sleep(0.2)
        body = {"prompt": "burst", "num_frames": 5, "height": 16, "width": 16,
                "num_inference_steps": 1}

        def create(i: int) -> tuple[int, str | None, str | None, float]:
            start = time.perf_counter()
            response = requests.post(url + "/v1/videos", json={**body, "seed": i}, timeout=60)
            elapsed = time.perf_counter() - start
            payload = response.json()
            return (response.status_code, payload.get("id"),
                    response.headers.get("retry-after"), elapsed)

        start = time.perf_counter()
        with ThreadPoolExecutor(args.threads) as pool:
            answers = list(pool.map(create, range(args.requests)))
        burst_s = time.perf_counter() - start
        accepted = [a for a in answers if a[0] == 200]
        refused = [a for a in answers if a[0] != 200]
        statuses: dict[str, int] = {}
        for _, job_id, _, _ in accepted:
            while (job := requests.get(f"{url}/v1/videos/{job_id}", timeout=10).json())[
                    "status"] in ("queued", "in_progress"):
                time.sleep(0.1)
            statuses[job["status"]] = statuses.get(job["status"], 0) + 1
        serve.shutdown()
        ray.shutdown()
    codes = sorted({a[0] for a in refused})
    with_retry_after = sum(1 for a in refused if a[2] and int(a[2]) >= 1)
    print(f"{args.requests} creates from {args.threads} threads in {burst_s:.2f} s")
    print(f"accepted {len(accepted)}: final states {statuses}")
    print(f"refused {len(refused)}: status codes {codes}, with Retry-After {with_retry_after}")
    for name, group in (("refusal", refused), ("acceptance", accepted)):
        times = [a[3] * 1000 for a in group]
        if times:
            print(f"{name} latency ms: p50 {statistics.median(times):.1f}  "
                  f"p99 {percentile(times, 0.99):.1f}  max {max(times):.1f}")


if __name__ == "__main__":
    main()
