"""Two GPUs: FastWan throughput with 1 vs 2 replicas, I2V-14B seconds per step with sp_size 1 vs 2.

One command on a machine with two CUDA GPUs, within about 8 minutes:

1. builds (or reuses) the full-size random-weight models under --models (synthetic: their
   videos are noise), each in a subprocess so this process never holds GPU memory;
2. replicas: the backend (``ray_serve_backend.py`` as a subprocess, fastwan preset, T2V only)
   with --replicas 1, then 2; one warm-up request per replica, then --videos videos from
   --clients concurrent HTTP clients; videos per second and the 2/1 ratio (goal >= 1.9);
3. sp: the I2V-14B engine built directly (no Ray) with sp_size 1, then 2; one warm-up run,
   then one run whose per-step times come from the progress callbacks (the first step
   excluded); the sp2/sp1 ratio (goal <= 0.55); with sp_size 2 also a cancel mid-denoise.

Every configuration's processes exit before the next starts (GPU memory is polled back to
idle); results go to --json after each configuration, and a summary block ends the output.

    python benchmarks/multi_gpu.py --models /tmp/full --json /tmp/multi_gpu.json
    python benchmarks/multi_gpu.py --dry-run          # the plan, without a GPU
    python benchmarks/multi_gpu.py --cpu-smoke        # the replicas part's machinery, tiny models
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

# This checkout's videoserve, whatever else is installed; then the benchmarks' helpers.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from helpers import (  # noqa: E402 - after the path insert
    ROOT,
    environment,
    gpu_memory_gib,
    log,
    served_backend,
    wait_for_free_gpus,
)

GOAL_REPLICAS = 1.9  # videos/s with 2 replicas over videos/s with 1: at least
GOAL_SP = 0.55  # s/step with sp_size 2 over s/step with sp_size 1: at most
PROMPT = "a red fox running through fresh snow at dawn"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="folder of the full-size models (built if missing)")
    parser.add_argument("--json", help="write the results here (rewritten after each step)")
    parser.add_argument("--part", choices=("replicas", "sp", "both"), default="both")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument("--videos", type=int, default=8, help="videos per replicas setting")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=3, help="FastWan steps")
    parser.add_argument("--i2v_steps", type=int, default=3, help="I2V steps of the measured run")
    parser.add_argument("--guidance", type=float, default=5.0, help="I2V guidance scale")
    parser.add_argument("--ready_timeout", type=float, default=300.0)
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run the replicas part with the tiny models on the CPU "
                             "(diffusers engine, 64x64, 9 frames): checks this script")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.part, args.height, args.width, args.frames, args.steps = "replicas", 64, 64, 9, 2
        args.videos, args.clients = min(args.videos, 4), min(args.clients, 2)
    elif not args.dry_run and not args.models:
        parser.error("--models is required (or --dry-run / --cpu-smoke)")
    return args


def parts(args: argparse.Namespace) -> list[str]:
    return ["replicas", "sp"] if args.part == "both" else [args.part]


def plan(args: argparse.Namespace) -> dict:
    """What this run will do: the backend commands and the engines' placement (the same
    resolution as the backend's flags)."""
    from videoserve.serve.presets import build_specs

    steps = {}
    if "replicas" in parts(args):
        for replicas in (1, 2):
            specs = build_specs("tiny" if args.cpu_smoke else "fastwan", tasks=("t2v",),
                                replicas=replicas, gpu_count=0 if args.cpu_smoke else 2,
                                t2v_model=None if args.cpu_smoke else "<models>/t2v")
            steps[f"replicas={replicas}"] = {
                "backend_args": backend_args(args, "<models>/t2v", replicas),
                "num_gpus_per_replica": specs["t2v"].num_gpus,
                "warmup_requests": replicas, "videos": args.videos, "clients": args.clients}
    if "sp" in parts(args):
        for sp in (1, 2):
            spec = i2v_spec("<models>/i2v", sp, gpus=2)
            steps[f"sp_size={sp}"] = {"engine_options": spec.engine_options,
                                      "num_gpus": spec.num_gpus, "warmup_steps": 1,
                                      "measured_steps": args.i2v_steps,
                                      "cancel_check": sp > 1}
    return {"parts": parts(args), "size": f"{args.width}x{args.height}x{args.frames}",
            "steps": steps}


def backend_args(args: argparse.Namespace, model: str, replicas: int) -> list[str]:
    if args.cpu_smoke:
        return ["--preset", "tiny", "--tasks", "t2v", "--replicas", str(replicas),
                "--num_cpus", "8"]
    return ["--preset", "fastwan", "--tasks", "t2v", "--t2v_model_path", model,
            "--replicas", str(replicas)]


def i2v_spec(model: str, sp: int, gpus: int):
    from videoserve.serve.presets import build_specs

    return build_specs("fastwan", i2v_model=model, gpu_count=gpus, tasks=("i2v",),
                       sp_sizes={"i2v": sp})["i2v"]


def build_models(folder: Path, tasks: tuple[str, ...]) -> dict[str, Path]:
    """Build what is missing in a subprocess (its GPU memory goes with it)."""
    from videoserve.devtools.tiny_models import FULL, is_complete

    paths = {task: folder / FULL.folder_names[task] for task in tasks}
    missing = [task for task, path in paths.items() if not is_complete(path, FULL)]
    if missing:
        log(f"building full-size {', '.join(missing)} in {folder}")
        subprocess.run([sys.executable, "-m", "videoserve.devtools.tiny_models", "--size", "full",
                        "--out", str(folder), "--tasks", *tasks], cwd=ROOT, check=True)
    log(f"models ready: {', '.join(str(p) for p in paths.values())}")
    return paths


def post_all(url: str, bodies: list[dict], clients: int) -> tuple[list[dict], float]:
    """POST /generate_video for every body from ``clients`` threads; answers and wall time."""

    def post(body: dict) -> dict:
        begin = time.monotonic()
        try:
            response = requests.post(url + "/generate_video", json=body, timeout=600)
        except requests.RequestException as exc:
            return {"status": None, "s": time.monotonic() - begin, "error": repr(exc)[:300]}
        answer = {"status": response.status_code, "s": round(time.monotonic() - begin, 3)}
        if response.ok:
            data = response.json()
            answer.update({k: data.get(k) for k in ("inference_time", "encoding_time",
                                                    "queue_time", "num_frames", "cached")})
        else:
            answer["error"] = response.text[:300]
        return answer

    begin = time.monotonic()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        answers = list(pool.map(post, bodies))
    return answers, time.monotonic() - begin


def t2v_bodies(args: argparse.Namespace, seeds: range) -> list[dict]:
    # Distinct explicit seeds: the service's cache answers only identical requests.
    return [{"prompt": PROMPT, "model_type": "t2v", "seed": seed, "negative_prompt": "",
             "height": args.height, "width": args.width, "num_frames": args.frames,
             "num_inference_steps": args.steps} for seed in seeds]


def throughput(args: argparse.Namespace, model: str, replicas: int, workdir: Path) -> dict:
    out = workdir / f"outputs-r{replicas}"
    log_path = workdir / f"backend-r{replicas}.log"
    start = time.monotonic()
    log(f"replicas={replicas}: starting the backend (log {log_path})")
    result: dict = {"replicas": replicas}
    with served_backend([*backend_args(args, model, replicas), "--output_path", str(out)],
                        log_path, args.ready_timeout) as url:
        result["ready_s"] = round(time.monotonic() - start, 1)
        result["gpu_gib_after_load"] = gpu_memory_gib()
        log(f"replicas={replicas}: ready in {result['ready_s']} s; GPU GiB "
            f"{result['gpu_gib_after_load']}; warming up ({replicas} request(s) at once)")
        warm, warm_s = post_all(url, t2v_bodies(args, range(100, 100 + replicas)), replicas)
        result["warmup"] = {"s": round(warm_s, 2), "answers": warm}
        log(f"replicas={replicas}: warm-up {warm_s:.1f} s, statuses "
            f"{[a['status'] for a in warm]}; {args.videos} videos from {args.clients} clients")
        answers, wall = post_all(url, t2v_bodies(args, range(1000, 1000 + args.videos)),
                                 args.clients)
    ok = [a for a in answers if a["status"] == 200 and not a.get("cached")]
    result.update({"videos": args.videos, "ok": len(ok), "wall_s": round(wall, 3),
                   "videos_per_s": len(ok) / wall if wall else 0.0, "answers": answers,
                   "latency_median_s": median([a["s"] for a in ok]),
                   "inference_median_s": median([a["inference_time"] for a in ok])})
    log(f"replicas={replicas}: {len(ok)}/{args.videos} ok in {wall:.2f} s = "
        f"{result['videos_per_s']:.4f} videos/s (latency median {result['latency_median_s']} s,"
        f" inference median {result['inference_median_s']} s)")
    return result


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def replicas_part(args: argparse.Namespace, model: str, results: dict, save) -> None:
    section = results.setdefault("replicas", {})
    with tempfile.TemporaryDirectory(prefix="multi-gpu-") as tmp:
        for replicas in (1, 2):
            try:
                section[str(replicas)] = throughput(args, model, replicas, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - reported; the other parts still run
                section[str(replicas)] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"replicas={replicas}: FAILED {exc}")
                log_tail(Path(tmp) / f"backend-r{replicas}.log")
            log(f"GPU GiB after the backend stopped: {wait_for_free_gpus()}")
            save()
    one, two = (section.get(k, {}).get("videos_per_s") for k in ("1", "2"))
    section["ratio"] = two / one if one and two else None


def log_tail(path: Path, lines: int = 40) -> None:
    if path.exists():
        for line in path.read_text(errors="replace").splitlines()[-lines:]:
            print(f"    | {line}", flush=True)


def i2v_params(args: argparse.Namespace, steps: int, seed: int):
    from PIL import Image

    from videoserve.engines import GenerationParams

    image = Image.new("RGB", (args.width, args.height), (90, 120, 160))
    return GenerationParams(prompt=PROMPT, negative_prompt="", seed=seed,
                            guidance_scale=args.guidance, num_frames=args.frames,
                            height=args.height, width=args.width, num_inference_steps=steps,
                            fps=16, image=image)


def timed_run(engine, params) -> tuple[list[tuple[str, int, float]], float]:
    """One generation; its progress events with their time since the start."""
    marks: list[tuple[str, int, float]] = []
    begin = time.monotonic()
    engine.generate(params, lambda stage, step, total: marks.append(
        (stage, step, time.monotonic() - begin)), lambda: False)
    return marks, time.monotonic() - begin


def step_times(marks: list[tuple[str, int, float]]) -> list[float]:
    """Seconds of each denoising step, from the step events (step 0 marks the start)."""
    at = {step: t for stage, step, t in marks if stage == "denoising"}
    return [round(at[k] - at[k - 1], 3) for k in sorted(at) if k >= 1 and k - 1 in at]


def cancel_check(engine, args: argparse.Namespace, timeout: float = 180.0) -> dict:
    """A cancel after step 2 of 6 must stop every rank within a step, and the engine must
    serve the next job (checked by the caller's next run)."""
    from videoserve.engines import GenerationCancelled

    steps: list[int] = []
    asked: list[int] = []
    outcome: dict = {}

    def progress(stage: str, step: int, total: int) -> None:
        if stage == "denoising":
            steps.append(step)
            if step >= 2 and not asked:
                asked.append(step)

    def run() -> None:
        try:
            engine.generate(i2v_params(args, 6, seed=7), progress, lambda: bool(asked))
            outcome["result"] = "completed (not cancelled)"
        except GenerationCancelled:
            outcome["result"] = "cancelled"
        except Exception as exc:  # noqa: BLE001 - reported
            outcome["result"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=run, daemon=True)
    begin = time.monotonic()
    thread.start()
    thread.join(timeout)
    result = {"result": outcome.get("result", f"no answer within {timeout:.0f} s (hung)"),
              "asked_at_step": asked[0] if asked else None,
              "last_step": max(steps) if steps else None, "s": round(time.monotonic() - begin, 1)}
    result["ok"] = (result["result"] == "cancelled" and result["last_step"] is not None
                    and result["last_step"] - result["asked_at_step"] <= 1)
    return result


def per_step(args: argparse.Namespace, model: str, sp: int, gpus: int) -> dict:
    from videoserve.engines.fastvideo.engine import FastVideoEngine

    spec = i2v_spec(model, sp, gpus)
    log(f"sp_size={sp}: loading the I2V-14B (options {spec.engine_options})")
    begin = time.monotonic()
    engine = FastVideoEngine(model, "i2v", "cuda", spec.engine_options)
    result: dict = {"sp_size": sp, "load_s": round(time.monotonic() - begin, 1),
                    "gpu_gib_after_load": gpu_memory_gib(), "stats": engine.stats()}
    try:
        log(f"sp_size={sp}: loaded in {result['load_s']} s, GPU GiB "
            f"{result['gpu_gib_after_load']}; warm-up run (1 step)")
        _, warm_s = timed_run(engine, i2v_params(args, 1, seed=3))
        result["warmup_s"] = round(warm_s, 1)
        log(f"sp_size={sp}: warm-up {warm_s:.1f} s; measured run ({args.i2v_steps} steps)")
        marks, total = timed_run(engine, i2v_params(args, args.i2v_steps, seed=5))
        steps = step_times(marks)
        result.update({"total_s": round(total, 2), "step_s": steps,
                       "per_step_s": median(steps[1:] or steps),
                       "stage_starts_s": {s: round(t, 2) for s, _, t in reversed(marks)},
                       "peak_gib": engine.stats().get("last_peak_gib"),
                       "gpu_gib_after_run": gpu_memory_gib()})
        log(f"sp_size={sp}: {result['per_step_s']} s/step (steps {steps}, first excluded), "
            f"total {total:.1f} s, GPU GiB {result['gpu_gib_after_run']}")
        if sp > 1:
            result["cancel"] = cancel_check(engine, args)
            log(f"sp_size={sp}: cancel check {result['cancel']}")
            if result["cancel"]["result"] == "cancelled":
                _, after = timed_run(engine, i2v_params(args, 1, seed=9))
                result["after_cancel_s"] = round(after, 1)
                log(f"sp_size={sp}: the next job after the cancel ran in {after:.1f} s")
    finally:
        engine.close()
    return result


def sp_part(args: argparse.Namespace, model: str, results: dict, save) -> None:
    from videoserve.serve.placement import cuda_gpu_count

    section = results.setdefault("sp", {})
    gpus = cuda_gpu_count()
    for sp in (1, 2):
        try:
            section[str(sp)] = per_step(args, model, sp, gpus)
        except Exception as exc:  # noqa: BLE001 - reported; the summary still prints
            section[str(sp)] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"sp_size={sp}: FAILED {exc}")
        log(f"GPU GiB after the engine closed: {wait_for_free_gpus()}")
        save()
    one, two = (section.get(k, {}).get("per_step_s") for k in ("1", "2"))
    section["ratio"] = two / one if one and two else None


def summary(args: argparse.Namespace, results: dict) -> str:
    env = results.get("environment", {})
    lines = ["", "==== multi-GPU summary ====",
             f"device: {env.get('device')} x {env.get('gpus')}; torch {env.get('torch')}, "
             f"fastvideo {env.get('fastvideo')}, fastvideo-kernel {env.get('fastvideo-kernel')}, "
             f"ray {env.get('ray')}; {env.get('date')}"]
    size = f"{args.width}x{args.height}x{args.frames}"
    if "replicas" in results:
        section = results["replicas"]
        lines.append(f"FastWan served, {size}, {args.steps} steps, {args.videos} videos from "
                     f"{args.clients} clients (after one warm-up request per replica):")
        for key in ("1", "2"):
            r = section.get(key, {})
            lines.append(f"  {key} replica(s): " + (
                f"{r['videos_per_s']:.4f} videos/s ({r['ok']}/{r['videos']} ok in "
                f"{r['wall_s']:.2f} s; latency median {r['latency_median_s']} s; ready in "
                f"{r['ready_s']} s)" if "videos_per_s" in r else f"FAILED {r.get('error')}"))
        lines.append(verdict("ratio 2/1 replicas", section.get("ratio"), GOAL_REPLICAS, ">="))
    if "sp" in results:
        section = results["sp"]
        lines.append(f"I2V-14B engine, {size}, guidance {args.guidance}, {args.i2v_steps} steps "
                     "(per step: median excluding the first):")
        for key in ("1", "2"):
            r = section.get(key, {})
            lines.append(f"  sp_size {key}: " + (
                f"{r['per_step_s']} s/step (steps {r['step_s']}; load {r['load_s']} s; total "
                f"{r['total_s']} s; peak {r['peak_gib']} GiB)" if r.get("per_step_s")
                else f"FAILED {r.get('error')}"))
        lines.append(verdict("ratio sp2/sp1 s/step", section.get("ratio"), GOAL_SP, "<="))
        cancel = section.get("2", {}).get("cancel")
        if cancel:
            lines.append(f"  cancel with sp_size 2: {cancel['result']}, asked at step "
                         f"{cancel['asked_at_step']}, last step {cancel['last_step']} "
                         f"({'ok' if cancel['ok'] else 'NOT OK'})")
    return "\n".join(lines)


def verdict(name: str, ratio: float | None, goal: float, sense: str) -> str:
    if ratio is None:
        return f"  {name}: not measured"
    met = ratio >= goal if sense == ">=" else ratio <= goal
    return f"  {name}: {ratio:.3f} (goal {sense} {goal}: {'met' if met else 'NOT met'})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict = {"command": "python " + " ".join(sys.argv), "plan": plan(args)}
    if args.dry_run:
        print(json.dumps(results["plan"], indent=2, default=str))
        return 0
    results["environment"] = environment()
    log(f"environment: {results['environment']}")

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))

    if args.cpu_smoke:
        replicas_part(args, "", results, save)
    else:
        folder = Path(args.models)
        if "replicas" in parts(args):
            models = build_models(folder, ("t2v",))
            replicas_part(args, str(models["t2v"]), results, save)
        if "sp" in parts(args):
            models = build_models(folder, ("t2v", "i2v"))  # I2V links T2V's shared parts
            sp_part(args, str(models["i2v"]), results, save)
    save()
    print(summary(args, results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
