"""Serving overhead of the fastvideo engine on one GPU: raw fastvideo vs the engine vs HTTP.

Three ways to make the same video, one after another in this process tree on one GPU, with the
same model folder, parameters and seeds (seed 1000 + run; a new seed per run, so the service's
result cache never answers):

1. raw:    fastvideo's ``VideoGenerator.from_pretrained`` (its own spawned worker) and
           ``generate_video(..., return_frames=True, save_video=False)``: frames in host memory;
2. engine: the project's ``FastVideoEngine`` without Ray: pipeline in-process in its child,
           MP4 encoded while the VAE decodes, MP4 bytes back;
3. served: ``POST /generate_video`` on the Ray Serve app, until the JSON answer (the MP4 is
           written under the output folder by then).

Warm medians of ``--runs`` runs each (one warm-up first), ratios against raw, and the engine's
stage start times. Model folders: any local Wan folder, or ``--build-full DIR`` to build the
full-size random-weight FastWan (synthetic: its videos are noise).

    python benchmarks/gpu_e2e.py --build-full /tmp/full-models --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import requests

PROMPT = "a red fox running through fresh snow at dawn"


def fastwan_options(args: argparse.Namespace) -> dict:
    from videoserve.engines.fastvideo.options import NO_OFFLOAD

    options = dict(NO_OFFLOAD)
    if args.attention:
        options["attention_backend"] = args.attention
    if args.vsa is not None:
        options["VSA_sparsity"] = args.vsa
    return options


def shape(args: argparse.Namespace) -> dict:
    return dict(height=args.height, width=args.width, num_frames=args.frames,
                num_inference_steps=args.steps, guidance_scale=1.0, fps=16)


def raw_times(args: argparse.Namespace, model: str) -> list[float]:
    options = fastwan_options(args)
    if "attention_backend" in options:
        os.environ["FASTVIDEO_ATTENTION_BACKEND"] = options.pop("attention_backend")
    from fastvideo import VideoGenerator

    start = time.perf_counter()
    generator = VideoGenerator.from_pretrained(model, num_gpus=1, **options)
    print(f"raw: loaded in {time.perf_counter() - start:.1f} s", flush=True)
    times = []
    for run in range(args.runs + 1):
        start = time.perf_counter()
        result = generator.generate_video(PROMPT, seed=1000 + run, save_video=False,
                                          return_frames=True, negative_prompt="", **shape(args))
        elapsed = time.perf_counter() - start
        assert len(result["frames"]) == args.frames
        if run:
            times.append(elapsed)
    generator.shutdown()
    os.environ.pop("FASTVIDEO_ATTENTION_BACKEND", None)
    return times


def engine_times(args: argparse.Namespace, model: str) -> tuple[list[float], dict]:
    from videoserve.core.media import probe_mp4
    from videoserve.engines import GenerationParams
    from videoserve.engines.fastvideo.engine import FastVideoEngine

    start = time.perf_counter()
    engine = FastVideoEngine(model, "t2v", "cuda", fastwan_options(args))
    print(f"engine: loaded in {time.perf_counter() - start:.1f} s", flush=True)
    times, stages, tails = [], [], []
    for run in range(args.runs + 1):
        params = GenerationParams(prompt=PROMPT, negative_prompt="", seed=1000 + run,
                                  **shape(args))
        marks: dict[str, float] = {}
        start = time.perf_counter()

        def mark(stage: str, step: int, total: int, marks=marks, start=start) -> None:
            marks.setdefault(stage, time.perf_counter() - start)

        output = engine.generate(params, mark, lambda: False)
        elapsed = time.perf_counter() - start
        if run:
            times.append(elapsed)
            stages.append(marks)
            tails.append(output.encoding_time)
    info = probe_mp4(output.mp4)
    assert (info.frames, info.width, info.height) == (args.frames, args.width, args.height)
    engine.close()
    median_marks = {k: statistics.median(m[k] for m in stages) for k in stages[0]}
    return times, {"stage_starts_s": median_marks,
                   "encoding_tail_s": statistics.median(tails)}


def served_times(args: argparse.Namespace, model: str,
                 options: dict | None = None) -> tuple[list[float], dict, float]:
    import ray
    from ray import serve

    from videoserve.core.config import Settings
    from videoserve.serve.deployments import deploy
    from videoserve.serve.presets import build_specs

    spec = build_specs("fastwan", t2v_model=model, gpu_count=1, tasks=("t2v",))["t2v"]
    spec = replace(spec, engine_options=options or fastwan_options(args), synthetic=True)
    ray.init(num_cpus=8, num_gpus=1, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    url = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        deploy(Settings(models={"t2v": spec}, output_path=Path(out)), "bench", "/")
        ready_s = time.perf_counter() - start
        try:
            times, inference, first_s = [], [], None
            for run in range(args.runs + 1):
                body = {"prompt": PROMPT, "model_type": "t2v", "seed": 1000 + run,
                        "negative_prompt": "", **shape(args)}
                start = time.perf_counter()
                response = requests.post(url + "/generate_video", json=body, timeout=600)
                elapsed = time.perf_counter() - start
                response.raise_for_status()
                result = response.json()
                assert not result["cached"] and result["num_frames"] == args.frames
                if run:
                    times.append(elapsed)
                    inference.append(result)
                else:
                    # Not in the medians, but shown: a first request that compiled something
                    # the warm-up at load missed would stand out here.
                    first_s = elapsed
        finally:
            serve.shutdown()
            ray.shutdown()
    detail = {k: statistics.median(r[k] for r in inference)
              for k in ("inference_time", "encoding_time", "total_time")}
    detail["first_request_s"] = round(first_s, 3)
    return times, detail, ready_s


def build_full(folder: str) -> str:
    from videoserve.devtools.tiny_models import ensure_full_models

    start = time.perf_counter()
    path = ensure_full_models(Path(folder), tasks=("t2v",))["t2v"]
    print(f"full-size random-weight FastWan at {path} ({time.perf_counter() - start:.0f} s)")
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local Wan T2V (FastWan) model folder")
    parser.add_argument("--build-full", metavar="DIR",
                        help="build (or reuse) the full-size random-weight FastWan in DIR")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--attention", default="VIDEO_SPARSE_ATTN")
    parser.add_argument("--vsa", type=float, default=0.8)
    parser.add_argument("--port", type=int, default=8777)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    model = args.model or (build_full(args.build_full) if args.build_full else None)
    if model is None:
        parser.error("give --model or --build-full")

    raw = raw_times(args, model)
    engine, engine_detail = engine_times(args, model)
    served, served_detail, ready_s = served_times(args, model)
    r, e, s = (statistics.median(t) for t in (raw, engine, served))
    import torch

    print(f"\n{torch.cuda.get_device_name(0)}; {args.width}x{args.height}, {args.frames} frames, "
          f"{args.steps} steps, attention {args.attention} (VSA {args.vsa}); "
          f"warm medians of {args.runs}")
    print(f"raw fastvideo      : {r:7.3f} s   runs {[round(t, 3) for t in raw]}")
    print(f"engine (no Ray)    : {e:7.3f} s   runs {[round(t, 3) for t in engine]}")
    print(f"served HTTP        : {s:7.3f} s   runs {[round(t, 3) for t in served]}")
    print(f"ratio engine/raw   : {e / r:.3f}")
    print(f"ratio served/raw   : {s / r:.3f}  (goal <= 1.03)")
    print(f"engine stage starts: {json.dumps(engine_detail)}")
    print(f"served detail      : {json.dumps(served_detail)}; start to ready {ready_s:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": torch.cuda.get_device_name(0), "raw": raw, "engine": engine,
            "served": served, "engine_detail": engine_detail, "served_detail": served_detail,
            "ready_s": ready_s, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
