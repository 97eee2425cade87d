"""Serving overhead on the tiny models: HTTP end-to-end time / direct engine call time.

Both sides generate the same request (same model, size, frames, steps, seed, thread count) on
this machine. The served figure is a full POST /generate_video (validation, Ray Serve hops, the
generation, MP4 encoding, writing the file); the direct figure is one ``engine.generate`` call.

    python benchmarks/serving_overhead.py [--runs 7] [--height 128 --width 128 --frames 17]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import requests


def direct_times(spec, params, runs: int) -> list[float]:
    from videoserve.engines import create_engine

    engine = create_engine(spec)
    engine.generate(params, lambda *_: None, lambda: False)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        engine.generate(params, lambda *_: None, lambda: False)
        times.append(time.perf_counter() - start)
    engine.close()
    return times


def served_times(settings, body: dict, runs: int, port: int, threads: int) -> list[float]:
    import ray
    from ray import serve

    from videoserve.serve.deployments import deploy

    ray.init(num_cpus=threads + 1, num_gpus=settings.models["t2v"].num_gpus and 1,
             include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads)}})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deploy(settings, "bench", "/")
    url = f"http://127.0.0.1:{port}/generate_video"
    try:
        requests.post(url, json=body, timeout=600).raise_for_status()  # warm-up
        times = []
        for run in range(runs):
            # A new seed each time: identical requests with a fixed seed are served from cache.
            start = time.perf_counter()
            response = requests.post(url, json={**body, "seed": 1000 + run}, timeout=600)
            times.append(time.perf_counter() - start)
            response.raise_for_status()
            assert not response.json()["cached"]
        return times
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--engine", choices=("diffusers", "fastvideo"), default="diffusers")
    args = parser.parse_args()

    import torch

    from videoserve.core.config import Settings
    from videoserve.engines import GenerationParams
    from videoserve.serve.placement import cuda_gpu_count
    from videoserve.serve.presets import build_specs

    torch.set_num_threads(args.threads)
    spec = build_specs("tiny", engine=args.engine, gpu_count=cuda_gpu_count(),
                       tasks=("t2v",))["t2v"]
    shape = dict(height=args.height, width=args.width, num_frames=args.frames,
                 num_inference_steps=args.steps, guidance_scale=1.0, fps=8, seed=1)
    params = GenerationParams(prompt="a lighthouse at dusk", negative_prompt="", **shape)
    direct = direct_times(spec, params, args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(models={"t2v": spec}, output_path=Path(tmp))
        body = {"prompt": params.prompt, "model_type": "t2v", **shape}
        served = served_times(settings, body, args.runs, args.port, args.threads)
    d, s = statistics.median(direct), statistics.median(served)
    print(f"tiny T2V on {spec.device} via {spec.engine}, {args.width}x{args.height}, "
          f"{args.frames} frames, {args.steps} steps, "
          f"{args.threads} threads, {args.runs} warm runs each (median)")
    print(f"direct engine call : {d * 1000:8.1f} ms   runs: {[round(t, 3) for t in direct]}")
    print(f"served HTTP e2e    : {s * 1000:8.1f} ms   runs: {[round(t, 3) for t in served]}")
    print(f"ratio served/direct: {s / d:.3f}  (goal <= 1.5)")


if __name__ == "__main__":
    main()
