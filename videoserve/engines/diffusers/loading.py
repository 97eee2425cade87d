"""Load a Wan model folder as a diffusers pipeline.

Recipe (diffusers 0.42.1, transformers 5):
- Call ``from_pretrained`` on the concrete class, ``WanPipeline`` for T2V and
  ``WanImageToVideoPipeline`` for I2V, never on ``DiffusionPipeline``. diffusers only reads
  ``model_index.json``'s ``_class_name`` when called on ``DiffusionPipeline``; on a concrete
  class it ignores it. That matters because the folders fastvideo runs name ``WanDMDPipeline``
  (FastVideo/FastWan2.1-T2V-1.3B-Diffusers, and our tiny T2V folder), a class diffusers doesn't
  have, so ``DiffusionPipeline.from_pretrained`` would fail on them.
- The VAE (and the I2V CLIP image encoder) are loaded in float32 and passed in, as the Wan model
  cards do: the VAE in bf16 loses detail and the CLIP features drift. Only the transformer and
  the text encoder take ``torch_dtype``.
- A local folder is loaded with ``local_files_only=True`` so a missing file fails at once
  instead of reaching for the Hub.
- Scalar entries in model_index.json such as ``_videoserve_synthetic`` are ignored by diffusers.

This works for the tiny folders from ``videoserve.devtools.tiny_models`` and for the layouts of
FastVideo/FastWan2.1-T2V-1.3B-Diffusers (``WanDMDPipeline``; transformer, vae, text_encoder,
tokenizer, scheduler) and Wan-AI/Wan2.1-I2V-14B-480P-Diffusers (``WanImageToVideoPipeline``;
plus image_encoder ``CLIPVisionModel`` and image_processor ``CLIPImageProcessor``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

TASKS = ("t2v", "i2v")


def load_diffusers_pipeline(
    path: str | os.PathLike[str],
    task: str,
    torch_dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> DiffusionPipeline:
    """Load the Wan T2V or I2V pipeline at ``path`` (a local folder or a Hub id) onto ``device``.

    ``torch_dtype`` applies to the transformer and text encoder (default float32 on CPU,
    bfloat16 elsewhere); the VAE and the CLIP image encoder stay float32.
    """
    import torch
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanPipeline

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    device = torch.device(device)
    if torch_dtype is None:
        torch_dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    source = str(path)
    options: dict[str, Any] = {}
    if Path(source).expanduser().is_dir():
        source = str(Path(source).expanduser())
        options["local_files_only"] = True

    components: dict[str, Any] = {
        "vae": AutoencoderKLWan.from_pretrained(
            source, subfolder="vae", dtype=torch.float32, **options
        )
    }
    pipeline_cls: type[DiffusionPipeline]
    if task == "i2v":
        from transformers import CLIPVisionModel

        components["image_encoder"] = CLIPVisionModel.from_pretrained(
            source, subfolder="image_encoder", dtype=torch.float32, **options
        )
        pipeline_cls = WanImageToVideoPipeline
    else:
        pipeline_cls = WanPipeline
    pipeline = pipeline_cls.from_pretrained(source, dtype=torch_dtype, **components, **options)
    return pipeline.to(device)
