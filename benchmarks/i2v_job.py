"""One full I2V job through the HTTP API in a speed mode, as a user runs it.

Starts the backend (`ray_serve_backend.py --preset fastwan --tasks i2v`, the given model folder,
`--i2v_speed`), waits for /ready, shows /v1/placement, then creates a job on `POST /v1/videos`
at the model's defaults (480x832, 81 frames, 40 steps, guidance 5) and follows it to the end:
seconds from the create to `completed` and seconds a step read from its progress. The backend's
log (``--log``) has the step cache's count of skipped steps. Full-size random-weight folders
make noise videos: the times are real, the pictures are not.

    python -m videoserve.tiny_models --size full --out /data/full --tasks i2v
    python benchmarks/i2v_job.py --model /data/full/synthetic-wan2.1-i2v-14b-480p --speed fast
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import time
from pathlib import Path

import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import ROOT, follow_job, served_backend  # noqa: E402 - after the path insert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a local Wan I2V model folder")
    parser.add_argument("--speed", choices=["quality", "fast"], default="quality")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's (40)")
    parser.add_argument("--log", default="i2v_job-backend.log", help="the backend's output")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    start = time.perf_counter()
    backend = ["--preset", "fastwan", "--tasks", "i2v", "--i2v_model_path", args.model,
               "--i2v_speed", args.speed, "--output_path", str(ROOT / "test-output" / "i2v_job")]
    with served_backend(backend, Path(args.log), ready_timeout=900) as url:
        ready_s = time.perf_counter() - start
        placement = requests.get(url + "/v1/placement", timeout=30).json()
        print(json.dumps({"ready_s": round(ready_s, 1), "placement": placement}), flush=True)
        png = io.BytesIO()
        Image.new("RGB", (832, 480), (90, 120, 160)).save(png, format="PNG")
        body = {"prompt": "the picture moves", "model_type": "i2v", "seed": 7,
                "image": base64.b64encode(png.getvalue()).decode()}
        if args.steps:
            body["num_inference_steps"] = args.steps
        begin = time.perf_counter()
        job, per_step = follow_job(
            url, requests.post(url + "/v1/videos", json=body, timeout=60).json())
        result = {"speed": args.speed, "status": job.get("status"),
                  "job_s": round(time.perf_counter() - begin, 1), "per_step_s": per_step,
                  "error": job.get("error"), "ready_s": round(ready_s, 1),
                  "models": requests.get(url + "/v1/models", timeout=30).json().get("data")}
    print(json.dumps(result, default=str), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({**result, "placement": placement}, indent=2,
                                              default=str))


if __name__ == "__main__":
    main()
