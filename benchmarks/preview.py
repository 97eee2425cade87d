"""What live previews cost a denoising step: jobs with previews on and off, and the preview itself.

One model is deployed (in this process's Ray, as the backend would deploy it). After a warm-up
job, pairs of jobs go through ``POST /v1/videos``, one with live previews (the default) and one
with ``"preview": false``, in alternating order (on/off, off/on, ...) so that a drift of the
machine falls on both; each job has a new seed, so nothing comes from the result cache. Each
job's seconds a step come from its event stream (``GET /v1/videos/{id}/events``): the time from
its first denoising step to its last over the steps between. Then, in this process on the same
device, the preview itself is timed on a latent of the job's shape: the 16 -> 3 projection, the
copy to the host and the WebP, one frame (what the server sends) and, where Pillow can write
animated WebP, every latent frame.

Printed: per-step medians with and without previews and their ratio, the spread of the jobs
without previews (the noise of the job-level figure), and the preview's milliseconds against a
step (its cost per step: at most one preview a step, at most two a second). Synthetic
random-weight models make noise videos: the times are real, the pictures are not.

    python -m videoserve.tiny_models --size full --out /data/full --tasks t2v i2v
    python benchmarks/preview.py --model /data/full/synthetic-fastwan2.1-t2v-1.3b --task t2v
    python benchmarks/preview.py --model /data/full/synthetic-wan2.1-i2v-14b-480p --task i2v \\
        --steps 6 --pairs 2
    python benchmarks/preview.py --tiny --pairs 3      # CPU: the tiny model, diffusers engine
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import (  # noqa: E402
    add_model_args,
    deploy_in_process,
    environment,
    job_body,
    log,
    model_args,
    model_spec,
    scratch_folder,
)


def deploy_model(args, out: Path) -> str:
    from videoserve.core.config import Settings

    return deploy_in_process(Settings(models={args.task: model_spec(args)}, output_path=out),
                             "preview", gpus=0 if args.tiny else 1)


def body_for(args, seed: int, preview: bool) -> dict:
    body = {**job_body(args, seed), "preview": preview}
    if args.steps:
        body["num_inference_steps"] = args.steps
    return body


def follow_events(url: str, job_id: str) -> tuple[dict, dict[int, float], set[int]]:
    """The job's event stream to its end: the final job, when each denoising step was first
    reported, and the steps a preview was made at."""
    steps: dict[int, float] = {}
    previews: set[int] = set()
    event, final = None, {}
    with requests.get(f"{url}/v1/videos/{job_id}/events", stream=True, timeout=600) as answer:
        answer.raise_for_status()
        for line in answer.iter_lines(decode_unicode=True):
            now = time.perf_counter()
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: "):])
                if event == "progress":
                    if data.get("stage") == "denoising" and data.get("step"):
                        steps.setdefault(data["step"], now)
                    if data.get("preview_step"):
                        previews.add(data["preview_step"])
                else:
                    final = data
    return final, steps, previews


def per_step(steps: dict[int, float]) -> float | None:
    """Seconds a step between the first step reported and the last."""
    if len(steps) < 2:
        return None
    first, last = min(steps), max(steps)
    return (steps[last] - steps[first]) / (last - first)


def one_job(url: str, args, seed: int, preview: bool) -> dict:
    begin = time.perf_counter()
    job = requests.post(url + "/v1/videos", json=body_for(args, seed, preview), timeout=60).json()
    if "id" not in job:
        raise RuntimeError(f"the job was refused: {job}")
    final, steps, previews = follow_events(url, job["id"])
    seconds = per_step(steps)
    return {"preview": preview, "status": final.get("status"),
            "job_s": round(time.perf_counter() - begin, 3),
            "per_step_s": None if seconds is None else round(seconds, 4),
            "steps_seen": len(steps), "previews": len(previews), "error": final.get("error")}


def measure_jobs(url: str, args) -> list[dict]:
    log("warm-up job: " + json.dumps(one_job(url, args, 99, True)))
    jobs = []
    for pair in range(args.pairs):
        order = (True, False) if pair % 2 == 0 else (False, True)
        for preview in order:
            jobs.append(one_job(url, args, 100 + len(jobs), preview))
            log(json.dumps(jobs[-1]))
    return jobs


def latent_shape(args) -> tuple[int, ...]:
    if args.tiny:
        return (1, 16, 3, 8, 8)
    return (1, 16, (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)


def time_ms(fn, repeats: int, sync) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        begin = time.perf_counter()
        fn()
        times.append((time.perf_counter() - begin) * 1000)
    return round(statistics.median(times), 2)


def animated_webp_supported() -> bool:
    """Whether this Pillow writes animated WebP (tried: its feature names changed over time)."""
    from PIL import Image

    frames = [Image.new("RGB", (8, 8), (shade, 0, 0)) for shade in (0, 255)]
    try:
        frames[0].save(io.BytesIO(), format="WEBP", save_all=True, append_images=frames[1:])
    except (OSError, ValueError, KeyError):
        return False
    return True


def measure_preview(args) -> dict:
    """The preview on a latent of the job's shape, on the device the model ran on."""
    import torch
    from PIL import Image

    from videoserve.engines.preview import SCALE, LatentPreview

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    previewer = LatentPreview(args.model)
    deadline = time.monotonic() + 300
    while previewer.matrix is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if previewer.matrix is None:
        raise RuntimeError("the preview projection was not fitted")
    latents = torch.randn(latent_shape(args), device=device, dtype=torch.bfloat16)
    out = {"device": device, "latent_shape": list(latents.shape),
           "one_frame_ms": time_ms(lambda: previewer.webp(latents), args.repeats, sync),
           "one_frame_bytes": len(previewer.webp(latents)),
           "animated_webp_supported": animated_webp_supported()}
    if out["animated_webp_supported"]:
        matrix = torch.as_tensor(previewer.matrix, device=device)
        bias = torch.as_tensor(previewer.bias, device=device)

        def animated() -> bytes:
            rgb = torch.einsum("cfhw,cd->fhwd", latents[0, :16].float(), matrix) + bias
            frames = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
            images = [Image.fromarray(f).resize((f.shape[1] * SCALE, f.shape[0] * SCALE),
                                                Image.BILINEAR) for f in frames]
            buffer = io.BytesIO()
            images[0].save(buffer, format="WEBP", save_all=True, append_images=images[1:],
                           duration=125, loop=0, quality=80)
            return buffer.getvalue()

        out["all_frames_ms"] = time_ms(animated, args.repeats, sync)
        out["all_frames_bytes"] = len(animated())
    return out


def summary(jobs: list[dict], preview: dict) -> dict:
    def steps(on: bool) -> list[float]:
        return [j["per_step_s"] for j in jobs if j["preview"] is on and j["per_step_s"]]

    on, off = steps(True), steps(False)
    out = {"jobs": len(jobs), "failed": sum(j["status"] != "completed" for j in jobs),
           "previews_per_job": [j["previews"] for j in jobs if j["preview"]],
           "per_step_on_s": round(statistics.median(on), 4) if on else None,
           "per_step_off_s": round(statistics.median(off), 4) if off else None,
           "preview_one_frame_ms": preview["one_frame_ms"],
           "preview_all_frames_ms": preview.get("all_frames_ms"),
           "animated_webp_supported": preview["animated_webp_supported"]}
    if on and off:
        out["on_over_off_per_step"] = round(out["per_step_on_s"] / out["per_step_off_s"], 4)
        out["off_spread"] = round(max(off) / min(off), 4)
        step_ms = out["per_step_off_s"] * 1000
        out["preview_share_of_step"] = round(preview["one_frame_ms"] / step_ms, 4)
        if preview.get("all_frames_ms"):
            out["animated_share_of_step"] = round(preview["all_frames_ms"] / step_ms, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser, default_task="t2v")
    parser.add_argument("--steps", type=int, default=None, help="num_inference_steps per job")
    parser.add_argument("--pairs", type=int, default=3, help="jobs with and without previews")
    parser.add_argument("--repeats", type=int, default=20, help="timed previews")
    args = model_args(parser)
    if args.tiny:
        args.steps = args.steps or 20
    with scratch_folder() as tmp:
        url = deploy_model(args, Path(tmp) / "out")
        jobs = measure_jobs(url, args)
    from ray import serve

    serve.shutdown()  # the GPU to the preview's own measurement
    preview = measure_preview(args)
    log(json.dumps(preview))
    result = {"command": "python " + " ".join(sys.argv), "environment": environment(),
              "jobs": jobs, "preview": preview, "summary": summary(jobs, preview)}
    print(json.dumps(result["summary"], indent=2), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
