"""Hub models fetched once, in the backend process, before any replica starts.

A model given as a Hugging Face Hub id ("org/name") is resolved here to a snapshot folder of the
Hugging Face cache, downloading what is missing with huggingface_hub's own progress bars; the
replicas then load that folder (``ModelSpec.local_path``) and never touch the network, while
the Hub id stays the model's name (GET /v1/models, job records, metrics). Before a download the
repository's file sizes are asked for and compared with the cache disk's free space; offline
(``HF_HUB_OFFLINE=1`` or the Hub unreachable) a cached snapshot is served and a missing one
fails at once with the way out. huggingface_hub reads ``HF_HOME``, ``HF_HUB_CACHE``,
``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and ``HF_TOKEN`` itself; nothing here overrides them.

The Hub client (``api``), the downloader (``download``) and ``disk_usage`` are parameters so
that tests run without a network.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from videoserve.core.config import TINY_MODEL_IDS, ModelSpec, Task, is_synthetic

log = logging.getLogger("videoserve.model_fetch")

# What a Diffusers pipeline folder needs, and nothing else (Hub repos also carry README images,
# sample videos and other frameworks' copies of the weights):
# - "*.json": model_index.json (the pipeline's components), every component's config.json,
#   scheduler_config.json, preprocessor_config.json, the tokenizer's tokenizer.json /
#   tokenizer_config.json / special_tokens_map.json / vocab.json, and the
#   "*.safetensors.index.json" of sharded weights;
# - "*.safetensors": the weights (diffusers and fastvideo load these);
# - "*.model": sentencepiece tokenizers (Wan's UMT5 text encoder: tokenizer/spiece.model);
# - "*.txt": BPE merges.txt / vocab.txt of other tokenizers, and SYNTHETIC.txt, the marker of
#   random-weight models (videoserve.core.config.is_synthetic).
# Left out: pickled or other frameworks' weights (*.bin, *.pt, *.pth, *.ckpt, *.msgpack, *.h5,
# *.onnx), code (*.py: no remote code is run), images, videos and docs. Patterns match the
# whole path ("*.json" also matches "transformer/config.json"), as fnmatch does.
ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt")
# Weights that exist in some repositories instead of safetensors, which are not fetched.
OTHER_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".onnx")

GB = 1e9
# Seconds the size query may take before the Hub counts as unreachable.
HUB_TIMEOUT_S = 10.0
# "org/name": letters, digits, "-", "_" and "." (the Hub's own rule, without its finer points).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
CLUSTER_NOTE = ("in a Ray cluster every GPU node needs the model at the same path as the "
                "backend's node (shared storage, or the same Hugging Face cache: run "
                "`ray_serve_backend.py --download_only` with the same flags on each node)")


class ModelFetchError(RuntimeError):
    """A Hub model could not be made available locally; the message names the way out."""


def is_hub_id(model: str) -> bool:
    """Whether ``model`` is fetched from the Hub: "org/name", not a built-in id, not a path
    that exists here and not a path-shaped name (those fail in the replica, as a missing
    folder)."""
    if model.startswith("builtin:") or model in TINY_MODEL_IDS.values():
        return False
    if model.startswith(("/", "./", "../", "~")) or not _HUB_ID.fullmatch(model):
        return False
    return not Path(model).exists()


def hub_cache_dir() -> Path:
    """The cache folder huggingface_hub uses (HF_HUB_CACHE, else HF_HOME/hub, else
    ~/.cache/huggingface/hub), as it read the environment."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def free_bytes(folder: Path, disk_usage: Callable[[Any], Any] = shutil.disk_usage) -> int:
    """Free space of the disk ``folder`` is (or will be) on."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return int(disk_usage(probe).free)


def wanted(paths: Iterable[str]) -> list[str]:
    """The repository files a pipeline folder needs (ALLOW_PATTERNS)."""
    from huggingface_hub.utils import filter_repo_objects

    return list(filter_repo_objects(list(paths), allow_patterns=list(ALLOW_PATTERNS)))


def missing_bytes(repo_id: str, siblings: Iterable[Any], cache: Path) -> tuple[int, int]:
    """(bytes to download, bytes of all wanted files) of a repository's files (model_info's
    ``siblings``) given what the cache holds: a file is there when its blob is (the cache keeps
    a file's content once, named by its LFS sha256 or git blob id)."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    by_name = {s.rfilename: s for s in siblings}
    need = total = 0
    for name in wanted(by_name):
        sibling = by_name[name]
        lfs = getattr(sibling, "lfs", None)
        size = (lfs.size if lfs is not None else sibling.size) or 0
        total += size
        blob = lfs.sha256 if lfs is not None else getattr(sibling, "blob_id", None)
        if not (blob and (repo_dir / "blobs" / blob).exists()):
            need += size
    return need, total


def _flag(task: str | None) -> str:
    return f"--{task}_model_path" if task else "--t2v_model_path or --i2v_model_path"


def _ways_out(repo_id: str, task: str | None) -> str:
    task = task or "t2v"
    return (f"On a machine with internet access run `python ray_serve_backend.py "
            f"--download_only --tasks {task} --{task}_model_path {repo_id}` and copy its Hugging "
            f"Face cache folder here (or point HF_HOME or HF_HUB_CACHE at a copy), or pass a "
            f"local model folder with --{task}_model_path")


def _cached(repo_id: str, download: Callable[..., str]) -> Path | None:
    """The cached snapshot of ``repo_id``'s main revision, without the network; None if absent
    or incomplete."""
    try:
        return Path(download(repo_id, repo_type="model", allow_patterns=list(ALLOW_PATTERNS),
                             local_files_only=True))
    except OSError:  # LocalEntryNotFoundError / IncompleteSnapshotError are FileNotFoundErrors
        return None


def resolve_model(repo_id: str, *, task: str | None = None, api: Any = None,
                  download: Callable[..., str] | None = None,
                  disk_usage: Callable[[Any], Any] = shutil.disk_usage) -> Path:
    """The local snapshot folder of Hub model ``repo_id``, downloaded first if needed.

    ``task`` names the model's flags in the error messages (--t2v_model_path ...). Raises
    ModelFetchError: offline or unreachable with nothing cached, the repository unknown or
    closed to this token, too little disk space (then nothing is downloaded), a failed
    download.
    """
    if download is None:
        from huggingface_hub import snapshot_download as download
    if hub_offline():
        return _offline_snapshot(repo_id, task, download)
    info = _repo_info(repo_id, task, api, download)
    if isinstance(info, Path):  # the Hub did not answer, and the cache has the model
        return info
    _check_files_and_room(repo_id, list(info.siblings or []), task, disk_usage)
    try:
        return Path(download(repo_id, repo_type="model", allow_patterns=list(ALLOW_PATTERNS)))
    except Exception as exc:  # noqa: BLE001 - a network or disk failure midway
        raise ModelFetchError(
            f"downloading {repo_id} into {hub_cache_dir()} failed ({_short(exc)}); run again "
            f"to resume (what arrived is kept), or pass a local model folder with "
            f"{_flag(task)}") from None


def _offline_snapshot(repo_id: str, task: str | None, download: Callable[..., str]) -> Path:
    local = _cached(repo_id, download)
    if local is None:
        raise ModelFetchError(
            f"{repo_id} is not in the Hugging Face cache {hub_cache_dir()} and HF_HUB_OFFLINE=1 "
            f"forbids downloading it. {_ways_out(repo_id, task)}")
    log.info("%s: HF_HUB_OFFLINE=1, using the cached snapshot", repo_id)
    return local


def _repo_info(repo_id: str, task: str | None, api: Any,
               download: Callable[..., str]) -> Any:
    """The Hub's model info with file metadata; where the Hub refuses or cannot be reached,
    the cached snapshot's folder instead (a Path), else ModelFetchError with the way out."""
    import httpx
    from huggingface_hub.errors import RepositoryNotFoundError

    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        return api.model_info(repo_id, files_metadata=True, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError as exc:  # gated ones too
        local = _cached(repo_id, download)
        if local is not None:
            log.warning("%s: the Hub refused it (%s); using the cached snapshot", repo_id,
                        type(exc).__name__)
            return local
        raise ModelFetchError(
            f"the Hugging Face Hub ({hub_endpoint()}) has no model {repo_id} that this machine "
            f"may read ({type(exc).__name__}): check the id; for a gated or private model "
            f"accept its terms on the Hub and log in (`hf auth login`, or set HF_TOKEN); or "
            f"pass a local model folder with {_flag(task)}") from None
    except (OSError, httpx.HTTPError) as exc:  # unreachable, offline, a 5xx (HfHubHTTPError)
        local = _cached(repo_id, download)
        if local is not None:
            log.warning("%s: the Hub cannot be reached (%s); using the cached snapshot",
                        repo_id, _short(exc))
            return local
        raise ModelFetchError(
            f"{repo_id} is not in the Hugging Face cache {hub_cache_dir()} and the Hugging Face "
            f"Hub ({hub_endpoint()}) cannot be reached ({_short(exc)}). "
            f"{_ways_out(repo_id, task)}") from None


def _check_files_and_room(repo_id: str, siblings: list[Any], task: str | None,
                          disk_usage: Callable[[Any], Any]) -> None:
    """Refuse a repository without safetensors weights, and one whose missing files do not
    fit on the cache's disk (before anything is downloaded)."""
    flag, cache = _flag(task), hub_cache_dir()
    names = [s.rfilename for s in siblings]
    if not any(n.endswith(".safetensors") for n in wanted(names)) and any(
            n.endswith(OTHER_WEIGHTS) for n in names):
        raise ModelFetchError(
            f"{repo_id} has no .safetensors weights (only formats such as .bin or .pt, which "
            f"are not fetched: they can run code when loaded). Convert it to safetensors, or "
            f"pass a local model folder with {flag}")
    need, total = missing_bytes(repo_id, siblings, cache)
    free = free_bytes(cache, disk_usage)
    if need > free:
        raise ModelFetchError(
            f"not enough disk space for {repo_id}: it needs {need / GB:.1f} GB more in the "
            f"Hugging Face cache {cache}, which has {free / GB:.1f} GB free. Free space there, "
            f"point HF_HOME (or HF_HUB_CACHE) at a disk with room, or pass a local model folder "
            f"with {flag}")
    if need:
        log.info("%s: downloading %.1f GB of %.1f GB into %s (%.1f GB free)", repo_id, need / GB,
                 total / GB, cache, free / GB)
    else:
        log.info("%s: already in the Hugging Face cache %s", repo_id, cache)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def resolve_models(specs: dict[Task, ModelSpec], *, cluster: bool = False, api: Any = None,
                   download: Callable[..., str] | None = None,
                   disk_usage: Callable[[Any], Any] = shutil.disk_usage) -> dict[Task, ModelSpec]:
    """``specs`` with each Hub model's snapshot folder as its ``local_path`` (what replicas
    load); other models unchanged. ``cluster``: the backend joined a Ray cluster, whose other
    nodes need the same folder (not checked here: a replica that misses it says so)."""
    folders: dict[str, Path] = {}
    resolved: dict[Task, ModelSpec] = {}
    for task, spec in specs.items():
        if not is_hub_id(spec.model):
            resolved[task] = spec
            continue
        if spec.model not in folders:
            try:
                folders[spec.model] = resolve_model(spec.model, task=task, api=api,
                                                    download=download, disk_usage=disk_usage)
            except ModelFetchError as exc:
                note = f" ({CLUSTER_NOTE})" if cluster else ""
                raise ModelFetchError(f"the {task} model could not be fetched: {exc}{note}"
                                      ) from None
        folder = folders[spec.model]
        log.info("%s model %s: replicas load it from %s%s", task, spec.model, folder,
                 f"; {CLUSTER_NOTE}" if cluster else "")
        resolved[task] = replace(spec, local_path=str(folder),
                                 synthetic=spec.synthetic or is_synthetic(str(folder)))
    return resolved
