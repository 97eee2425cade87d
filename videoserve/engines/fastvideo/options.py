"""fastvideo 0.2.0 facts the rest of the service needs without importing fastvideo: the version
this code is written against, its offload flags and the attention kernel order the presets use."""

from __future__ import annotations

# The fastvideo releases this code was written against; the adapter warns on any other.
TESTED_VERSIONS = ("0.2.0",)

# fastvideo's offload flags default to True and one of them stays on unless passed: always pass all.
FASTVIDEO_OFFLOAD_FLAGS = (
    "dit_cpu_offload",
    "dit_layerwise_offload",
    "text_encoder_cpu_offload",
    "image_encoder_cpu_offload",
    "vae_cpu_offload",
    "pin_cpu_memory",
)
NO_OFFLOAD: dict[str, bool] = {flag: False for flag in FASTVIDEO_OFFLOAD_FLAGS}


# cuDNN's attention kernel first in SDPA's priority: the I2V-14B's quality lever on Hopper.
CUDNN_FIRST = ["cudnn", "flash", "efficient", "math"]
