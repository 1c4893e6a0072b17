"""Model downloads from the Hugging Face Hub: progress, cancel, resume, disk check.

:class:`DownloadManager` wraps ``huggingface_hub`` (no HTTP client of its own).
A download of one catalog variant goes:

1. **plan** — the repo's commit and file list with sizes and hashes
   (``HfApi.model_info`` + ``list_repo_tree``), what the cache already holds,
   and free space where the cache lives. Too little space is refused here,
   before a byte is fetched.
2. **fetch** — one ``hf_hub_download`` per missing file, pinned to the
   planned commit, into the shared HF cache. A ``tqdm`` subclass passed as
   ``tqdm_class`` reports bytes and raises at the next chunk once cancel is
   set, which makes huggingface_hub close the response and delete its
   temporary file.
3. **verify** — every fetched file is hashed against the Hub's listing
   (sha256 for LFS files, the git blob id for the others). A mismatch deletes
   the file and fetches it once more; it is never left for the engine.
4. **finish** — ``snapshot_download`` pinned to the commit writes the cache's
   tree listing (no file is transferred: all are present), then ``refs/main``
   is pointed at the commit. Only a complete, verified snapshot gets a ref,
   so :meth:`DownloadManager.cached_snapshot` never returns a partial one.

Resume, with huggingface_hub 2.4: within one run a dropped connection resumes
with a ``Range`` request (the library retries five times); across runs every
finished file is kept and not fetched again, but a file that was mid-transfer
starts over, because 2.4 writes to a process-unique temporary file and never
reuses an old one. Such leftovers are deleted at the next start when no other
process holds their lock, so they cannot fill the disk.

Environment is read at call time, not import time: ``HF_ENDPOINT``,
``HF_HUB_CACHE`` / ``HF_HOME`` and ``HF_HUB_OFFLINE`` (huggingface_hub reads
its own constants once, at import, so endpoint and cache dir are always passed
explicitly).

Progress is delivered through a callback on the download's thread; a UI must
marshal it to its own thread (signals or ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from tqdm import tqdm

from gemma_desktop.core import paths
from gemma_desktop.core.fsutil import atomic_write
from gemma_desktop.core.models.catalog import Variant, VariantCatalog
from gemma_desktop.core.models.download_errors import (
    CorruptDownloadError,
    DownloadCancelledError,
    DownloadError,
    GatedModelError,
    HubServerError,
    HubUnreachableError,
    InsufficientDiskSpaceError,
    InvalidTokenError,
    NotDownloadableError,
    OfflineModelMissingError,
    RepoNotFoundError,
    translate_error,
)
from gemma_desktop.core.models.hub_cache import (
    REVISION,
    local_model_path,
    repo_cache_dir,
    write_ref,
)
from gemma_desktop.core.models.model_use import ModelUse

if TYPE_CHECKING:
    from huggingface_hub.hf_api import RepoFile

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_ENDPOINT = "https://huggingface.co"
#: Space left free after the download, so the system and the engine's own
#: files still fit.
DEFAULT_HEADROOM_BYTES = 256 * 1024 * 1024
#: Seconds to wait before each retry of a transient failure (network, 5xx).
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (2.0, 5.0, 15.0)
#: huggingface_hub writes and reports in chunks of this size (10 MiB by
#: default). Smaller chunks give smoother progress, quicker cancel, and lose
#: less data when a dropped connection resumes (it resumes at a chunk border).
TRANSFER_CHUNK_BYTES = 256 * 1024
_EMIT_INTERVAL_S = 0.1
_HASH_BLOCK = 8 * 1024 * 1024

Phase = Literal["planning", "downloading", "verifying", "retrying", "finishing", "done"]


# --- data -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """One file of the repo at the planned commit, as the Hub lists it."""

    path: str
    size: int
    blob_id: str
    lfs_sha256: str | None = None

    @property
    def etag(self) -> str:
        """The name huggingface_hub gives its blob in the cache."""
        return self.lfs_sha256 or self.blob_id


@dataclass(frozen=True)
class DownloadPlan:
    """What a download of ``variant_id`` at ``commit`` has to do."""

    variant_id: str
    repo_id: str
    commit: str
    files: tuple[RemoteFile, ...]
    cached: frozenset[str]
    cache_dir: Path
    free_bytes: int

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def missing(self) -> tuple[RemoteFile, ...]:
        return tuple(f for f in self.files if f.path not in self.cached)

    @property
    def missing_bytes(self) -> int:
        return sum(f.size for f in self.missing)


@dataclass(frozen=True)
class DownloadProgress:
    """A snapshot of a running download, safe to hand to another thread.

    Overall figures count the whole repo (files already in the cache are
    done); rates and ETAs count bytes transferred in this run.
    """

    variant_id: str
    phase: Phase
    total_bytes: int = 0
    done_bytes: int = 0
    rate_bps: float | None = None
    eta_s: float | None = None
    files_total: int = 0
    files_done: int = 0
    file: str | None = None
    file_bytes: int = 0
    file_done: int = 0
    file_rate_bps: float | None = None
    file_eta_s: float | None = None
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 0.0


@dataclass(frozen=True)
class DownloadResult:
    """A complete, verified snapshot in the cache."""

    variant_id: str
    snapshot: Path
    commit: str | None
    fetched: tuple[str, ...] = ()
    reused: tuple[str, ...] = ()
    transferred_bytes: int = 0
    offline: bool = False
    #: Dropped connections huggingface_hub resumed with a Range request.
    resumes: int = 0


ProgressCallback = Callable[[DownloadProgress], None]


class RateMeter:
    """Bytes per second over a sliding window, and the time left at that rate."""

    def __init__(self, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window_s
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()
        self.total = 0

    def add(self, n: int) -> None:
        self.total += n
        now = self._clock()
        self._samples.append((now, self.total))
        while len(self._samples) > 2 and now - self._samples[0][0] > self._window:
            self._samples.popleft()

    def reset(self) -> None:
        self._samples.clear()
        self.total = 0

    @property
    def rate(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        # Under half a second of samples says more about latency than throughput.
        return (b1 - b0) / (t1 - t0) if t1 - t0 >= 0.5 else None

    def eta(self, remaining: int) -> float | None:
        rate = self.rate
        return remaining / rate if rate else None


def format_bytes(n: float) -> str:
    """``1.5 GB`` style, decimal units like the Hub's own pages."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


# --- the progress bridge huggingface_hub calls -----------------------------------------


class _Cancelled(BaseException):
    """Raised inside huggingface_hub to stop a transfer.

    A ``BaseException`` so no ``except Exception`` inside the library turns it
    into a retry.
    """


class _NullWriter:
    def write(self, _text: str) -> int:
        return 0

    def flush(self) -> None:
        pass


class _Run:
    """Mutable state of one download run, shared by its threads."""

    def __init__(
        self,
        plan: DownloadPlan,
        cancel: threading.Event,
        callback: ProgressCallback | None,
    ) -> None:
        self.plan = plan
        self.cancel = cancel
        self.callback = callback
        self.lock = threading.Lock()
        self.meter = RateMeter()
        self.file_meter = RateMeter()
        self.done_bytes = plan.total_bytes - plan.missing_bytes
        self.files_done = len(plan.files) - len(plan.missing)
        self.file: RemoteFile | None = None
        self.file_done = 0
        self.phase: Phase = "planning"
        self.message = ""
        self.resumes = 0
        self._last_emit = 0.0

    def start_file(self, f: RemoteFile, phase: Phase = "downloading") -> None:
        with self.lock:
            self.file, self.file_done, self.phase, self.message = f, 0, phase, ""
            self.file_meter.reset()
        self.emit(force=True)

    def advance(self, n: int) -> None:
        if self.cancel.is_set():
            raise _Cancelled
        with self.lock:
            self.file_done += n
            self.done_bytes += n
            self.meter.add(n)
            self.file_meter.add(n)
        self.emit()

    def discard_file(self) -> None:
        """Take a failed or rejected file's bytes back out of the totals."""
        with self.lock:
            self.done_bytes -= self.file_done
            self.file_done = 0

    def discard_cached(self, f: RemoteFile) -> None:
        """A file counted as cached turned out damaged: it has to be fetched after all."""
        with self.lock:
            self.done_bytes -= f.size
            self.files_done -= 1

    def finish_file(self) -> None:
        with self.lock:
            self.files_done += 1
        self.emit(force=True)

    def set_phase(self, phase: Phase, message: str = "") -> None:
        with self.lock:
            self.phase, self.message = phase, message
        self.emit(force=True)

    def snapshot(self) -> DownloadProgress:
        with self.lock:
            remaining = self.plan.total_bytes - self.done_bytes
            f = self.file
            return DownloadProgress(
                variant_id=self.plan.variant_id,
                phase=self.phase,
                total_bytes=self.plan.total_bytes,
                done_bytes=self.done_bytes,
                rate_bps=self.meter.rate,
                eta_s=self.meter.eta(remaining),
                files_total=len(self.plan.files),
                files_done=self.files_done,
                file=f.path if f else None,
                file_bytes=f.size if f else 0,
                file_done=self.file_done,
                file_rate_bps=self.file_meter.rate,
                file_eta_s=self.file_meter.eta(f.size - self.file_done) if f else None,
                message=self.message,
            )

    def emit(self, *, force: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if not force and now - self._last_emit < _EMIT_INTERVAL_S:
            return
        self._last_emit = now
        self.callback(self.snapshot())


class _ResumeNotices(logging.Handler):
    """Turns huggingface_hub's "Trying to resume download..." warning into a progress message."""

    def __init__(self, run: _Run) -> None:
        super().__init__(logging.WARNING)
        self.run = run

    def emit(self, record: logging.LogRecord) -> None:
        if "resume download" in record.getMessage():
            with self.run.lock:
                self.run.message = "Connection dropped; resuming where it stopped…"
                self.run.resumes += 1
            self.run.emit(force=True)


class _HubBar(tqdm):  # type: ignore[misc]
    """The ``tqdm_class`` handed to huggingface_hub: counts bytes, raises on cancel.

    It is a real tqdm (the library requires one) writing to nowhere. ``run``
    is bound per download by :func:`_bar_for`.
    """

    run: _Run | None = None
    #: No tqdm monitor thread: tqdm starts it while holding its class lock, and a
    #: garbage collection in the new thread that finalizes an old bar waits for
    #: that lock: both threads hang (seen in hf_hub's download thread). Nothing is
    #: printed, so the monitor has nothing to do anyway.
    monitor_interval = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["file"] = _NullWriter()
        kwargs["mininterval"] = 3600
        kwargs.pop("name", None)
        super().__init__(*args, **kwargs)
        initial = int(kwargs.get("initial") or 0)
        if initial and self.run is not None:
            self.run.advance(initial)

    def update(self, n: float | None = 1) -> bool | None:
        if self.run is not None:
            self.run.advance(int(n or 0))
        return super().update(n)  # type: ignore[no-any-return]


def _bar_for(run: _Run) -> type[_HubBar]:
    return type("_BoundHubBar", (_HubBar,), {"run": run})


class _SilentBar(tqdm):  # type: ignore[misc]
    """A tqdm that prints nothing, for the bookkeeping ``snapshot_download`` call."""

    monitor_interval = 0  # see _HubBar

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["file"] = _NullWriter()
        kwargs.pop("name", None)
        super().__init__(*args, **kwargs)


# --- helpers --------------------------------------------------------------------------


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def git_blob_oid(path: Path, cancel: threading.Event | None = None) -> str:
    """Git's object id of a file, which the Hub lists for files not in LFS."""
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    _hash_into(digest, path, cancel)
    return digest.hexdigest()


def file_sha256(path: Path, cancel: threading.Event | None = None) -> str:
    digest = hashlib.sha256()
    _hash_into(digest, path, cancel)
    return digest.hexdigest()


def _hash_into(digest: Any, path: Path, cancel: threading.Event | None) -> None:
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            if cancel is not None and cancel.is_set():
                raise _Cancelled
            digest.update(block)


def free_space(path: Path) -> tuple[int, Path]:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free, probe


class _VerifiedBlobs:
    """Blobs already hashed, keyed by path, size and mtime, so a resume does not re-hash."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _stamp(blob: Path) -> str:
        st = blob.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"

    def contains(self, blob: Path) -> bool:
        try:
            return self._load().get(str(blob)) == self._stamp(blob)
        except OSError:
            return False

    def add(self, blob: Path) -> None:
        with self._lock:
            data = self._load()
            data = {k: v for k, v in data.items() if Path(k).exists()}
            data[str(blob)] = self._stamp(blob)
            atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True))


# --- the manager ---------------------------------------------------------------------


@dataclass
class DownloadManager:
    """Downloads catalog variants into the shared Hugging Face cache.

    Every argument left ``None`` is resolved at call time: ``cache_dir`` from
    ``HF_HUB_CACHE`` / ``HF_HOME``, ``endpoint`` from ``HF_ENDPOINT``,
    ``offline`` from ``HF_HUB_OFFLINE``, and the token from ``token_provider``
    (by default :class:`~gemma_desktop.core.secrets.TokenStore`: ``HF_TOKEN``,
    the keyring, then Hugging Face's token file).

    :meth:`download` blocks; run it on a worker thread. It is safe to call
    :meth:`is_cached` and :meth:`cached_snapshot` from any thread: they only
    look at the disk.
    """

    catalog: VariantCatalog = field(default_factory=VariantCatalog)
    cache_dir: Path | None = None
    endpoint: str | None = None
    offline: bool | None = None
    token_provider: Callable[[], str | None] | None = None
    headroom_bytes: int = DEFAULT_HEADROOM_BYTES
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS
    #: After a cancel, how long to wait for the transfer thread to stop
    #: before returning anyway (it then stops at its next chunk or timeout).
    cancel_grace_s: float = 2.0
    _running: set[threading.Event] = field(default_factory=set, init=False, repr=False)
    _running_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def cancel_all(self) -> None:
        """Cancel every download under way (the app quits); each stops at its next chunk."""
        with self._running_lock:
            running = list(self._running)
        for cancel in running:
            cancel.set()

    # -- resolution at call time --

    def resolved_cache_dir(self) -> Path:
        return (self.cache_dir or paths.hf_hub_cache()).expanduser()

    def resolved_endpoint(self) -> str:
        value = self.endpoint or os.environ.get("HF_ENDPOINT", "").strip() or DEFAULT_ENDPOINT
        return value.rstrip("/")

    def is_offline(self) -> bool:
        if self.offline is not None:
            return self.offline
        return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")

    def _token(self) -> str | None:
        if self.token_provider is not None:
            return self.token_provider() or None
        from gemma_desktop.core.secrets import TokenStore

        return TokenStore().locate().token

    def _variant(self, variant_id: str) -> Variant:
        variant = self.catalog.get(variant_id)
        if variant.is_bundled:
            raise NotDownloadableError(
                f"{variant.label} ships with the app; there is nothing to download.",
                "Pick a Gemma 4 variant to download one from the Hugging Face Hub.",
            )
        return variant

    # -- the cache, without network --

    def cached_snapshot(self, variant_id: str) -> Path | None:
        """The complete snapshot of ``variant_id`` in the cache, or ``None``. No network.

        The one completeness rule (:mod:`gemma_desktop.core.models.hub_cache`),
        in the cache this manager downloads into.
        """
        return local_model_path(self.catalog.get(variant_id), self.resolved_cache_dir())

    def is_cached(self, variant_id: str) -> bool:
        """Whether ``variant_id`` can run from the cache now. Instant, no network."""
        return self.cached_snapshot(variant_id) is not None

    # -- planning --

    def plan(self, variant_id: str, cancel: threading.Event | None = None) -> DownloadPlan:
        """List the repo's files at its current commit and what the cache lacks."""
        variant = self._variant(variant_id)
        return self._plan(variant, cancel or threading.Event(), self._token())

    def published_files(
        self, variant_id: str, revision: str = REVISION, cancel: threading.Event | None = None
    ) -> tuple[RemoteFile, ...]:
        """The Hub's file listing of ``variant_id`` at ``revision``: sizes and published hashes."""
        variant = self._variant(variant_id)
        _, files = self._listing(variant, revision, cancel or threading.Event(), self._token())
        return files

    def _listing(
        self, variant: Variant, revision: str, cancel: threading.Event, token: str | None
    ) -> tuple[str, tuple[RemoteFile, ...]]:
        """The commit ``revision`` is at and its files (non-LFS first), with retries."""
        endpoint = self.resolved_endpoint()

        def fetch_listing() -> tuple[str, list[RepoFile]]:
            from huggingface_hub import HfApi
            from huggingface_hub.hf_api import RepoFile

            api = HfApi(endpoint=endpoint, token=token or False)
            info = api.model_info(variant.id, revision=revision)
            if not info.sha:
                raise HubServerError(
                    f"The Hub at {endpoint} did not say which commit {variant.id} is at.",
                    "Try again later; if HF_ENDPOINT points at a mirror, check that it is a Hub.",
                )
            tree = api.list_repo_tree(variant.id, recursive=True, revision=info.sha)
            return info.sha, [f for f in tree if isinstance(f, RepoFile)]

        commit, listing = self._with_retries(
            fetch_listing, variant=variant, token=token, cancel=cancel, run=None
        )
        files = tuple(
            sorted(
                (
                    RemoteFile(
                        path=f.path,
                        size=f.size,
                        blob_id=f.blob_id,
                        lfs_sha256=f.lfs.sha256 if f.lfs is not None else None,
                    )
                    for f in listing
                ),
                key=lambda f: (f.lfs_sha256 is not None, f.path),
            )
        )
        return commit, files

    def _plan(self, variant: Variant, cancel: threading.Event, token: str | None) -> DownloadPlan:
        cache = self.resolved_cache_dir()
        commit, files = self._listing(variant, REVISION, cancel, token)
        storage = repo_cache_dir(variant.id, cache)
        snapshot = storage / "snapshots" / commit
        cached = frozenset(f.path for f in files if _present(snapshot / f.path, f.size))
        self._remove_stale_partials(storage, files)
        free, _ = free_space(cache)
        return DownloadPlan(variant.id, variant.id, commit, files, cached, cache, free)

    def check_space(self, plan: DownloadPlan) -> None:
        """Refuse, before any transfer, when the missing files do not fit."""
        needed = plan.missing_bytes
        if needed == 0:
            return
        free, where = free_space(plan.cache_dir)
        if needed + self.headroom_bytes > free:
            raise InsufficientDiskSpaceError(
                f"Not enough disk space for {plan.variant_id}: it needs {format_bytes(needed)} "
                f"more (plus {format_bytes(self.headroom_bytes)} to spare) but only "
                f"{format_bytes(free)} is free on the disk holding {plan.cache_dir}.",
                "Free some space there, or point HF_HUB_CACHE (or HF_HOME) at a disk with "
                "more room and start again. Nothing was downloaded.",
                needed=needed,
                free=free,
                where=where,
            )

    # -- the download --

    def download(
        self,
        variant_id: str,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> DownloadResult:
        """Fetch what the cache lacks for ``variant_id``, verify it, return the snapshot.

        Blocks. ``on_progress`` is called on this thread (at most every 0.1 s
        while bytes flow, and at every phase change). Setting ``cancel`` stops
        the transfer at its next chunk and raises :class:`DownloadCancelledError`.
        Every expected failure is a :class:`DownloadError` with a hint.
        """
        cancel = cancel or threading.Event()
        with self._running_lock:
            self._running.add(cancel)
        try:
            # Held for the whole download, so the model is not deleted under it.
            with ModelUse(self.catalog.get(variant_id).id, "downloading"):
                return self._download(variant_id, on_progress, cancel)
        finally:
            with self._running_lock:
                self._running.discard(cancel)

    def _download(
        self, variant_id: str, on_progress: ProgressCallback | None, cancel: threading.Event
    ) -> DownloadResult:
        variant = self._variant(variant_id)
        if self.is_offline():
            return self._offline_result(variant)
        _tune_hub_client()
        if on_progress is not None:
            on_progress(DownloadProgress(variant.id, "planning", message="Listing files…"))
        token = self._token()
        try:
            plan = self._plan(variant, cancel, token)
        except (HubUnreachableError, HubServerError) as exc:
            cached = self.cached_snapshot(variant.id)
            if cached is None:
                raise
            # Complete in the cache: the Hub being away only means no update check.
            log.info("using cached %s; the Hub could not be asked for updates: %s", variant.id, exc)
            return DownloadResult(variant.id, cached, cached.name, offline=True)
        self.check_space(plan)
        run = _Run(plan, cancel, on_progress)
        storage = repo_cache_dir(plan.repo_id, plan.cache_dir)
        snapshot = storage / "snapshots" / plan.commit
        verified = _VerifiedBlobs(paths.state_dir() / "downloads" / "verified-blobs.json")
        fetched: list[str] = []
        reused: list[str] = []
        notices = _ResumeNotices(run)
        hub_log = logging.getLogger("huggingface_hub.file_download")
        hub_log.addHandler(notices)
        try:
            self._fetch_all(run, variant, snapshot, verified, token, fetched, reused)
        finally:
            hub_log.removeHandler(notices)

        run.set_phase("finishing", "Recording the snapshot in the cache…")
        self._finish(plan, token, storage)
        run.set_phase("done", "Download complete" if fetched else "Already downloaded")
        return DownloadResult(
            variant_id=variant.id,
            snapshot=snapshot,
            commit=plan.commit,
            fetched=tuple(fetched),
            reused=tuple(reused),
            transferred_bytes=run.meter.total,
            resumes=run.resumes,
        )

    def _fetch_all(
        self,
        run: _Run,
        variant: Variant,
        snapshot: Path,
        verified: _VerifiedBlobs,
        token: str | None,
        fetched: list[str],
        reused: list[str],
    ) -> None:
        for f in run.plan.files:
            if f.path in run.plan.cached:
                if self._verify(run, f, snapshot, verified, fetched_now=False):
                    reused.append(f.path)
                    continue
                # A cached file that fails its hash is deleted and fetched again.
                run.discard_cached(f)
            run.start_file(f)
            self._fetch_verified(run, variant, f, snapshot, verified, token)
            fetched.append(f.path)
            run.finish_file()

    def _offline_result(self, variant: Variant) -> DownloadResult:
        snapshot = self.cached_snapshot(variant.id)
        if snapshot is None:
            raise OfflineModelMissingError(
                f"{variant.id} is not in the Hugging Face cache at {self.resolved_cache_dir()}, "
                "and offline mode (HF_HUB_OFFLINE=1) forbids downloading it.",
                "Unset HF_HUB_OFFLINE and download the model while online, or point "
                "HF_HUB_CACHE / HF_HOME at a cache that already has it.",
            )
        return DownloadResult(variant.id, snapshot, snapshot.name, offline=True)

    def _fetch_verified(
        self,
        run: _Run,
        variant: Variant,
        f: RemoteFile,
        snapshot: Path,
        verified: _VerifiedBlobs,
        token: str | None,
    ) -> None:
        endpoint = self.resolved_endpoint()
        cache = run.plan.cache_dir
        bar = _bar_for(run)

        def fetch() -> str:
            from huggingface_hub import hf_hub_download

            return hf_hub_download(
                run.plan.repo_id,
                f.path,
                revision=run.plan.commit,
                cache_dir=cache,
                endpoint=endpoint,
                token=token or False,
                tqdm_class=bar,
            )

        for attempt in (1, 2):
            self._with_retries(fetch, variant=variant, token=token, cancel=run.cancel, run=run)
            if self._verify(run, f, snapshot, verified, fetched_now=True):
                return
            run.discard_file()
            if attempt == 2:
                raise CorruptDownloadError(
                    f"{f.path} of {variant.id} did not match the hash the Hub publishes for it, "
                    "twice; the damaged file was deleted.",
                    "Retry the download. If it keeps failing, a proxy, antivirus or failing disk "
                    "may be altering data.",
                )
            run.set_phase("retrying", f"{f.path} failed its hash check; fetching it again")
            run.start_file(f)

    def _verify(
        self,
        run: _Run,
        f: RemoteFile,
        snapshot: Path,
        verified: _VerifiedBlobs,
        *,
        fetched_now: bool,
    ) -> bool:
        """Hash ``f`` in the snapshot against the listing; delete it when it does not match."""
        pointer = snapshot / f.path
        try:
            blob = pointer.resolve(strict=True)
        except OSError:
            return False
        if not fetched_now and verified.contains(blob):
            return True
        run.set_phase("verifying", f"Checking {f.path}")
        try:
            if f.lfs_sha256 is not None:
                ok = file_sha256(blob, run.cancel) == f.lfs_sha256
            else:
                ok = git_blob_oid(blob, run.cancel) == f.blob_id
        except _Cancelled:
            raise _cancelled_error(run.plan.variant_id) from None
        if ok:
            verified.add(blob)
            return True
        log.warning("hash mismatch for %s (%s); deleting it", f.path, blob)
        pointer.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        return False

    def _finish(self, plan: DownloadPlan, token: str | None, storage: Path) -> None:
        """Let huggingface_hub write its tree listing, then point ``refs/main`` at the commit."""
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(
                plan.repo_id,
                revision=plan.commit,
                cache_dir=plan.cache_dir,
                endpoint=self.resolved_endpoint(),
                token=token or False,
                tqdm_class=_SilentBar,
            )
        except Exception as exc:  # the listing is an optimisation; the files are verified
            log.info("could not record the tree listing of %s: %s", plan.repo_id, exc)
        write_ref(storage, plan.commit)

    def _remove_stale_partials(self, storage: Path, files: Iterable[RemoteFile]) -> None:
        """Delete temporary files an interrupted run left, unless a live download holds them.

        huggingface_hub 2.4 never reuses them (each run writes a fresh one), so
        without this every interrupted run would leave up to one file's worth
        of dead bytes in the cache.
        """
        from filelock import FileLock, Timeout

        blobs = storage / "blobs"
        if not blobs.is_dir():
            return
        locks = storage.parent / ".locks" / storage.name
        for f in files:
            leftovers = list(blobs.glob(f"{f.etag}.*incomplete"))
            if not leftovers:
                continue
            lock = FileLock(str(locks / f"{f.etag}.lock"), timeout=0)
            try:
                locks.mkdir(parents=True, exist_ok=True)
                with lock:
                    for leftover in leftovers:
                        log.info("removing interrupted partial file %s", leftover)
                        leftover.unlink(missing_ok=True)
            except (Timeout, OSError):
                continue

    # -- retries and error translation --

    def _with_retries(
        self,
        fn: Callable[[], T],
        *,
        variant: Variant,
        token: str | None,
        cancel: threading.Event,
        run: _Run | None,
    ) -> T:
        delays = list(self.retry_delays)
        while True:
            try:
                return _call_cancellable(fn, cancel, self.cancel_grace_s, variant.id)
            except DownloadError:
                raise
            except Exception as exc:
                error = translate_error(exc, variant, token, self.resolved_endpoint())
                if error is None:
                    raise
                if not error.retryable or not delays or isinstance(error, CorruptDownloadError):
                    raise error from exc
                delay = delays.pop(0)
                log.info("retrying %s in %.0f s after: %s", variant.id, delay, error.reason)
                if run is not None:
                    run.discard_file()
                    run.set_phase("retrying", f"{error.reason} Retrying in {delay:.0f} s…")
                if cancel.wait(delay):
                    raise _cancelled_error(variant.id) from None
                if run is not None and run.file is not None:
                    run.start_file(run.file)


def _present(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _cancelled_error(variant_id: str) -> DownloadCancelledError:
    return DownloadCancelledError(
        f"Download of {variant_id} cancelled.",
        "Resume continues where it stopped: finished files are kept; a file that was "
        "half-way starts again.",
    )


_transfers: set[threading.Thread] = set()
_transfers_lock = threading.Lock()


def wait_for_transfers(timeout: float) -> bool:
    """Wait for transfer threads a cancel left running; ``True`` when none is left.

    Call before the process exits, so huggingface_hub can delete its
    temporary files (whatever it leaves is deleted at the next start).
    """
    deadline = time.monotonic() + timeout
    while True:
        with _transfers_lock:
            alive = [t for t in _transfers if t.is_alive()]
        if not alive:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        alive[0].join(min(left, 0.2))


def _call_cancellable(
    fn: Callable[[], T], cancel: threading.Event, grace_s: float, variant_id: str
) -> T:
    """Run ``fn`` on a helper thread so a cancel returns promptly even when the network stalls.

    The transfer itself stops at its next chunk (the progress bar raises); if
    the server has gone silent, the helper is left to time out on its own,
    which costs no traffic.
    """
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            with _transfers_lock:
                _transfers.discard(threading.current_thread())
            done.set()

    worker = threading.Thread(target=target, name="hub-transfer", daemon=True)
    with _transfers_lock:
        _transfers.add(worker)
    worker.start()
    try:
        while not done.wait(0.1):
            if cancel.is_set():
                done.wait(grace_s)
                raise _cancelled_error(variant_id)
    except BaseException:
        # KeyboardInterrupt in the waiting thread: stop the transfer too, and give
        # huggingface_hub a moment to delete its temporary file.
        cancel.set()
        done.wait(grace_s)
        raise
    error = outcome.get("error")
    if isinstance(error, _Cancelled):
        raise _cancelled_error(variant_id) from None
    if error is not None:
        raise error
    return outcome["value"]  # type: ignore[no-any-return]


_tuned = False


def _tune_hub_client() -> None:
    """Use smaller transfer chunks in huggingface_hub (see :data:`TRANSFER_CHUNK_BYTES`)."""
    global _tuned
    if _tuned:
        return
    from huggingface_hub import constants

    current = getattr(constants, "DOWNLOAD_CHUNK_SIZE", None)
    if isinstance(current, int) and current > TRANSFER_CHUNK_BYTES:
        constants.DOWNLOAD_CHUNK_SIZE = TRANSFER_CHUNK_BYTES
    _tuned = True


__all__ = [
    "CorruptDownloadError",
    "DownloadCancelledError",
    "DownloadError",
    "DownloadManager",
    "DownloadPlan",
    "DownloadProgress",
    "DownloadResult",
    "GatedModelError",
    "HubServerError",
    "HubUnreachableError",
    "InsufficientDiskSpaceError",
    "InvalidTokenError",
    "NotDownloadableError",
    "OfflineModelMissingError",
    "RateMeter",
    "RemoteFile",
    "RepoNotFoundError",
    "format_bytes",
    "format_eta",
    "wait_for_transfers",
]
