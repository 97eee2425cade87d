import pytest
from pydantic import ValidationError

from videoserve.core.request import GenerateVideoRequest


def test_minimal_request_leaves_parameters_unset():
    req = GenerateVideoRequest(prompt="a cat")
    assert req.num_frames is None and req.height is None and req.model_type is None
    assert not req.has_image


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_frames", 10),
        ("num_frames", 0),
        ("height", 70),
        ("width", 8),
        ("seed", -1),
        ("num_inference_steps", 0),
        ("model_type", "video"),
        ("guidance_scale", "lots"),
    ],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValidationError) as info:
        GenerateVideoRequest(prompt="x", **{field: value})
    assert info.value.errors()[0]["loc"] == (field,)


def test_unknown_fields_are_refused():
    with pytest.raises(ValidationError) as info:
        GenerateVideoRequest(prompt="x", steps=3)
    assert info.value.errors()[0]["type"] == "extra_forbidden"


def test_prompt_limits():
    with pytest.raises(ValidationError):
        GenerateVideoRequest(prompt="   ")
    with pytest.raises(ValidationError):
        GenerateVideoRequest(prompt="x" * 2001)
    assert GenerateVideoRequest(prompt="x" * 2000).prompt


def test_frames_of_form_4k_plus_1_are_accepted():
    for frames in (1, 5, 9, 61, 81):
        assert GenerateVideoRequest(prompt="x", num_frames=frames).num_frames == frames


@pytest.mark.parametrize("field", ["seed", "num_frames", "height", "width",
                                   "num_inference_steps", "fps", "guidance_scale"])
@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_not_numbers(field, value):
    from pydantic import ValidationError

    from videoserve.core.request import GenerateVideoRequest

    with pytest.raises(ValidationError):
        GenerateVideoRequest(prompt="x", **{field: value})


def test_floats_take_integers():
    from videoserve.core.request import GenerateVideoRequest

    assert GenerateVideoRequest(prompt="x", guidance_scale=2).guidance_scale == 2.0


@pytest.mark.parametrize("prompt", ["\u200b", "\u200b\u200c\u200d\u2060\ufeff", "\u200e\u200f",
                                    " \u2063 \u00ad ", "\u3164\u3164", "\u2800", "\u0301\ufe0f",
                                    "\x00\x01"])
def test_prompts_with_no_visible_characters_are_refused(prompt):
    with pytest.raises(ValidationError) as info:
        GenerateVideoRequest(prompt=prompt)
    assert info.value.errors()[0]["loc"] == ("prompt",)


@pytest.mark.parametrize("prompt", ["a\u200b", "猫", "🐈", "é", "\u200bx\u200b", "١"])
def test_prompts_with_something_visible_are_accepted(prompt):
    assert GenerateVideoRequest(prompt=prompt).prompt == prompt
