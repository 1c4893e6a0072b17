"""The models on disk: what each catalog variant takes, delete, and verify.

The one place the Models page, ``gemma-desktop models`` and the tests ask:

* :func:`list_models` — every catalog variant with whether it is downloaded (the one
  completeness rule, :mod:`~gemma_desktop.core.models.hub_cache`), its bytes on disk as
  ``huggingface_hub.scan_cache_dir`` counts them (every revision and file of the repo in
  the cache, partial downloads included), its folder, and when it was last used;
* :func:`delete_model` — through huggingface_hub's own ``delete_revisions(...).execute()``,
  so a cache shared with other tools stays consistent; refused while the model runs in
  an engine or is being downloaded (:mod:`~gemma_desktop.core.models.model_use`);
* :func:`verify_model` — re-hash every file of the snapshot against the Hub's published
  hashes (sha256 for LFS files, git's blob id for the others), or, offline, against the
  cache's own record: huggingface_hub names each blob by that same hash.

"Last used" is when an engine of this app last started the model (recorded by
:class:`~gemma_desktop.core.models.model_use.ModelUse`); for a model it never ran, the
cache scan's ``last_accessed`` (the newest access time of its files, which a ``noatime``
mount does not update), and :attr:`LocalModel.last_used_source` says which.

Everything here blocks on the disk (a scan takes milliseconds, a verify reads every
byte): call it off a UI loop.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gemma_desktop.core import paths
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.models import model_use
from gemma_desktop.core.models.catalog import Variant, VariantCatalog
from gemma_desktop.core.models.hub_cache import local_model_path, repo_folder

if TYPE_CHECKING:
    from huggingface_hub import CachedRepoInfo

    from gemma_desktop.core.models.downloads import DownloadManager

log = logging.getLogger(__name__)

LastUsedSource = Literal["app", "cache-access", "never"]
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")


class ModelNotOnDiskError(GemmaDesktopError):
    """Nothing of the model is in the cache (delete, verify)."""


class ModelNotDeletableError(GemmaDesktopError):
    """The bundled model ships with the app; it is not deleted from here."""


@dataclass(frozen=True)
class LocalModel:
    """One catalog variant as this machine has it."""

    variant: Variant
    #: A complete snapshot is there: the engine can start it without network.
    downloaded: bool
    #: Bytes of the repo in the cache as ``scan_cache_dir`` counts them (0: nothing there).
    size_on_disk: int
    #: The folder the engine loads (complete), else the repo's folder in the cache, if any.
    path: Path | None
    #: Unix time of the last use (see :attr:`last_used_source`), ``None`` when unknown.
    last_used: float | None
    last_used_source: LastUsedSource
    #: Why the cache scan skipped the repo (a broken symlink...), else ``""``.
    problem: str = ""

    @property
    def id(self) -> str:
        return self.variant.id

    @property
    def on_disk(self) -> bool:
        """Anything of it is on disk (complete or partial): something to delete."""
        return self.size_on_disk > 0 or self.downloaded


def _scan(hub_cache: Path) -> tuple[dict[str, CachedRepoInfo], dict[str, str]]:
    """The cache's model repos by id, and the scan's complaint per repo folder it skipped."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(hub_cache)
    except CacheNotFound:
        return {}, {}
    repos = {r.repo_id: r for r in info.repos if r.repo_type == "model"}
    problems: dict[str, str] = {}
    for warning in info.warnings:
        text = str(warning)
        for folder in re.findall(r"models--[^/\s)]+", text):
            problems.setdefault(folder, text)
    return repos, problems


def _tree_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def list_models(
    hub_cache: Path | None = None, catalog: VariantCatalog | None = None
) -> list[LocalModel]:
    """Every catalog variant with its state on disk, in catalog order."""
    cache = (hub_cache or paths.hf_hub_cache()).expanduser()
    repos, problems = _scan(cache)
    used = model_use.last_used()
    result = []
    for variant in catalog or VariantCatalog():
        complete = local_model_path(variant, cache)
        repo = repos.get(variant.id)
        if variant.is_bundled:
            size = _tree_size(complete) if complete is not None else 0
            path = complete
            accessed = None
        else:
            size = repo.size_on_disk if repo is not None else 0
            path = complete or (repo.repo_path if repo is not None else None)
            accessed = repo.last_accessed if repo is not None else None
        if variant.id in used:
            last, source = used[variant.id], "app"
        elif accessed is not None:
            last, source = accessed, "cache-access"
        else:
            last, source = None, "never"
        problem = problems.get(repo_folder(variant.id), "")
        if problem and path is None:
            path = cache / repo_folder(variant.id)
        result.append(
            LocalModel(
                variant=variant,
                downloaded=complete is not None,
                size_on_disk=size,
                path=path,
                last_used=last,
                last_used_source=source,  # type: ignore[arg-type]
                problem=problem,
            )
        )
    return result


def get_model(
    variant_id: str, hub_cache: Path | None = None, catalog: VariantCatalog | None = None
) -> LocalModel:
    """One variant's :class:`LocalModel`; raises ``UnsupportedVariantError`` for an unknown id."""
    catalog = catalog or VariantCatalog()
    variant = catalog.get(variant_id)
    return next(m for m in list_models(hub_cache, catalog) if m.id == variant.id)


# --- delete ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeleteResult:
    """What :func:`delete_model` removed."""

    variant_id: str
    freed_bytes: int
    revisions: tuple[str, ...]


def delete_model(
    variant_id: str,
    hub_cache: Path | None = None,
    catalog: VariantCatalog | None = None,
    *,
    lock_dir: Path | None = None,
) -> DeleteResult:
    """Delete every cached revision of ``variant_id`` through huggingface_hub.

    Raises :class:`~gemma_desktop.core.models.model_use.ModelInUseError` while an engine
    runs it or a download writes it, :class:`ModelNotDeletableError` for the bundled
    model and :class:`ModelNotOnDiskError` when the cache has nothing of it.
    """
    catalog = catalog or VariantCatalog()
    variant = catalog.get(variant_id)
    if variant.is_bundled:
        raise ModelNotDeletableError(
            f"{variant.label} ships with Gemma Desktop; it is not deleted from here.",
            f"It takes about {variant.min_disk_gb:.1f} GB in {paths.bundled_model_dir()}; "
            "the app provisions it again when it needs it.",
        )
    cache = (hub_cache or paths.hf_hub_cache()).expanduser()
    folder = cache / repo_folder(variant.id)
    with model_use.exclusive_use(variant.id, lock_dir):
        repos, _ = _scan(cache)
        repo = repos.get(variant.id)
        if repo is not None and repo.revisions:
            from huggingface_hub import scan_cache_dir

            revisions = tuple(sorted(r.commit_hash for r in repo.revisions))
            strategy = scan_cache_dir(cache).delete_revisions(*revisions)
            freed = strategy.expected_freed_size
            strategy.execute()
        elif folder.exists():
            # A download stopped before its first file, or a folder the scan cannot
            # read: no revision for huggingface_hub to name; nothing else refers to it.
            revisions, freed = (), _tree_size(folder)
        else:
            raise ModelNotOnDiskError(
                f"{variant.id} is not in the Hugging Face cache at {cache}.",
                "Nothing to delete. `gemma-desktop models` lists what is on disk.",
            )
        if folder.exists():  # partial files of an interrupted download belong to no revision
            shutil.rmtree(folder, ignore_errors=True)
    model_use.forget_last_used(variant.id)
    log.info("deleted %s from %s (%d bytes)", variant.id, cache, freed)
    return DeleteResult(variant.id, freed, revisions)


# --- verify ------------------------------------------------------------------------------

Against = Literal["hub", "cache"]


@dataclass(frozen=True)
class FileCheck:
    """One file of a verified snapshot."""

    path: str
    ok: bool
    #: The hash it must have (the Hub's, or the cache's record), ``None`` when unknown.
    expected: str | None
    actual: str | None
    detail: str = ""


@dataclass(frozen=True)
class VerifyReport:
    """The result of :func:`verify_model`."""

    variant_id: str
    snapshot: Path
    commit: str
    against: Against
    files: tuple[FileCheck, ...]
    #: Why it was checked against the cache although the Hub was asked ("" otherwise).
    note: str = ""

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)

    @property
    def failed(self) -> tuple[FileCheck, ...]:
        return tuple(f for f in self.files if not f.ok)


def _hash_of(path: Path, kind: Literal["sha256", "git"]) -> str:
    from gemma_desktop.core.models.downloads import file_sha256, git_blob_oid

    return file_sha256(path) if kind == "sha256" else git_blob_oid(path)


def _snapshot_files(snapshot: Path) -> Iterable[tuple[str, Path]]:
    for entry in sorted(snapshot.rglob("*")):
        if entry.is_dir():
            continue
        yield entry.relative_to(snapshot).as_posix(), entry


def _check_against_cache(snapshot: Path) -> list[FileCheck]:
    checks = []
    for name, entry in _snapshot_files(snapshot):
        try:
            blob = entry.resolve(strict=True)
        except OSError:
            checks.append(FileCheck(name, False, None, None, "missing (broken link)"))
            continue
        record = blob.name
        kind: Literal["sha256", "git"] | None = (
            "sha256" if _SHA256.fullmatch(record) else "git" if _SHA1.fullmatch(record) else None
        )
        if kind is None:
            # A file copied into the snapshot (no symlinks): the cache has no hash of it.
            checks.append(FileCheck(name, True, None, None, "no hash recorded in the cache"))
            continue
        actual = _hash_of(blob, kind)
        checks.append(FileCheck(name, actual == record, record, actual))
    return checks


def _check_against_hub(snapshot: Path, listing: Iterable[Any]) -> list[FileCheck]:
    checks = []
    for remote in listing:
        local = snapshot / remote.path
        expected = remote.lfs_sha256 or remote.blob_id
        if not local.is_file():
            checks.append(FileCheck(remote.path, False, expected, None, "missing"))
            continue
        kind: Literal["sha256", "git"] = "sha256" if remote.lfs_sha256 else "git"
        actual = _hash_of(local, kind)
        checks.append(FileCheck(remote.path, actual == expected, expected, actual))
    return checks


def verify_model(
    variant_id: str,
    *,
    online: bool = True,
    manager: DownloadManager | None = None,
) -> VerifyReport:
    """Hash every file of ``variant_id``'s snapshot and compare (see the module docstring).

    ``online``: against the Hub's published hashes for the snapshot's commit (through
    ``manager``: its cache, endpoint and token), falling back to the cache's own record
    when the Hub cannot be reached (:attr:`VerifyReport.note` says so). Raises
    :class:`ModelNotOnDiskError` when there is no complete snapshot, and the download
    errors (gated, bad token) the Hub answers with.
    """
    from gemma_desktop.core.models.download_errors import HubServerError, HubUnreachableError
    from gemma_desktop.core.models.downloads import DownloadManager

    manager = manager or DownloadManager()
    variant = manager.catalog.get(variant_id)
    snapshot = manager.cached_snapshot(variant.id)
    if snapshot is None:
        raise ModelNotOnDiskError(
            f"{variant.id} is not downloaded completely; there is nothing to verify.",
            f"Download it first: gemma-desktop download --variant {variant.id}",
        )
    commit = snapshot.name
    note = ""
    if online and not variant.is_bundled:
        if manager.is_offline():
            note = "Offline mode (HF_HUB_OFFLINE): checked against the cache's own hashes."
        else:
            try:
                listing = manager.published_files(variant.id, commit)
            except (HubUnreachableError, HubServerError) as exc:
                note = f"{exc.reason} Checked against the cache's own hashes instead."
            else:
                checks = _check_against_hub(snapshot, listing)
                return VerifyReport(variant.id, snapshot, commit, "hub", tuple(checks))
    elif variant.is_bundled:
        note = "The bundled model was converted on this machine; its files have no hashes."
    checks = [] if variant.is_bundled else _check_against_cache(snapshot)
    return VerifyReport(variant.id, snapshot, commit, "cache", tuple(checks), note)
