"""What LoRA adapters cost when served: a step-distilled setup end to end, the price of a switch
between LoRAs, and the per-step cost of a merged LoRA against the base model.

One model is deployed (in this process's Ray, as the backend would deploy it) with a synthetic
rank-64 LoRA as its default and ``--defaults`` (e.g. 4 steps without guidance, as a
step-distilled LoRA is run), the LoRA folder holding two different synthetic LoRAs. Jobs go
through ``POST /v1/videos`` in this order, each a new seed so nothing is served from the cache:

  default x2   the model's default LoRA (the first also copies the base weights aside, once)
  base         ``loras: []``: the switch restores the base weights
  A, B, A      switches between two LoRAs
  base, A      per-step cost of a merged LoRA against the base model (same settings)

Each job's end-to-end seconds, its seconds a step (from its progress), and the switch seconds
the replica measured (its ``lora_switch_s``) are printed, with the ratios. Synthetic models and
LoRAs make noise videos: the times are real, the pictures are not.

    python -m videoserve.tiny_models --size full --out /data/full --tasks i2v
    python benchmarks/lora.py --model /data/full/synthetic-wan2.1-i2v-14b-480p --task i2v \\
        --defaults num_inference_steps=4,guidance_scale=1 --json lora.json
    python benchmarks/lora.py --tiny --runs 5        # CPU: tiny models, diffusers engine
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import (  # noqa: E402
    add_model_args,
    deploy_in_process,
    environment,
    follow_job,
    job_body,
    log,
    model_args,
    model_spec,
    scratch_folder,
)


def lora_folder(model: Path, task: str, folder: Path) -> tuple[str, str]:
    """Two different synthetic rank-64 LoRAs for ``model`` in ``folder``: their ids."""
    from videoserve.devtools.synthetic_loras import write_synthetic_loras

    first = write_synthetic_loras(model, folder, prefix=f"bench-{task}-a", seed=1)["wan"]
    second = write_synthetic_loras(model, folder, prefix=f"bench-{task}-b", seed=2)["diffusers"]
    return first.stem, second.stem


def deploy_model(args, folder: Path, default_lora: str, out: Path) -> str:
    from videoserve.core.config import Settings, parse_defaults

    spec = model_spec(args)
    if args.defaults:
        spec = replace(spec, defaults=parse_defaults(args.defaults, spec, "--defaults"))
    spec = replace(spec, loras=((default_lora, 1.0),))
    # On the GPU the replica's log (each LoRA merge and its seconds) is shown here.
    return deploy_in_process(Settings(models={args.task: spec}, output_path=out,
                                      lora_dir=folder), "lora", gpus=0 if args.tiny else 1)


def one_job(url: str, args, seed: int, loras: list | None) -> dict:
    from videoserve.serve.deployments import generator_handle

    body = job_body(args, seed)
    if loras is not None:
        body["loras"] = loras
    begin = time.perf_counter()
    job, per_step = follow_job(url, requests.post(url + "/v1/videos", json=body,
                                                  timeout=60).json())
    seconds = time.perf_counter() - begin
    info = generator_handle("lora", args.task).info.remote().result()
    return {"loras": [e["id"] for e in job.get("loras", [])], "status": job.get("status"),
            "job_s": round(seconds, 3), "per_step_s": per_step,
            "steps": job.get("num_inference_steps"), "switch_s": info.get("lora_switch_s"),
            "error": job.get("error")}


def measure(url: str, args, a: str, b: str) -> list[dict]:
    plan = [("default", None), ("default", None), ("base", []), ("A", [{"id": a}]),
            ("B", [{"id": b}]), ("A", [{"id": a}])]
    for _ in range(args.runs):
        plan += [("base", []), ("A", [{"id": a}])]
    jobs = []
    for seed, (name, loras) in enumerate(plan, start=100):
        jobs.append({"name": name, **one_job(url, args, seed, loras)})
        log(json.dumps(jobs[-1]))
    return jobs


def summary(jobs: list[dict]) -> dict:
    # Every base job against every job with LoRA A (the default is A too): same settings.
    base = [j for j in jobs if j["name"] == "base"]
    lora = [j for j in jobs[1:] if j["name"] in ("A", "default")]

    def median(rows: list[dict], key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return round(statistics.median(values), 3) if values else None

    def seconds(job: dict) -> float | None:
        return None if job["switch_s"] is None else round(job["switch_s"], 3)

    out = {"default_job_s": [jobs[0]["job_s"], jobs[1]["job_s"]],
           "first_use_switch_s": seconds(jobs[0]),
           "switch_s": {"to_base": seconds(jobs[2]), "base_to_A": seconds(jobs[3]),
                        "A_to_B": seconds(jobs[4]), "B_to_A": seconds(jobs[5])},
           "base_job_s": median(base, "job_s"), "lora_job_s": median(lora, "job_s"),
           "base_per_step_s": median(base, "per_step_s"),
           "lora_per_step_s": median(lora, "per_step_s")}
    if out["base_job_s"] and out["lora_job_s"]:
        out["lora_over_base_job"] = round(out["lora_job_s"] / out["base_job_s"], 3)
    if out["base_per_step_s"] and out["lora_per_step_s"]:
        out["lora_over_base_per_step"] = round(out["lora_per_step_s"] / out["base_per_step_s"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser, default_task="i2v")
    parser.add_argument("--defaults", default=None, help="KEY=VALUE,... sampling defaults")
    parser.add_argument("--runs", type=int, default=2, help="base / LoRA pairs")
    args = model_args(parser)
    with scratch_folder() as tmp:
        folder = Path(tmp) / "loras"
        started = time.perf_counter()
        a, b = lora_folder(Path(args.model), args.task, folder)
        log(f"synthetic LoRAs {a}, {b} written in {time.perf_counter() - started:.1f} s")
        url = deploy_model(args, folder, a, Path(tmp) / "out")
        jobs = measure(url, args, a, b)
    result = {"command": "python " + " ".join(sys.argv), "environment": environment(),
              "jobs": jobs, "summary": summary(jobs)}
    print(json.dumps(result["summary"], indent=2), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
