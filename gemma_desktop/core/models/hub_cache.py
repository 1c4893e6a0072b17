"""Is a model on disk? The one answer, for the probe, the window, the wizard and the engine.

Gemma 4 models live in Hugging Face's shared cache (``HF_HUB_CACHE``, else
``$HF_HOME/hub``), so a model another tool downloaded counts too. A snapshot
counts only when it is *complete*, by one rule (:func:`complete_snapshot`):

* ``refs/main`` names a commit whose snapshot folder exists;
* when huggingface_hub cached the repo's file listing for that commit
  (``trees/<commit>.json``, written by every ``snapshot_download`` including
  ours), every listed file is there with the listed size;
* otherwise (a snapshot written without a listing): ``config.json`` and every
  weight shard its index names (or at least one ``.safetensors`` file).

The download manager marks ``refs/main`` only once every file has been
verified, so its own partial downloads never count. The bundled model counts
once it is provisioned (:func:`gemma_desktop.core.models.bundled.is_provisioned`).

Pure file-system reads, no network. huggingface_hub (0.3 s to import) is only
imported when a listing exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gemma_desktop.core import paths
from gemma_desktop.core.models.catalog import BUNDLED_MODEL_ID, Variant

REVISION = "main"


def repo_folder(repo_id: str) -> str:
    """The cache folder name of a model repo (``models--google--gemma-4-E2B-it``)."""
    return "models--" + repo_id.replace("/", "--")


def repo_cache_dir(repo_id: str, hub_cache: Path | None = None) -> Path:
    """The repo's folder in the Hub cache (``hub_cache``, else the user's)."""
    return (hub_cache or paths.hf_hub_cache()) / repo_folder(repo_id)


def read_ref(storage: Path, revision: str = REVISION) -> str | None:
    """The commit ``refs/<revision>`` names, or ``None``."""
    try:
        value = (storage / "refs" / revision).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return value or None


def write_ref(storage: Path, commit: str, revision: str = REVISION) -> None:
    """Point ``refs/<revision>`` at ``commit`` (atomically: the model counts from here on)."""
    from gemma_desktop.core.fsutil import atomic_write

    atomic_write(storage / "refs" / revision, commit)


def _looks_complete(snapshot: Path) -> bool:
    """Completeness of a snapshot written without a file listing."""
    if not (snapshot / "config.json").is_file():
        return False
    index = snapshot / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        return all((snapshot / shard).is_file() for shard in shards)
    return any(snapshot.glob("*.safetensors"))


def _matches_listing(
    repo_id: str, commit: str, snapshot: Path, storage: Path, hub_cache: Path
) -> bool | None:
    """Whether every file of the cached listing is there with its size; ``None`` without one."""
    if not (storage / "trees" / f"{commit}.json").is_file():
        return None
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        listed = get_cached_repo_tree(repo_id, revision=commit, cache_dir=hub_cache)
    except CachedRepoTreeNotFoundError:
        return None
    for entry in listed:
        try:
            if os.stat(snapshot / entry.path).st_size != entry.size:
                return False
        except OSError:
            return False
    return True


def complete_snapshot(repo_id: str, hub_cache: Path | None = None) -> Path | None:
    """The complete snapshot ``refs/main`` points to, or ``None`` (see the module docstring)."""
    cache = hub_cache or paths.hf_hub_cache()
    storage = repo_cache_dir(repo_id, cache)
    commit = read_ref(storage)
    if commit is None:
        return None
    snapshot = storage / "snapshots" / commit
    if not snapshot.is_dir():
        return None
    listing = _matches_listing(repo_id, commit, snapshot, storage, cache)
    complete = _looks_complete(snapshot) if listing is None else listing
    return snapshot if complete else None


def local_model_path(variant: Variant | str, hub_cache: Path | None = None) -> Path | None:
    """Where the model is on disk, complete, or ``None``: the folder the engine loads."""
    from gemma_desktop.core.models.bundled import is_provisioned

    variant_id = variant if isinstance(variant, str) else variant.id
    if variant_id == BUNDLED_MODEL_ID:
        return paths.bundled_model_dir() if is_provisioned() else None
    return complete_snapshot(variant_id, hub_cache)


def is_on_disk(variant: Variant | str, hub_cache: Path | None = None) -> bool:
    """Whether the model can start from disk now, without network."""
    return local_model_path(variant, hub_cache) is not None
