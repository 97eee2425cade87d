"""The sizes ``videoserve.devtools.tiny_models`` builds its synthetic (random-weight) Wan models in.

``TINY``: a few MB per model, built on the CPU in seconds, for tests and CI.
``FULL``: the real architectures (FastWan2.1-T2V-1.3B and Wan2.1-I2V-14B-480P with the UMT5-XXL
text encoder, the CLIP ViT-H/14 image encoder and the default Wan VAE), still with random weights:
the memory, load time and speed of the real models, without downloading them. Built in bf16 on
a GPU when there is one. On disk: T2V about 15 GB (DiT 3 GB, UMT5 11 GB); I2V about 34 GB more
(DiT 33 GB, CLIP 1.3 GB) when it links the T2V folder's text encoder, tokenizer and VAE.

Also what a size is made of: ``new_component`` constructs one component of a size and
``transformer_extra_shapes`` lists the DiT weights only fastvideo has. The GPU libraries are
imported inside the functions, so the sizes can be read without them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSize:
    """Everything that differs between the tiny and the full-size builds."""

    name: str
    # Written into each folder's completion marker; bump when the written files change.
    version: str
    folder_names: dict[str, str]
    # What the folder imitates, for the SYNTHETIC.txt note.
    descriptions: dict[str, str]
    # diffusers WanTransformer3DModel kwargs per task.
    transformer: dict[str, dict[str, Any]]
    # transformers UMT5Config / CLIPVisionConfig kwargs; diffusers AutoencoderKLWan kwargs.
    text_encoder: dict[str, Any]
    image_encoder: dict[str, Any]
    vae: dict[str, Any]
    dtype: str
    prefer_cuda: bool
    init_std: float
    dit_init_std: float
    # FastWan's video-sparse-attention gates (per block ``to_gate_compress``) in the T2V DiT.
    vsa_gates: bool
    # The I2V folder links text_encoder/, tokenizer/ and vae/ of a T2V folder beside it.
    share_components: bool
    # Largest weight file; None keeps the libraries' defaults.
    max_shard_size: str | None

    @property
    def image_size(self) -> int:
        return int(self.image_encoder["image_size"])


SHARED_COMPONENTS = ("text_encoder", "tokenizer", "vae")

_UMT5_COMMON: dict[str, Any] = {
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}

_CLIP_COMMON: dict[str, Any] = {"hidden_act": "gelu", "layer_norm_eps": 1e-5}


def wan_transformer_kwargs(
    heads: int, head_dim: int, ffn: int, layers: int, text_dim: int, image_dim: int | None
) -> dict[str, Any]:
    """Kwargs of a Wan 2.1 DiT; ``image_dim`` set makes it an I2V DiT (36 input channels)."""
    kwargs: dict[str, Any] = {
        "patch_size": (1, 2, 2),
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "in_channels": 16 if image_dim is None else 36,
        "out_channels": 16,
        "text_dim": text_dim,
        "freq_dim": 256,
        "ffn_dim": ffn,
        "num_layers": layers,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "rope_max_seq_len": 1024,
    }
    if image_dim is not None:
        kwargs["image_dim"] = image_dim
        kwargs["added_kv_proj_dim"] = heads * head_dim
    return kwargs


TINY = ModelSize(
    name="tiny",
    version="videoserve-tiny-wan/1",
    folder_names={"t2v": "tiny-wan-t2v", "i2v": "tiny-wan-i2v"},
    descriptions={"t2v": "a tiny Wan T2V model", "i2v": "a tiny Wan I2V model"},
    transformer={
        "t2v": wan_transformer_kwargs(2, 16, 64, 2, text_dim=32, image_dim=None),
        "i2v": wan_transformer_kwargs(2, 16, 64, 2, text_dim=32, image_dim=16),
    },
    text_encoder={
        **_UMT5_COMMON,
        "vocab_size": 256,
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "num_heads": 4,
    },
    # 32 layers because fastvideo builds 31 of them; 32 / patch 2 gives the 16x16 patches + CLS
    # = 257 image tokens that Wan's cross-attention slices.
    image_encoder={
        **_CLIP_COMMON,
        "hidden_size": 16,
        "intermediate_size": 32,
        "projection_dim": 16,
        "num_hidden_layers": 32,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 2,
    },
    vae={"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1},
    dtype="float32",
    # CPU only, so a tiny model is the same on every machine.
    prefer_cuda=False,
    init_std=0.02,
    # Wider than the other components so the prompt, image and timestep visibly change the
    # output; with 0.02 the tiny DiT's contribution vanishes and every request decodes the same
    # noise.
    dit_init_std=0.2,
    vsa_gates=False,
    share_components=False,
    max_shard_size=None,
)

FULL = ModelSize(
    name="full",
    version="videoserve-full-wan/1",
    # No fastvideo detector token (see tiny_models.FASTVIDEO_PATH_TOKENS) and no registered
    # model name, so fastvideo picks the pipeline from model_index.json like for the real ones.
    folder_names={"t2v": "synthetic-fastwan2.1-t2v-1.3b", "i2v": "synthetic-wan2.1-i2v-14b-480p"},
    descriptions={
        "t2v": "the FastWan2.1-T2V-1.3B architecture (with VSA gates)",
        "i2v": "the Wan2.1-I2V-14B-480P architecture",
    },
    transformer={
        "t2v": wan_transformer_kwargs(12, 128, 8960, 30, text_dim=4096, image_dim=None),
        "i2v": wan_transformer_kwargs(40, 128, 13824, 40, text_dim=4096, image_dim=1280),
    },
    # google/umt5-xxl, the encoder half.
    text_encoder={
        **_UMT5_COMMON,
        "vocab_size": 256384,
        "d_model": 4096,
        "d_kv": 64,
        "d_ff": 10240,
        "num_layers": 24,
        "num_decoder_layers": 24,
        "num_heads": 64,
    },
    # CLIP ViT-H/14 (open_clip's, as shipped with Wan I2V).
    image_encoder={
        **_CLIP_COMMON,
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "projection_dim": 1024,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 14,
    },
    # AutoencoderKLWan's defaults are the Wan 2.1 VAE.
    vae={},
    dtype="bfloat16",
    prefer_cuda=True,
    # Activations stay near unit scale at these widths; fastvideo's stages assert no NaNs.
    init_std=0.02,
    dit_init_std=0.02,
    vsa_gates=True,
    share_components=True,
    max_shard_size="5GB",
)

SIZES = {size.name: size for size in (TINY, FULL)}


def resolve_size(size: ModelSize | str) -> ModelSize:
    """Return the size named ``size`` ("tiny" or "full"); a ModelSize is returned as is."""
    if isinstance(size, ModelSize):
        return size
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {sorted(SIZES)}")
    return SIZES[size]


@contextlib.contextmanager
def torch_defaults(size: ModelSize) -> Iterator[None]:
    """Create tensors in ``size``'s dtype, on CUDA if it prefers and has one, else the CPU.

    Building the 14B DiT directly in bf16 never materialises a fp32 copy (56 GB), and a GPU
    initialises it far faster than the CPU.
    """
    import torch

    use_cuda = size.prefer_cuda and torch.cuda.is_available()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, size.dtype))
    try:
        with torch.device("cuda" if use_cuda else "cpu"):
            yield
    finally:
        torch.set_default_dtype(previous)


def new_component(size: ModelSize | str, component: str, task: str = "t2v") -> Any:
    """Construct one component of ``size`` with the libraries' own init, on torch's current
    default device and dtype (``with torch.device("meta"):`` gives its shapes without memory).

    ``component`` is "transformer" (of ``task``), "text_encoder", "image_encoder" or "vae".
    """
    size = resolve_size(size)
    if component == "transformer":
        from diffusers import WanTransformer3DModel

        return WanTransformer3DModel(**size.transformer[task])
    if component == "text_encoder":
        from transformers import UMT5Config, UMT5EncoderModel

        return UMT5EncoderModel(UMT5Config(**size.text_encoder)).eval()
    if component == "image_encoder":
        from transformers import CLIPVisionConfig, CLIPVisionModel

        config = CLIPVisionConfig(**size.image_encoder)
        config.architectures = ["CLIPVisionModel"]
        return CLIPVisionModel(config).eval()
    if component == "vae":
        from diffusers import AutoencoderKLWan

        return AutoencoderKLWan(**size.vae)
    raise ValueError(f"unknown component {component!r}")


def transformer_extra_shapes(size: ModelSize | str, task: str) -> dict[str, tuple[int, ...]]:
    """Shapes of the DiT weights fastvideo loads that diffusers' Wan model does not have."""
    size = resolve_size(size)
    kwargs = size.transformer[task]
    dim = int(kwargs["num_attention_heads"]) * int(kwargs["attention_head_dim"])
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(int(kwargs["num_layers"])):
        if task == "i2v":
            # fastvideo's Wan I2V cross-attention keeps a norm on the image query (unused in
            # its forward, loaded strictly); diffusers dropped it.
            shapes[f"blocks.{i}.attn2.norm_added_q.weight"] = (dim,)
        elif size.vsa_gates:
            # fastvideo's WanTransformerBlock_VSA (FASTVIDEO_ATTENTION_BACKEND=VIDEO_SPARSE_ATTN)
            # has this Linear(dim, dim); FastWan checkpoints ship it, a missing one is zeroed
            # with a "Found unloaded parameters" warning.
            shapes[f"blocks.{i}.to_gate_compress.weight"] = (dim, dim)
            shapes[f"blocks.{i}.to_gate_compress.bias"] = (dim,)
    return shapes
