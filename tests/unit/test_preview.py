"""Live previews (``videoserve.engines.preview``): the projection fitted from a model's own VAE,
the picture's size, and at most two previews a second (the last step always)."""

from __future__ import annotations

import io
import time

import numpy as np
import torch
from PIL import Image

from videoserve.engines.preview import MIN_INTERVAL_S, LatentPreview, fit_projection


def ready(preview: LatentPreview, timeout: float = 120.0) -> LatentPreview:
    assert preview.wait(timeout), "the projection was not fitted"  # it runs on its own thread
    assert preview.matrix is not None
    return preview


def test_a_model_without_a_wan_vae_has_no_previews_and_waiting_ends(tmp_path):
    (tmp_path / "vae").mkdir()  # no config, no weights: the fit fails on its thread
    preview = LatentPreview(tmp_path)
    begin = time.monotonic()
    assert preview.wait(60) is False
    assert time.monotonic() - begin < 30  # ended by the failure, not by the timeout
    assert preview.matrix is None and preview.due(final=True) is False


def test_the_projection_is_fitted_once_per_model(tiny_models):
    matrix, bias = fit_projection(tiny_models["t2v"])
    assert matrix.shape == (16, 3) and bias.shape == (3,) and np.isfinite(matrix).all()
    again = fit_projection(tiny_models["t2v"])
    assert again[0] is matrix  # kept, not fitted again


def test_a_preview_is_a_small_webp_of_the_middle_latent_frame(tiny_models):
    preview = ready(LatentPreview(tiny_models["i2v"]))
    latents = torch.randn(1, 16, 5, 30, 52, generator=torch.Generator().manual_seed(0))
    picture = Image.open(io.BytesIO(preview.webp(latents)))
    assert picture.format == "WEBP" and picture.size == (104, 60)  # 2x the latent
    other = latents.clone()
    other[0, :, 2] = -other[0, :, 2]  # only the middle frame differs
    assert preview.webp(other) != preview.webp(latents)
    first = latents.clone()
    first[0, :, 0] = 0  # another frame: the picture does not change
    assert preview.webp(first) == preview.webp(latents)


def test_at_most_two_previews_a_second_and_always_the_last(tiny_models):
    preview = ready(LatentPreview(tiny_models["t2v"]))
    assert MIN_INTERVAL_S == 0.5
    assert preview.due() is True
    assert preview.due() is False  # too soon
    assert preview.due(final=True) is True  # the last step's always comes
