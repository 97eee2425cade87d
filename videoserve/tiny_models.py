"""Deterministic random-weight tiny Wan models in the Diffusers folder layout.

The folders load in both engines: fastvideo's ``VideoGenerator`` (T2V picks the FastWan DMD
pipeline through ``WanDMDPipeline``, I2V picks ``WanImageToVideoPipeline``) and diffusers
(see ``videoserve.engines.diffusers_loading.load_diffusers_pipeline``). They produce noise;
they exist so tests and CI can exercise the real loading and generation code without weights.

Usage: ``python -m videoserve.tiny_models OUT_DIR`` builds both under OUT_DIR and prints their
paths. ``ensure_tiny_models()`` builds them once into a cache directory (env
``VIDEOSERVE_MODEL_CACHE``, default ``~/.cache/videoserve/models``) and reuses them afterwards.

Layout choices forced by fastvideo 0.2.0 (see shared/FASTVIDEO_FACTS.md):
- the scheduler JSON is written by hand: fastvideo's UniPC rejects keys that current diffusers
  writes (``shift_terminal``, ``sigma_max``, ``sigma_min``);
- the tokenizer is a Unigram ``tokenizers`` model (diffusers' T5TokenizerFast rejects WordLevel);
- the VAE keeps ``z_dim`` 16 (fastvideo's Wan VAE config hard-codes 16 latent statistics);
- I2V: fastvideo loads ``blocks.N.attn2.norm_added_q.weight`` strictly, which diffusers does not
  save, so it goes into an extra safetensors file that diffusers ignores; CLIP weights are saved
  with the ``vision_model.`` prefix of the original checkpoints (transformers 5 drops it, and
  fastvideo needs it); CLIP has 32 layers because fastvideo builds 31 of them; image_size 32
  with patch 2 gives 16x16 patches + CLS = the 257 image tokens Wan's cross-attention slices.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BUILDER_VERSION = "videoserve-tiny-wan/1"
MARKER_NAME = ".complete"
TASKS = ("t2v", "i2v")
FOLDER_NAMES = {"t2v": "tiny-wan-t2v", "i2v": "tiny-wan-i2v"}
PIPELINE_CLASS_NAMES = {"t2v": "WanDMDPipeline", "i2v": "WanImageToVideoPipeline"}
CACHE_ENV = "VIDEOSERVE_MODEL_CACHE"

# fastvideo 0.2.0 resolves a model's pipeline config by matching these substrings against the
# whole lower-cased model path (fastvideo/registry.py detectors), and a match beats the
# model_index.json class name. "scheduler" anywhere in the path makes
# fastvideo.models.hf_transformer_utils.get_diffusers_config read scheduler_config.json for
# every component.
FASTVIDEO_PATH_TOKENS = tuple(
    """
    ltx2 ltx-2 stable-audio-open hunyuan hyworld gamecraft lingbotworld lingbot-world kandinsky5
    kandinsky-5 longcat matrix-game-2 matrixgame2 matrix-game-3 matrixgame3 gen3c cosmos
    turbodiffusion turbowan sfwan2.2 sfwan2_2 sd35 stablediffusion3 wanpipeline wanimagetovideo
    wandmdpipeline wancausaldmdpipeline scheduler
    """.split()
)

_INIT_STD = 0.02
_DIT_INIT_STD = 0.2
_SEEDS = {"transformer": 11, "vae": 12, "text_encoder": 13, "image_encoder": 14}
_VOCAB_SIZE = 256
_TEXT_DIM = 32
_CLIP_DIM = 16
_CLIP_IMAGE_SIZE = 32

_SYNTHETIC_NOTE = """\
SYNTHETIC MODEL - random weights, produces noise.

Built by videoserve.tiny_models ({version}) for tests: a tiny Wan {task} model in the Diffusers
folder layout that loads in fastvideo and diffusers. It was never trained.
"""

_WORDS = (
    "a an the of and in on at to with for from by is are was be it this that cat dog bird fish "
    "horse car boat city street forest river sea sky sun moon night day light red blue green "
    "white black small big old young running walking flying over under slow fast video camera "
    "view close shot scene man woman child people water tree mountain snow rain cloud"
).split()


def default_cache_dir() -> Path:
    """Return the tiny-model cache directory (env VIDEOSERVE_MODEL_CACHE or the user cache)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "videoserve" / "models"


def fastvideo_path_conflicts(path: str | os.PathLike[str]) -> list[str]:
    """Return the substrings of ``path`` that would mislead fastvideo's model detection."""
    lowered = str(Path(path).expanduser().absolute()).lower()
    return [token for token in FASTVIDEO_PATH_TOKENS if token in lowered]


def is_complete(model_dir: str | os.PathLike[str]) -> bool:
    """Return True if ``model_dir`` holds a finished build of the current builder version."""
    marker = Path(model_dir) / MARKER_NAME
    try:
        return marker.read_text(encoding="utf-8").strip() == BUILDER_VERSION
    except OSError:
        return False


def build_tiny_model(task: str, out_dir: Path) -> Path:
    """Build the tiny ``task`` model ("t2v" or "i2v") as ``out_dir/tiny-wan-<task>``.

    The folder is written under a temporary name and renamed into place after its marker file,
    so a crashed build never leaves a folder that looks complete. An existing folder is
    replaced. Returns the model folder.
    """
    if task not in FOLDER_NAMES:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    out_dir = Path(out_dir).expanduser().absolute()
    final = out_dir / FOLDER_NAMES[task]
    conflicts = fastvideo_path_conflicts(final)
    if conflicts:
        raise ValueError(
            f"model path {final} contains {conflicts}, which fastvideo matches to other models"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=out_dir))
    try:
        _write_model(task, tmp)
        (tmp / MARKER_NAME).write_text(BUILDER_VERSION + "\n", encoding="utf-8")
        _make_world_readable(tmp)
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=out_dir))
            os.rename(final, old / "model")
        os.rename(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def ensure_tiny_models(cache_dir: Path | None = None) -> dict[str, Path]:
    """Build both tiny models into ``cache_dir`` unless complete builds are already there.

    Safe to call from several processes at once: builders serialise on a lock file in the
    cache directory. Returns ``{"t2v": path, "i2v": path}``.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = root.absolute()
    paths = {task: root / FOLDER_NAMES[task] for task in TASKS}
    if all(is_complete(p) for p in paths.values()):
        return paths
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / ".tiny-models.lock"):
        _remove_stale_partials(root)
        for task, path in paths.items():
            # Another process may have finished it while we waited for the lock.
            if not is_complete(path):
                build_tiny_model(task, root)
    return paths


def _make_world_readable(root: Path) -> None:
    # mkdtemp makes 0700 folders and safetensors writes 0600 files; other users (a service
    # account, a container user) must be able to read the cache.
    os.chmod(root, 0o755)
    for path in root.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def _remove_stale_partials(root: Path) -> None:
    # Left behind by builds that crashed; only called while holding the cache lock.
    for name in FOLDER_NAMES.values():
        for stale in root.glob(f".{name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in root.glob(f".{name}.old-*"):
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _write_model(task: str, root: Path) -> None:
    i2v = task == "i2v"
    _write_json(root / "model_index.json", _model_index(task))
    (root / "SYNTHETIC.txt").write_text(
        _SYNTHETIC_NOTE.format(version=BUILDER_VERSION, task=task.upper()), encoding="utf-8"
    )
    _write_scheduler(root / "scheduler", flow_shift=3.0 if i2v else 8.0)
    _write_tokenizer(root / "tokenizer")
    _write_text_encoder(root / "text_encoder")
    _write_vae(root / "vae")
    _write_transformer(root / "transformer", i2v=i2v)
    if i2v:
        _write_image_encoder(root / "image_encoder")
        _write_image_processor(root / "image_processor")


def _model_index(task: str) -> dict[str, object]:
    import diffusers

    index: dict[str, object] = {
        "_class_name": PIPELINE_CLASS_NAMES[task],
        "_diffusers_version": diffusers.__version__,
        # Scalar entries are skipped by both fastvideo's and diffusers' component loaders.
        "_videoserve_synthetic": True,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    if task == "i2v":
        index["image_encoder"] = ["transformers", "CLIPVisionModel"]
        index["image_processor"] = ["transformers", "CLIPImageProcessor"]
    return index


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_scheduler(folder: Path, flow_shift: float) -> None:
    # The keys of the Wan 2.1 Diffusers releases; all are accepted by fastvideo's and diffusers'
    # UniPCMultistepScheduler.
    config = {
        "_class_name": "UniPCMultistepScheduler",
        "_diffusers_version": "0.33.0",
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "disable_corrector": [],
        "dynamic_thresholding_ratio": 0.995,
        "final_sigmas_type": "zero",
        "flow_shift": flow_shift,
        "lower_order_final": True,
        "num_train_timesteps": 1000,
        "predict_x0": True,
        "prediction_type": "flow_prediction",
        "rescale_betas_zero_snr": False,
        "sample_max_value": 1.0,
        "solver_order": 2,
        "solver_p": None,
        "solver_type": "bh2",
        "steps_offset": 0,
        "thresholding": False,
        "timestep_spacing": "linspace",
        "trained_betas": None,
        "use_beta_sigmas": False,
        "use_exponential_sigmas": False,
        "use_flow_sigmas": True,
        "use_karras_sigmas": False,
    }
    _write_json(folder / "scheduler_config.json", config)


def _tokenizer_vocab() -> list[tuple[str, float]]:
    # T5 layout: <pad>=0, </s>=1, <unk>=2. Every printable ASCII character is present so any
    # ASCII prompt tokenizes without <unk>; whole words get better scores so Unigram picks them.
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab.append(("\u2581", -2.0))
    for word in _WORDS:
        vocab.append(("\u2581" + word, -5.0))
    for code in range(33, 127):
        vocab.append((chr(code), -8.0))
    seen: set[str] = set()
    unique = []
    for piece, score in vocab:
        if piece not in seen:
            seen.add(piece)
            unique.append((piece, score))
    assert len(unique) <= _VOCAB_SIZE
    return unique


def _write_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(Unigram(_tokenizer_vocab(), unk_id=2, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(" {2,}", " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    specials = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    _write_json(
        folder / "tokenizer_config.json",
        {
            **specials,
            "tokenizer_class": "T5Tokenizer",
            "model_max_length": 512,
            "extra_ids": 0,
            "additional_special_tokens": [],
            "clean_up_tokenization_spaces": False,
        },
    )
    _write_json(folder / "special_tokens_map.json", specials)


def _init_small(module: object, seed: int, std: float = _INIT_STD) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):  # type: ignore[attr-defined]
            lowered = name.lower()
            if lowered.endswith("bias"):
                param.zero_()
            elif "norm" in lowered or lowered.endswith("gamma"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def _save_safetensors(tensors: dict[str, object], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    contiguous = {k: v.detach().contiguous() for k, v in sorted(tensors.items())}  # type: ignore[attr-defined]
    save_file(contiguous, str(path), metadata={"format": "pt"})


def _write_text_encoder(folder: Path) -> None:
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=_VOCAB_SIZE,
        d_model=_TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(_SEEDS["text_encoder"])
    model = UMT5EncoderModel(config).eval()
    _init_small(model, _SEEDS["text_encoder"])
    model.save_pretrained(str(folder))


def _write_vae(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(_SEEDS["vae"])
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1)
    _init_small(vae, _SEEDS["vae"])
    vae.save_pretrained(str(folder))


def _write_transformer(folder: Path, i2v: bool) -> None:
    import torch
    from diffusers import WanTransformer3DModel

    hidden = 32
    kwargs: dict[str, object] = {
        "patch_size": (1, 2, 2),
        "num_attention_heads": 2,
        "attention_head_dim": hidden // 2,
        "in_channels": 36 if i2v else 16,
        "out_channels": 16,
        "text_dim": _TEXT_DIM,
        "freq_dim": 256,
        "ffn_dim": 64,
        "num_layers": 2,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "rope_max_seq_len": 1024,
    }
    if i2v:
        kwargs["image_dim"] = _CLIP_DIM
        kwargs["added_kv_proj_dim"] = hidden
    torch.manual_seed(_SEEDS["transformer"])
    model = WanTransformer3DModel(**kwargs)
    # Wider than the other components so the prompt, image and timestep visibly change the
    # output; with 0.02 the DiT's contribution vanishes and every request decodes the same noise.
    _init_small(model, _SEEDS["transformer"], std=_DIT_INIT_STD)
    model.save_pretrained(str(folder))
    if i2v:
        # fastvideo's Wan I2V cross-attention has a norm on the image query that diffusers no
        # longer has; diffusers only reads diffusion_pytorch_model.safetensors, fastvideo globs.
        extra = {
            f"blocks.{i}.attn2.norm_added_q.weight": torch.ones(hidden)
            for i in range(int(kwargs["num_layers"]))  # type: ignore[call-overload]
        }
        _save_safetensors(extra, folder / "fastvideo_extra.safetensors")


def _write_image_encoder(folder: Path) -> None:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=_CLIP_DIM,
        intermediate_size=32,
        projection_dim=_CLIP_DIM,
        num_hidden_layers=32,
        num_attention_heads=2,
        image_size=_CLIP_IMAGE_SIZE,
        patch_size=2,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    config.architectures = ["CLIPVisionModel"]
    torch.manual_seed(_SEEDS["image_encoder"])
    model = CLIPVisionModel(config).eval()
    _init_small(model, _SEEDS["image_encoder"])
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    state = model.state_dict()
    # Original CLIP checkpoints (and fastvideo's loader) name weights vision_model.*;
    # transformers 5 maps that prefix back when loading.
    prefixed = {
        name if name.startswith("vision_model.") else f"vision_model.{name}": tensor
        for name, tensor in state.items()
        if not name.endswith("position_ids")
    }
    _save_safetensors(prefixed, folder / "model.safetensors")


def _write_image_processor(folder: Path) -> None:
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(
        size={"shortest_edge": _CLIP_IMAGE_SIZE},
        crop_size={"height": _CLIP_IMAGE_SIZE, "width": _CLIP_IMAGE_SIZE},
        do_resize=True,
        do_center_crop=True,
        do_normalize=True,
        do_convert_rgb=True,
        resample=3,
    )
    processor.save_pretrained(str(folder))


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    """Build both tiny models into the directory given on the command line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in {"-h", "--help"}:
        print("usage: python -m videoserve.tiny_models OUT_DIR", file=sys.stderr)
        return 2
    out_dir = Path(args[0])
    for task in TASKS:
        start = time.perf_counter()
        path = build_tiny_model(task, out_dir)
        elapsed = time.perf_counter() - start
        size_mb = _folder_size(path) / 1e6
        print(f"{task}\t{path}\t{size_mb:.2f} MB\t{elapsed:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
