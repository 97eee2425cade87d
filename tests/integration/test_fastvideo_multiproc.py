"""The fastvideo engine on fastvideo's own worker processes (the sequence-parallel path).

Real fastvideo 0.2.x on the CPU through the test-only platform shim (tests/fastvideo_cpu_shim),
the engine built directly (no Ray), the tiny I2V model. Two configurations: the diagnostic
``executor: "multiproc"`` (one worker, world of one) and ``sp_size: 2`` (two workers in a gloo
world: the DiT's sequence-parallel collectives and the ranks' cancel vote run for real).
"""

from __future__ import annotations

import os
import time

import psutil
import pytest
from PIL import Image

from tests.conftest import REPO, SHIM_DIR
from videoserve.core.media import probe_mp4
from videoserve.engines import GenerationCancelled, GenerationError, GenerationParams

pytestmark = pytest.mark.fastvideo

STAGES = ["encoding_prompt", "encoding_image", "denoising", "decoding", "encoding_video"]


# sp_size 2 (two workers in a gloo world) covers what one worker on the same path does, plus the
# ranks' vote on a cancel; one configuration keeps the suite's time down (each loads twice).
@pytest.fixture(scope="module", params=[{"sp_size": 2}], ids=["sp2"])
def engine(request, tiny_models):
    from videoserve.engines.fastvideo.engine import FastVideoEngine

    with pytest.MonkeyPatch.context() as env:
        # The engine's process and fastvideo's workers (spawned by it) load the shim.
        paths = [str(REPO), str(SHIM_DIR), os.environ.get("PYTHONPATH", "")]
        env.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
        env.setenv("VIDEOSERVE_FASTVIDEO_CPU_SHIM", "1")
        engine = FastVideoEngine(str(tiny_models["i2v"]), "i2v", "cpu", request.param)
        try:
            yield engine
        finally:
            engine.close()


def params(steps: int, size: int = 64, frames: int = 9, seed: int = 1) -> GenerationParams:
    return GenerationParams(prompt="a windmill turning", negative_prompt="", seed=seed,
                            guidance_scale=1.0, num_frames=frames, height=size, width=size,
                            num_inference_steps=steps, fps=8,
                            image=Image.new("RGB", (size, size), (90, 120, 160)))


def children_of(pid: int) -> set[int]:
    return {child.pid for child in psutil.Process(pid).children()}


def first_seen(stages: list[str]) -> list[str]:
    return [s for i, s in enumerate(stages) if s not in stages[:i]]


def test_workers_are_children_of_the_engine_process(engine):
    stats = engine.stats()
    expected = 2 if engine.options["sp_size"] == 2 else 1
    assert len(stats["engine_worker_pids"]) == expected
    assert set(stats["engine_worker_pids"]) <= children_of(stats["engine_pid"])


def test_every_step_and_stage_is_reported_and_the_video_is_whole(engine):
    events: list[tuple[str, int, int]] = []
    output = engine.generate(params(6), lambda *event: events.append(event), lambda: False)
    steps = [step for stage, step, _ in events if stage == "denoising" and step > 0]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert {total for stage, _, total in events if stage == "denoising"} == {6}
    assert first_seen([stage for stage, _, _ in events]) == STAGES
    video = probe_mp4(output.mp4)
    assert (video.frames, video.width, video.height, video.codec) == (9, 64, 64, "h264")
    assert (output.num_frames, output.width, output.height) == (9, 64, 64)


def test_cancel_stops_within_a_step_and_the_workers_serve_the_next_job(engine):
    before = engine.stats()
    events: list[tuple[str, int, int]] = []
    asked_at: list[int] = []

    def progress(stage: str, step: int, total: int) -> None:
        events.append((stage, step, total))
        if stage == "denoising" and step >= 2 and not asked_at:
            asked_at.append(step)

    with pytest.raises(GenerationCancelled):
        engine.generate(params(40, size=128, frames=17), progress, lambda: bool(asked_at))
    last = max(step for stage, step, _ in events if stage == "denoising")
    assert asked_at and last - asked_at[0] <= 1, (asked_at, last)
    assert "decoding" not in {stage for stage, _, _ in events}
    # Same engine process, same workers (alive), nothing reloaded or encoded for it.
    after = engine.stats()
    for key in ("engine_pid", "engine_worker_pids", "engine_loads", "videos_encoded"):
        assert after[key] == before[key], key
    assert set(after["engine_worker_pids"]) <= children_of(after["engine_pid"])
    start = time.monotonic()
    events.clear()
    output = engine.generate(params(3, seed=2), lambda *event: events.append(event),
                             lambda: False)
    assert [s for stage, s, _ in events if stage == "denoising" and s > 0] == [1, 2, 3]
    assert probe_mp4(output.mp4).frames == 9 and time.monotonic() - start < 60
    assert engine.stats()["engine_worker_pids"] == before["engine_worker_pids"]


def test_a_worker_failure_fails_the_job_and_the_next_job_reloads(engine):
    # I2V without an image, past the engine's own checks: fastvideo raises inside the workers,
    # which end and send SIGQUIT to the engine process; that process must report the failure
    # (not die of the signal), and the next job must load a fresh pipeline.
    before = engine.stats()
    kwargs = engine._request_kwargs(params(2), image_path=None)
    with pytest.raises(GenerationError) as failure:
        engine.run(kwargs, params(2), lambda *_: None, lambda: False)
    assert "reloaded for the next job" in str(failure.value)
    # Reported by the engine process, which survived the workers' SIGQUIT.
    assert "the fastvideo process exited" not in str(failure.value), failure.value
    old = [psutil.Process(pid) for pid in before["engine_worker_pids"]
           if psutil.pid_exists(pid)]
    gone, alive = psutil.wait_procs(old, timeout=30)
    assert not alive, alive
    output = engine.generate(params(2), lambda *_: None, lambda: False)
    assert probe_mp4(output.mp4).frames == 9
    now = engine.stats()
    assert now["engine_loads"] == before["engine_loads"] + 1
    assert now["engine_pid"] != before["engine_pid"]
    assert not set(now["engine_worker_pids"]) & set(before["engine_worker_pids"])
