import pytest

from videoserve.config import build_specs
from videoserve.errors import ApiError
from videoserve.protocol import resolve
from videoserve.schemas import GenerateVideoRequest
from videoserve.service import sandboxed_path, select_task

TINY = build_specs("tiny", gpu_count=0)


def test_model_selection():
    assert select_task(GenerateVideoRequest(prompt="x")) == "t2v"
    assert select_task(GenerateVideoRequest(prompt="x", image="abcd")) == "i2v"
    assert select_task(GenerateVideoRequest(prompt="x", image_path="a.png")) == "i2v"
    assert select_task(GenerateVideoRequest(prompt="x", model_type="i2v")) == "i2v"


def test_defaults_fill_unset_fields_and_keep_set_ones():
    params = resolve(GenerateVideoRequest(prompt="x", num_frames=17, seed=7), TINY["t2v"])
    assert params.num_frames == 17 and params.seed == 7
    assert (params.height, params.width, params.num_inference_steps) == (64, 64, 2)


def test_randomize_seed_overrides_seed():
    seeds = {resolve(GenerateVideoRequest(prompt="x", seed=1, randomize_seed=True),
                     TINY["t2v"]).seed for _ in range(5)}
    assert seeds != {1}


@pytest.mark.parametrize(("field", "value"), [("num_frames", 85), ("height", 848),
                                               ("num_inference_steps", 51)])
def test_model_limits(field, value):
    with pytest.raises(ApiError) as info:
        resolve(GenerateVideoRequest(prompt="x", **{field: value}), TINY["t2v"])
    assert info.value.status == 422 and info.value.param == field


def test_pixel_budget():
    with pytest.raises(ApiError) as info:
        resolve(GenerateVideoRequest(prompt="x", height=832, width=832), TINY["t2v"])
    assert info.value.param == "width"


def test_sandbox(tmp_path):
    root = tmp_path / "inputs"
    root.mkdir()
    (root / "ok.png").write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    assert sandboxed_path(root, "ok.png") == (root / "ok.png").resolve()
    assert sandboxed_path(root, str(root / "ok.png")) == (root / "ok.png").resolve()
    for escape in ("../secret.png", str(tmp_path / "secret.png"), "link.png", "/etc/passwd"):
        with pytest.raises(ApiError) as info:
            sandboxed_path(root, escape)
        assert info.value.status == 403
    with pytest.raises(ApiError) as info:
        sandboxed_path(root, "missing.png")
    assert info.value.status == 400
