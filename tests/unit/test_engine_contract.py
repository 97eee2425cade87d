"""The engine contract: what the generator worker may call on every engine without probing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from videoserve.engines import Engine, GenerationOutput
from videoserve.engines.diffusers.engine import DiffusersEngine
from videoserve.engines.fastvideo.engine import FastVideoEngine


class Minimal(Engine):
    name = "minimal"

    def generate(self, params, progress, should_cancel, preview=None):
        return GenerationOutput(mp4=b"", num_frames=0, height=0, width=0, inference_time=0.0,
                                encoding_time=0.0)


def test_an_engine_without_generate_cannot_be_made():
    with pytest.raises(TypeError, match="generate"):
        Engine()

    class NoGenerate(Engine):
        name = "no-generate"

    with pytest.raises(TypeError, match="generate"):
        NoGenerate()


@pytest.mark.parametrize("engine", [DiffusersEngine, FastVideoEngine])
def test_the_real_engines_implement_the_contract(engine):
    assert issubclass(engine, Engine)
    assert not engine.__abstractmethods__
    assert isinstance(engine.name, str) and engine.name


def test_importing_the_real_engines_loads_no_gpu_library():
    check = ("import sys, videoserve.engines.diffusers.engine, videoserve.engines.fastvideo.engine;"
             " print(sorted(m for m in ('torch', 'diffusers', 'fastvideo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_a_minimal_engine_gets_the_defaults():
    engine = Minimal()
    assert engine.healthy is True
    assert engine.stats() == {}
    assert engine.load_breakdown == {}
    assert engine.close() is None
    # Fresh dicts: a caller adding to one changes no other engine's.
    engine.stats()["x"] = 1
    assert Minimal().stats() == {}
