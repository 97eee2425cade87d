"""Mapping OpenAI's create fields (size, input_reference) onto the service's request."""

from __future__ import annotations

import pytest

from videoserve.http.errors import ApiError
from videoserve.http.openai_videos import parse_create, to_generate_request
from videoserve.serve.presets import build_specs

SPECS = build_specs("tiny", gpu_count=0)


def generate_request(fields: dict):
    return to_generate_request(parse_create(dict(fields)), SPECS)


@pytest.mark.parametrize("size", ["16x" + "1" * 5000, "1" * 5000 + "x16", "9" * 4301 + "x" +
                                  "9" * 4301, "16x123456"],
                         ids=["height_5000_digits", "width_5000_digits", "both_4301", "6_digits"])
def test_huge_sizes_are_a_422_naming_size(size):
    with pytest.raises(ApiError) as info:
        generate_request({"prompt": "x", "size": size})
    assert (info.value.status, info.value.param, info.value.code) == (422, "size", "invalid_value")


def test_sizes_with_leading_zeros_or_spaces_still_parse():
    request = generate_request({"prompt": "x", "size": " 00064 x 0048 "})
    assert (request.width, request.height) == (64, 48)


@pytest.mark.parametrize("reference", [{"file_id": "file_123"}, {"image_url": None},
                                       {"image_url": "x", "file_id": "y"}, {"image_url": 5},
                                       {}, [], 5, ""])
def test_unsupported_input_references_are_a_422(reference):
    with pytest.raises(ApiError) as info:
        parse_create({"prompt": "x", "input_reference": reference})
    assert (info.value.status, info.value.param) == (422, "input_reference")
    assert info.value.code == "unsupported_input_reference"


@pytest.mark.parametrize("reference", ["data:image/png;base64,AAAA", {"image_url": "AAAA"},
                                       {"url": "AAAA"}])
def test_image_input_references_become_the_image(reference):
    create = parse_create({"prompt": "x", "input_reference": reference})
    assert create.image.endswith("AAAA")
