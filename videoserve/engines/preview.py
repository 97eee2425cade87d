"""Live previews: the current latent of a denoising step as a small RGB image, without the VAE.

Why a linear projection: decoding with the VAE costs about as much as a step on the big model;
a 16 -> 3 matrix applied to the latent's pixels costs a few milliseconds and shows the layout and
colours forming. Why it is fitted rather than written down: this project carries no table of
someone else's factors, and a fit works for any Wan-VAE model, the synthetic ones included. The
fit is made once per model folder, on the CPU: random latents of the distribution the denoiser
works in (the VAE's ``latents_mean`` / ``latents_std``) are decoded by the model's own VAE
(diffusers' ``AutoencoderKLWan``), each 8x8 block of the decoded image averaged to one RGB value,
and a least-squares fit maps a latent pixel's 16 channels to that RGB.

The image is one frame (the middle of the video's latent frames, where motion is), 2x the latent
size, as a still WebP. Why not an animated WebP of every latent frame: measured on an H200
(``benchmarks/preview.py``, 480x832x81), one frame costs 3.4 ms and 1.2 kB, all 21 frames 34 ms
and 25 kB: 0.7 % against 6.9 % of a FastWan step, and a preview is sent up to twice a second.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.5  # at most two previews a second, however fast the steps
SCALE = 2  # the image is 2x the latent's size (a 480x832 video: 120x208)
# How long a loaded engine waits for the fit before it says it is ready (seconds on a CPU; a
# fit still running after that goes on, and the previews start when it is done).
FIT_WAIT_S = 60.0
_FITS: dict[str, tuple[np.ndarray, np.ndarray]] = {}
_FIT_LOCK = threading.Lock()


def fit_projection(model_folder: Path | str, samples: int = 4,
                   size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(matrix 16x3, bias 3) for the model's VAE, fitted once per folder and kept for the life
    of the process."""
    key = str(model_folder)
    with _FIT_LOCK:
        if key not in _FITS:
            start = time.perf_counter()
            _FITS[key] = _fit(Path(model_folder) / "vae", samples, size)
            log.info("live preview: latent-to-RGB projection fitted in %.2fs",
                     time.perf_counter() - start)
        return _FITS[key]


def _fit(vae_folder: Path, samples: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    import torch
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(vae_folder, torch_dtype=torch.float32).eval()
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(samples, vae.config.z_dim, 1, size, size, generator=g)
    raw = z * std.view(1, -1, 1, 1, 1) + mean.view(1, -1, 1, 1, 1)
    with torch.inference_mode():
        image = torch.cat([vae.decode(raw[i:i + 1], return_dict=False)[0] for i in
                           range(samples)])  # (samples, 3, 1, 8*size, 8*size) in [-1, 1]
    factor = image.shape[-1] // size
    pooled = torch.nn.functional.avg_pool2d(image[:, :, 0], factor)  # (samples, 3, size, size)
    x = z.permute(0, 2, 3, 4, 1).reshape(-1, z.shape[1]).numpy().astype(np.float64)
    y = pooled.permute(0, 2, 3, 1).reshape(-1, 3).numpy().astype(np.float64)
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, y, rcond=None)
    # Fitted on the denoiser's (normalised) latents: applied to them directly.
    return solution[:-1].astype(np.float32), solution[-1].astype(np.float32)


class LatentPreview:
    """Turns a denoiser's latents (batch, 16, frames, h, w) into preview WebP bytes.

    The projection is fitted on a thread of its own, started here: an engine makes this before
    it loads its pipeline, so the fit overlaps the load, and waits for it (``wait``) before it
    says it is ready, so a model's first job has previews too. A step never waits for it; until
    it is ready no preview is due."""

    def __init__(self, model_folder: Path | str):
        self.matrix: np.ndarray | None = None
        self.bias: np.ndarray | None = None
        self._last = 0.0
        self._fitted = threading.Event()  # set when the fit ended, fitted or not
        # Imported here, not on the thread: diffusers resolves its names lazily, and two
        # threads resolving them at once can see a half-initialised module.
        from diffusers import AutoencoderKLWan  # noqa: F401

        threading.Thread(target=self._fit, args=(model_folder,), name="preview-fit",
                         daemon=True).start()

    def _fit(self, model_folder: Path | str) -> None:
        try:
            self.matrix, self.bias = fit_projection(model_folder)
        except Exception:  # noqa: BLE001 - a model without a Wan VAE shows no previews
            log.exception("live previews are off for %s: the projection could not be fitted",
                          model_folder)
        finally:
            self._fitted.set()

    def wait(self, timeout_s: float = FIT_WAIT_S) -> bool:
        """Until the fit has ended (at most ``timeout_s``); whether previews can be made."""
        self._fitted.wait(timeout_s)
        return self.matrix is not None

    def due(self, final: bool = False) -> bool:
        """True when a preview is wanted now (at most every MIN_INTERVAL_S, and the last step)."""
        if self.matrix is None:
            return False
        now = time.monotonic()
        if final or now - self._last >= MIN_INTERVAL_S:
            self._last = now
            return True
        return False

    def rgb(self, latents: Any) -> np.ndarray:
        """The middle latent frame as an (h, w, 3) uint8 image."""
        import torch

        frame = latents[0, :16, latents.shape[2] // 2].detach()  # (16, h, w)
        matrix = torch.as_tensor(self.matrix, device=frame.device)
        bias = torch.as_tensor(self.bias, device=frame.device)
        rgb = torch.einsum("chw,cd->hwd", frame.float(), matrix) + bias
        return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()

    def webp(self, latents: Any) -> bytes:
        from PIL import Image

        image = Image.fromarray(self.rgb(latents))
        image = image.resize((image.width * SCALE, image.height * SCALE), Image.BILINEAR)
        out = io.BytesIO()
        image.save(out, format="WEBP", quality=80)
        return out.getvalue()


# preview(step, webp_bytes): an engine hands the worker a preview of the step just done.
PreviewFn = Callable[[int, bytes], None]
