"""Deterministic random-weight Wan models in the Diffusers folder layout.

The folders load in both engines: fastvideo's ``VideoGenerator`` (T2V picks the FastWan DMD
pipeline through ``WanDMDPipeline``, I2V picks ``WanImageToVideoPipeline``) and diffusers
(see ``videoserve.engines.diffusers.loading.load_diffusers_pipeline``). They produce noise;
they exist so tests and CI can exercise the real loading and generation code without weights.
Two sizes (``videoserve.devtools.model_sizes``): ``tiny`` (a few MB, CPU, seconds) and ``full``
(the real FastWan2.1-T2V-1.3B / Wan2.1-I2V-14B-480P architectures, bf16, built on a GPU when
there is one).

Usage: ``python -m videoserve.tiny_models OUT_DIR`` builds both tiny models under OUT_DIR and
prints their paths; ``python -m videoserve.tiny_models --size full --out DIR [--tasks t2v i2v]
[--loras LORA_DIR]`` builds the full-size ones; ``--loras`` also writes the synthetic LoRAs of
each built model into LORA_DIR (see ``videoserve.devtools.synthetic_loras``), e.g.
``--size full --out /tmp/full --tasks i2v --loras /tmp/full/loras``.
``ensure_tiny_models()`` / ``ensure_full_models()`` build them once into a cache directory (env
``VIDEOSERVE_MODEL_CACHE``, default ``~/.cache/videoserve/models``) and reuse them afterwards.

Layout choices forced by fastvideo 0.2.0 (see shared/FASTVIDEO_FACTS.md):
- the scheduler JSON is written by hand: fastvideo's UniPC rejects keys that current diffusers
  writes (``shift_terminal``, ``sigma_max``, ``sigma_min``);
- the tokenizer is a Unigram ``tokenizers`` model (diffusers' T5TokenizerFast rejects WordLevel);
- the VAE keeps ``z_dim`` 16 (fastvideo's Wan VAE config hard-codes 16 latent statistics);
- fastvideo loads every ``*.safetensors`` of transformer/ strictly, diffusers only the files of
  its index (or the single file), so weights only fastvideo knows go into
  ``transformer/fastvideo_extra.safetensors``: for I2V ``blocks.N.attn2.norm_added_q.weight``
  (diffusers no longer has it), for the full FastWan its video-sparse-attention gates;
- CLIP weights are saved with the ``vision_model.`` prefix of the original checkpoints
  (transformers 5 drops it, and fastvideo needs it); CLIP has 32 layers because fastvideo builds
  31 of them, and image_size / patch_size gives 16x16 patches + CLS = the 257 image tokens Wan's
  cross-attention slices.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from videoserve.devtools.model_sizes import (
    FULL,
    SHARED_COMPONENTS,
    SIZES,
    TINY,
    ModelSize,
    new_component,
    resolve_size,
    torch_defaults,
    transformer_extra_shapes,
)

BUILDER_VERSION = TINY.version
MARKER_NAME = ".complete"
SEED_NAME = ".seed"  # the seed its DiT was drawn with (none: 0, the default)
TASKS = ("t2v", "i2v")
FOLDER_NAMES = TINY.folder_names
PIPELINE_CLASS_NAMES = {"t2v": "WanDMDPipeline", "i2v": "WanImageToVideoPipeline"}
CACHE_ENV = "VIDEOSERVE_MODEL_CACHE"
EXTRA_WEIGHTS_NAME = "fastvideo_extra.safetensors"

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

_SEEDS = {"transformer": 11, "vae": 12, "text_encoder": 13, "image_encoder": 14, "extra": 15}

_SYNTHETIC_NOTE = """\
SYNTHETIC MODEL - random weights, produces noise.

Built by videoserve.devtools.tiny_models ({version}):
{description} in the Diffusers folder layout, loadable by fastvideo and diffusers.
It was never trained.
"""

_WORDS = (
    "a an the of and in on at to with for from by is are was be it this that cat dog bird fish "
    "horse car boat city street forest river sea sky sun moon night day light red blue green "
    "white black small big old young running walking flying over under slow fast video camera "
    "view close shot scene man woman child people water tree mountain snow rain cloud"
).split()


def default_cache_dir() -> Path:
    """Return the model cache directory (env VIDEOSERVE_MODEL_CACHE or the user cache)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "videoserve" / "models"


def fastvideo_path_conflicts(path: str | os.PathLike[str]) -> list[str]:
    """Return the substrings of ``path`` that would mislead fastvideo's model detection."""
    lowered = str(Path(path).expanduser().absolute()).lower()
    return [token for token in FASTVIDEO_PATH_TOKENS if token in lowered]


def is_complete(model_dir: str | os.PathLike[str], size: ModelSize | str = TINY) -> bool:
    """Return True if ``model_dir`` holds a finished build of ``size`` by this builder version.

    A folder whose shared components link to a sibling folder that is gone is not complete.
    """
    root = Path(model_dir)
    try:
        if (root / MARKER_NAME).read_text(encoding="utf-8").strip() != resolve_size(size).version:
            return False
        return all(entry.exists() for entry in root.iterdir())
    except OSError:
        return False


def build_model(task: str, out_dir: Path, size: ModelSize | str = TINY, seed: int = 0) -> Path:
    """Build the ``task`` model ("t2v" or "i2v") of ``size`` as ``out_dir/<folder name>``.

    The folder is written under a temporary name and renamed into place after its marker file,
    so a crashed build never leaves a folder that looks complete. An existing folder is
    replaced. A full-size I2V links the text encoder, tokenizer and VAE of a complete T2V
    folder beside it instead of writing its own. ``seed`` changes the DiT's random weights
    (another model of the same shape, e.g. to switch to). Returns the model folder.
    """
    size = resolve_size(size)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    out_dir = Path(out_dir).expanduser().absolute()
    final = out_dir / size.folder_names[task]
    conflicts = fastvideo_path_conflicts(final)
    if conflicts:
        raise ValueError(
            f"model path {final} contains {conflicts}, which fastvideo matches to other models"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=out_dir))
    try:
        _write_model(size, task, tmp, _shared_source(size, task, out_dir), seed)
        (tmp / SEED_NAME).write_text(f"{seed}\n", encoding="utf-8")
        (tmp / MARKER_NAME).write_text(size.version + "\n", encoding="utf-8")
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


def built_with(path: Path, size: ModelSize, seed: int) -> bool:
    """Whether ``path`` holds a complete build of ``size`` drawn with ``seed``."""
    try:
        recorded = int((path / SEED_NAME).read_text(encoding="utf-8").strip() or 0)
    except FileNotFoundError:
        recorded = 0
    except (OSError, ValueError):
        return False
    return recorded == seed and is_complete(path, size)


def build_tiny_model(task: str, out_dir: Path) -> Path:
    """Build the tiny ``task`` model as ``out_dir/tiny-wan-<task>`` (see ``build_model``)."""
    return build_model(task, out_dir, TINY)


def ensure_models(
    size: ModelSize | str, cache_dir: Path | None = None, tasks: Iterable[str] = TASKS
) -> dict[str, Path]:
    """Build the ``tasks`` models of ``size`` into ``cache_dir`` unless complete builds are there.

    Safe to call from several processes at once: builders serialise on a lock file in the
    cache directory. Returns ``{task: path}``.
    """
    size = resolve_size(size)
    wanted = set(tasks)
    if not wanted <= set(TASKS):
        raise ValueError(f"unknown tasks {sorted(wanted - set(TASKS))}; expected some of {TASKS}")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = root.absolute()
    # T2V first: a full-size I2V links the text encoder, tokenizer and VAE of the T2V folder.
    paths = {task: root / size.folder_names[task] for task in TASKS if task in wanted}
    if all(is_complete(p, size) for p in paths.values()):
        return paths
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / f".{size.name}-models.lock"):
        _remove_stale_partials(root, size)
        for task, path in paths.items():
            # Another process may have finished it while we waited for the lock.
            if not is_complete(path, size):
                build_model(task, root, size)
    return paths


def ensure_tiny_models(cache_dir: Path | None = None) -> dict[str, Path]:
    """Build both tiny models into ``cache_dir`` once; returns ``{"t2v": path, "i2v": path}``."""
    return ensure_models(TINY, cache_dir)


def ensure_full_models(
    cache_dir: Path | None = None, tasks: Iterable[str] = TASKS
) -> dict[str, Path]:
    """Build the full-size random-weight models once (tens of GB; a GPU makes it minutes)."""
    return ensure_models(FULL, cache_dir, tasks)


def _shared_source(size: ModelSize, task: str, out_dir: Path) -> Path | None:
    if not size.share_components or task == "t2v":
        return None
    t2v = out_dir / size.folder_names["t2v"]
    return t2v if is_complete(t2v, size) else None


def _make_world_readable(root: Path) -> None:
    # mkdtemp makes 0700 folders and safetensors writes 0600 files; other users (a service
    # account, a container user) must be able to read the cache. Links are skipped: chmod
    # would follow them into the folder they share.
    os.chmod(root, 0o755)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if name in dirs else 0o644)


def _remove_stale_partials(root: Path, size: ModelSize) -> None:
    # Left behind by builds that crashed; only called while holding the cache lock.
    for name in size.folder_names.values():
        for kind in ("partial", "old"):
            for stale in root.glob(f".{name}.{kind}-*"):
                shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _release_memory(size: ModelSize) -> None:
    # Full-size components go one at a time (the 14B DiT alone is 33 GB in bf16); small builds
    # skip it, a full gc.collect() costs about 0.5 s once the GPU libraries are imported.
    if not size.prefer_cuda:
        return
    import gc

    import torch

    gc.collect()
    # Only if this process already uses CUDA: initialising it here would cost GPU memory.
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _write_model(size: ModelSize, task: str, root: Path, shared: Path | None,
                 seed: int = 0) -> None:
    i2v = task == "i2v"
    _write_json(root / "model_index.json", _model_index(task))
    note = _SYNTHETIC_NOTE.format(version=size.version, description=size.descriptions[task])
    (root / "SYNTHETIC.txt").write_text(note, encoding="utf-8")
    _write_scheduler(root / "scheduler", flow_shift=3.0 if i2v else 8.0)
    writers = {
        "tokenizer": lambda folder: _write_tokenizer(folder, size),
        "text_encoder": lambda folder: _write_pretrained(folder, size, "text_encoder"),
        "vae": lambda folder: _write_pretrained(folder, size, "vae"),
        "transformer": lambda folder: _write_transformer(folder, size, task, seed),
    }
    if i2v:
        writers["image_encoder"] = lambda folder: _write_image_encoder(folder, size)
        writers["image_processor"] = lambda folder: _write_image_processor(folder, size)
    for name, write in writers.items():
        if shared is not None and name in SHARED_COMPONENTS:
            # Relative, so the link survives the rename into place and moving the parent.
            os.symlink(Path("..", shared.name, name), root / name, target_is_directory=True)
            continue
        with torch_defaults(size):
            write(root / name)
        _release_memory(size)


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


def _tokenizer_vocab(vocab_size: int) -> list[tuple[str, float]]:
    # T5 layout: <pad>=0, </s>=1, <unk>=2. Every printable ASCII character is present so any
    # ASCII prompt tokenizes without <unk>; whole words get better scores so Unigram picks them.
    # The same small vocabulary serves the full-size encoder: its ids only need to be < vocab.
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
    assert len(unique) <= vocab_size
    return unique


def _write_tokenizer(folder: Path, size: ModelSize) -> None:
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer_vocab(int(size.text_encoder["vocab_size"]))
    tokenizer = Tokenizer(Unigram(vocab, unk_id=2, byte_fallback=False))
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


def _init_small(module: Any, seed: int, std: float) -> None:
    _fill_small(sorted(module.named_parameters()), seed, std)


def _fill_small(named: Iterable[tuple[str, Any]], seed: int, std: float) -> None:
    # Biases 0, norm scales 1, everything else N(0, std): small enough that no stage overflows.
    import torch

    generator = None
    with torch.no_grad():
        for name, tensor in named:
            lowered = name.lower()
            if lowered.endswith("bias"):
                tensor.zero_()
            elif "norm" in lowered or lowered.endswith("gamma"):
                tensor.fill_(1.0)
            else:
                if generator is None:
                    generator = torch.Generator(device=tensor.device).manual_seed(seed)
                noise = torch.randn(
                    tensor.shape, generator=generator, device=tensor.device, dtype=tensor.dtype
                )
                tensor.copy_(noise.mul_(std))


def _save_safetensors(tensors: dict[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    contiguous = {k: v.detach().contiguous() for k, v in sorted(tensors.items())}
    save_file(contiguous, str(path), metadata={"format": "pt"})


def _save_pretrained(model: Any, folder: Path, size: ModelSize) -> None:
    # Shards of at most max_shard_size with the library's *.safetensors.index.json, which is
    # what diffusers and transformers (and fastvideo's text-encoder loader) read.
    options = {"max_shard_size": size.max_shard_size} if size.max_shard_size else {}
    model.save_pretrained(str(folder), **options)


def _write_transformer(folder: Path, size: ModelSize, task: str, seed: int = 0) -> None:
    import torch

    torch.manual_seed(_SEEDS["transformer"] + seed)
    model = new_component(size, "transformer", task)
    _init_small(model, _SEEDS["transformer"] + seed, std=size.dit_init_std)
    _save_pretrained(model, folder, size)
    del model
    _release_memory(size)
    extras = {
        name: torch.empty(shape) for name, shape in transformer_extra_shapes(size, task).items()
    }
    if extras:
        _fill_small(sorted(extras.items()), _SEEDS["extra"], std=size.dit_init_std)
        # diffusers reads only its own weight files; fastvideo globs every *.safetensors.
        _save_safetensors(extras, folder / EXTRA_WEIGHTS_NAME)


def _write_pretrained(folder: Path, size: ModelSize, component: str) -> None:
    import torch

    torch.manual_seed(_SEEDS[component])
    model = new_component(size, component)
    _init_small(model, _SEEDS[component], std=size.init_std)
    _save_pretrained(model, folder, size)


def _write_image_encoder(folder: Path, size: ModelSize) -> None:
    import torch

    torch.manual_seed(_SEEDS["image_encoder"])
    model = new_component(size, "image_encoder")
    _init_small(model, _SEEDS["image_encoder"], std=size.init_std)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(folder))
    # Original CLIP checkpoints (and fastvideo's loader) name weights vision_model.*;
    # transformers 5 maps that prefix back when loading.
    prefixed = {
        name if name.startswith("vision_model.") else f"vision_model.{name}": tensor
        for name, tensor in model.state_dict().items()
        if not name.endswith("position_ids")
    }
    _save_safetensors(prefixed, folder / "model.safetensors")


def _write_image_processor(folder: Path, size: ModelSize) -> None:
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(
        size={"shortest_edge": size.image_size},
        crop_size={"height": size.image_size, "width": size.image_size},
        do_resize=True,
        do_center_crop=True,
        do_normalize=True,
        do_convert_rgb=True,
        resample=3,
    )
    processor.save_pretrained(str(folder))


def _folder_size(path: Path) -> int:
    # The folder's own files; linked (shared) components count where they live.
    total = 0
    for folder, _dirs, files in os.walk(path):
        total += sum(os.lstat(os.path.join(folder, name)).st_size for name in files)
    return total


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m videoserve.tiny_models",
        description="Build random-weight (synthetic, noise-producing) Wan models.",
    )
    parser.add_argument("out_dir", nargs="?", type=Path, help="output directory (or --out)")
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default=TINY.name,
        help="tiny (default: MBs, CPU) or full (the real architectures: tens of GB, a GPU)",
    )
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--seed", type=int, default=0,
                        help="another seed gives another DiT of the same shape (default 0)")
    parser.add_argument("--force", action="store_true",
                        help="build again even where a complete folder of the same size and "
                             "seed is there (and write the --loras files again)")
    parser.add_argument("--loras", type=Path, metavar="DIR",
                        help="also write synthetic (random-weight) LoRAs of each built model, "
                             "in diffusers and Wan format, into DIR")
    args = parser.parse_args(argv)
    if (args.out is None) == (args.out_dir is None):
        parser.error("give the output directory once: OUT_DIR or --out DIR")
    args.out = args.out or args.out_dir
    return args


def main(argv: list[str] | None = None) -> int:
    """Build the models the command line asks for and print one line per model."""
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    size = SIZES[args.size]
    if size.prefer_cuda:
        import torch

        if not torch.cuda.is_available():
            print(
                "no CUDA GPU: building on the CPU (slow; the 14B DiT alone takes 33 GB of RAM)",
                file=sys.stderr,
                flush=True,
            )
    for task in TASKS:
        if task not in args.tasks:
            continue
        start = time.perf_counter()
        path = Path(args.out).expanduser().absolute() / size.folder_names[task]
        if not args.force and built_with(path, size, args.seed):
            # A full-size rebuild writes tens of GB beside the old folder before replacing it.
            print(f"{task}\t{path}\talready built (--force builds it again)", flush=True)
            continue
        path = build_model(task, args.out, size, args.seed)
        elapsed = time.perf_counter() - start
        size_mb = _folder_size(path) / 1e6
        print(f"{task}\t{path}\t{size_mb:.2f} MB\t{elapsed:.1f} s", flush=True)
    if args.loras is not None:
        _write_loras(args, size)
    return 0


def _write_loras(args: argparse.Namespace, size: ModelSize) -> None:
    # Imported here: synthetic_loras imports this module.
    from videoserve.devtools.synthetic_loras import (
        lora_paths,
        loras_complete,
        write_synthetic_loras,
    )

    lora_dir = Path(args.loras).expanduser().absolute()
    for task in (task for task in TASKS if task in args.tasks):
        model = Path(args.out).expanduser().absolute() / size.folder_names[task]
        prefix = f"synthetic-{task}"
        start = time.perf_counter()
        paths = lora_paths(lora_dir, prefix)
        written = "already written (--force writes them again)"
        if args.force or not loras_complete(paths, model):
            paths = write_synthetic_loras(model, lora_dir, prefix=prefix)
            written = f"{time.perf_counter() - start:.1f} s"
        for fmt, path in paths.items():
            size_mb = path.stat().st_size / 1e6
            print(f"{task}\tlora-{fmt}\t{path}\t{size_mb:.2f} MB\t{written}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
