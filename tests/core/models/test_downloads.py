"""DownloadManager with the real huggingface_hub client against the fake hub."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gemma_desktop.core import paths
from gemma_desktop.core.models.catalog import BUNDLED_MODEL_ID
from gemma_desktop.core.models.downloads import (
    TRANSFER_CHUNK_BYTES,
    CorruptDownloadError,
    DownloadCancelledError,
    DownloadManager,
    DownloadProgress,
    GatedModelError,
    HubServerError,
    HubUnreachableError,
    InsufficientDiskSpaceError,
    InvalidTokenError,
    NotDownloadableError,
    OfflineModelMissingError,
    RateMeter,
    RepoNotFoundError,
    wait_for_transfers,
)
from tests.fixtures.fakehub import (
    DEFAULT_REPO,
    NO_ACCESS_TOKEN,
    SHARD1,
    SHARD2,
    FakeHub,
    FakeRepo,
    assert_snapshot_matches,
    leftovers,
    storage_dir,
)

URL = f"https://huggingface.co/{DEFAULT_REPO}"


def test_full_download_then_nothing_to_fetch(
    manager: DownloadManager, fake_hub: FakeHub, repo: FakeRepo
) -> None:
    assert not manager.is_cached(DEFAULT_REPO)
    events: list[DownloadProgress] = []

    result = manager.download(DEFAULT_REPO, on_progress=events.append)

    assert result.snapshot.parent.parent == storage_dir()
    assert sorted(result.fetched) == sorted(repo.files)
    assert result.transferred_bytes == repo.total_size
    assert_snapshot_matches(result.snapshot, repo)
    assert manager.cached_snapshot(DEFAULT_REPO) == result.snapshot
    for name in repo.files:
        assert len(fake_hub.requests(kind="resolve", file=name, method="GET")) == 1
    done = [e.done_bytes for e in events if e.phase == "downloading"]
    assert done == sorted(done), "overall progress never goes backwards"
    assert events[-1].phase == "done"
    assert events[-1].done_bytes == events[-1].total_bytes == repo.total_size
    assert events[-1].files_done == len(repo.files)

    again = manager.download(DEFAULT_REPO)
    assert again.fetched == ()
    assert sorted(again.reused) == sorted(repo.files)
    assert len(fake_hub.requests(kind="resolve", method="GET")) == len(repo.files)


def test_a_download_starts_no_tqdm_monitor_thread(
    manager: DownloadManager, fake_hub: FakeHub, repo: FakeRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tqdm's monitor thread is started under tqdm's lock and can deadlock against a
    garbage collection in that thread; the app's progress bars never start one."""
    from tqdm import _monitor

    started: list[object] = []
    original = _monitor.TMonitor.__init__

    def counting(self: object, *args: object, **kwargs: object) -> None:
        started.append(self)
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_monitor.TMonitor, "__init__", counting)
    manager.download(DEFAULT_REPO)
    assert manager.cached_snapshot(DEFAULT_REPO) is not None
    assert started == []


def test_progress_reports_rate_and_eta_per_file_and_overall(
    manager: DownloadManager, fake_hub: FakeHub
) -> None:
    fake_hub.rate = 1.5 * 1024 * 1024
    events: list[DownloadProgress] = []
    manager.download(DEFAULT_REPO, on_progress=events.append)
    moving = [e for e in events if e.phase == "downloading" and e.file == SHARD1 and e.rate_bps]
    assert moving, "a slow multi-megabyte file reports a rate while it downloads"
    last = moving[-1]
    assert last.eta_s is not None and last.file_eta_s is not None
    assert last.file_rate_bps is not None and last.file_rate_bps > 0
    assert 0 < last.file_done <= last.file_bytes
    assert len({e.file_done for e in moving}) > 1, "file progress moves within the file"


def test_dropped_connection_resumes_with_range(
    manager: DownloadManager, fake_hub: FakeHub, repo: FakeRepo
) -> None:
    fake_hub.drop_after(SHARD1, 1_500_000)
    messages: list[str] = []
    result = manager.download(DEFAULT_REPO, on_progress=lambda p: messages.append(p.message))

    assert result.resumes == 1
    gets = fake_hub.requests(kind="resolve", file=SHARD1, method="GET")
    assert [g.status for g in gets] == [200, 206]
    # huggingface_hub writes whole chunks: it resumes at the last chunk border.
    border = 1_500_000 // TRANSFER_CHUNK_BYTES * TRANSFER_CHUNK_BYTES
    assert gets[1].range == f"bytes={border}-"
    assert fake_hub.bytes_served(SHARD1) < 2 * len(repo.files[SHARD1].data)
    assert any("resuming" in m for m in messages)
    assert_snapshot_matches(result.snapshot, repo)


def test_cancel_mid_file_keeps_finished_files_and_resume_skips_them(
    manager: DownloadManager, fake_hub: FakeHub, repo: FakeRepo
) -> None:
    fake_hub.rate = 512 * 1024
    cancel = threading.Event()

    def on_progress(p: DownloadProgress) -> None:
        if p.file == SHARD1 and p.file_done > 0:
            cancel.set()

    with pytest.raises(DownloadCancelledError) as info:
        manager.download(DEFAULT_REPO, on_progress=on_progress, cancel=cancel)
    assert "Resume" in info.value.hint
    assert not manager.is_cached(DEFAULT_REPO)
    # The transfer stopped: the shard was not served to the end.
    assert fake_hub.bytes_served(SHARD1) < len(repo.files[SHARD1].data)

    fake_hub.rate = None
    result = manager.download(DEFAULT_REPO)
    small = [name for name, f in repo.files.items() if not f.lfs]
    assert set(small) <= set(result.reused)
    assert SHARD1 in result.fetched
    for name in small:
        assert len(fake_hub.requests(kind="resolve", file=name, method="GET")) == 1
    assert leftovers() == []
    assert_snapshot_matches(result.snapshot, repo)


def test_corrupt_file_is_detected_and_fetched_again(
    manager: DownloadManager, fake_hub: FakeHub, repo: FakeRepo
) -> None:
    fake_hub.corrupt(SHARD2, times=1)
    result = manager.download(DEFAULT_REPO)
    assert len(fake_hub.requests(kind="resolve", file=SHARD2, method="GET")) == 2
    assert_snapshot_matches(result.snapshot, repo)


def test_corrupt_file_every_time_is_never_left_as_a_model(
    manager: DownloadManager, fake_hub: FakeHub, repo: FakeRepo
) -> None:
    fake_hub.corrupt(SHARD2, times=10)
    with pytest.raises(CorruptDownloadError) as info:
        manager.download(DEFAULT_REPO)
    assert SHARD2 in info.value.reason
    assert not manager.is_cached(DEFAULT_REPO)
    assert not (storage_dir() / "blobs" / repo.files[SHARD2].sha256).exists()
    snapshots = list((storage_dir() / "snapshots").glob(f"*/{SHARD2}"))
    assert snapshots == []


def test_damaged_file_already_in_the_cache_is_replaced(
    manager: DownloadManager, fake_hub: FakeHub, repo: FakeRepo
) -> None:
    first = manager.download(DEFAULT_REPO)
    blob = (first.snapshot / SHARD1).resolve()
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))  # same size, new mtime: no longer counted as verified

    again = manager.download(DEFAULT_REPO)
    assert again.fetched == (SHARD1,)
    assert_snapshot_matches(again.snapshot, repo)


def test_download_found_in_cache_written_by_another_tool(
    manager: DownloadManager, fake_hub: FakeHub, repo: FakeRepo
) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(
        DEFAULT_REPO,
        cache_dir=paths.hf_hub_cache(),
        endpoint=fake_hub.url,
        token=os.environ["HF_TOKEN"],
    )
    gets = len(fake_hub.requests(kind="resolve", method="GET"))
    assert manager.is_cached(DEFAULT_REPO)

    result = manager.download(DEFAULT_REPO)
    assert result.fetched == ()
    assert len(fake_hub.requests(kind="resolve", method="GET")) == gets


def test_is_cached_needs_every_file_and_no_network(
    manager: DownloadManager, fake_hub: FakeHub
) -> None:
    result = manager.download(DEFAULT_REPO)
    requests = len(fake_hub.log)
    offline_manager = DownloadManager(endpoint="http://127.0.0.1:9")
    assert offline_manager.is_cached(DEFAULT_REPO)
    assert len(fake_hub.log) == requests

    (result.snapshot / SHARD2).unlink()
    assert not manager.is_cached(DEFAULT_REPO)
    assert manager.cached_snapshot(DEFAULT_REPO) is None


def test_stale_partial_files_of_a_killed_run_are_removed(
    manager: DownloadManager, repo: FakeRepo
) -> None:
    blobs = storage_dir() / "blobs"
    blobs.mkdir(parents=True)
    stale = blobs / f"{repo.files[SHARD1].sha256}.0badc0de.incomplete"
    stale.write_bytes(b"\0" * 1000)
    manager.plan(DEFAULT_REPO)
    assert not stale.exists()


def test_offline_without_cache_says_so(
    manager: DownloadManager, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineModelMissingError) as info:
        manager.download(DEFAULT_REPO)
    assert "HF_HUB_OFFLINE" in info.value.reason
    assert str(paths.hf_hub_cache()) in info.value.reason
    assert "HF_HUB_OFFLINE" in info.value.hint
    assert fake_hub.log == []


def test_offline_with_cache_uses_it(
    manager: DownloadManager, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    online = manager.download(DEFAULT_REPO)
    requests = len(fake_hub.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = manager.download(DEFAULT_REPO)
    assert result.offline
    assert result.snapshot == online.snapshot
    assert len(fake_hub.log) == requests


def test_network_down_with_complete_cache_still_works(
    manager: DownloadManager, fake_hub: FakeHub
) -> None:
    online = manager.download(DEFAULT_REPO)
    unreachable = DownloadManager(endpoint="http://127.0.0.1:9", retry_delays=())
    result = unreachable.download(DEFAULT_REPO)
    assert result.offline and result.snapshot == online.snapshot


def test_bundled_variant_is_never_downloaded(manager: DownloadManager) -> None:
    with pytest.raises(NotDownloadableError):
        manager.download(BUNDLED_MODEL_ID)


# --- errors and their hints -----------------------------------------------------------


def test_gated_without_token(
    manager: DownloadManager, monkeypatch: pytest.MonkeyPatch, fake_hub: FakeHub
) -> None:
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(GatedModelError) as info:
        manager.download(DEFAULT_REPO)
    error = info.value
    assert "license" in error.reason and "token" in error.reason
    assert URL in error.hint and "token" in error.hint
    assert error.url == URL


def test_gated_without_access(manager: DownloadManager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", NO_ACCESS_TOKEN)
    with pytest.raises(GatedModelError) as info:
        manager.download(DEFAULT_REPO)
    assert "no access" in info.value.reason
    assert URL in info.value.hint and "accept the license" in info.value.hint


def test_bad_token_points_to_the_token_field(
    manager: DownloadManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_thisTokenDoesNotExist00")
    with pytest.raises(InvalidTokenError) as info:
        manager.download(DEFAULT_REPO)
    assert "401" in info.value.reason
    assert "token field" in info.value.hint


def test_missing_repository(manager: DownloadManager, fake_hub: FakeHub) -> None:
    del fake_hub.repos[DEFAULT_REPO]
    with pytest.raises(RepoNotFoundError) as info:
        manager.download(DEFAULT_REPO)
    assert DEFAULT_REPO in info.value.reason and "not found" in info.value.reason
    assert "variant" in info.value.hint


def test_network_down(fake_hub: FakeHub) -> None:
    manager = DownloadManager(endpoint="http://127.0.0.1:9", retry_delays=(0.05,))
    with pytest.raises(HubUnreachableError) as info:
        manager.download(DEFAULT_REPO)
    assert "127.0.0.1:9" in info.value.reason
    assert "connection" in info.value.hint


def test_server_error_is_retried_then_reported(manager: DownloadManager, fake_hub: FakeHub) -> None:
    fake_hub.fail(500, endpoint="info", times=100)
    with pytest.raises(HubServerError) as info:
        manager.download(DEFAULT_REPO)
    assert "500" in info.value.reason
    assert "try again" in info.value.hint
    assert len(fake_hub.requests(kind="info")) == 1 + len(manager.retry_delays)


def test_server_error_once_recovers(
    manager: DownloadManager, fake_hub: FakeHub, repo: FakeRepo
) -> None:
    fake_hub.fail(503, endpoint="info", times=1)
    fake_hub.fail(500, pattern=SHARD2, times=1)
    result = manager.download(DEFAULT_REPO)
    assert len(fake_hub.requests(kind="info")) >= 2
    assert any(r.status == 500 for r in fake_hub.requests(kind="resolve", file=SHARD2))
    assert_snapshot_matches(result.snapshot, repo)


# --- disk space, on a real small filesystem ------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts real small filesystems (tmpfs ``size=``); unmounted at teardown."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"fs-{size}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_disk_too_small_is_refused_before_any_transfer(
    tmpfs: Callable[[str], Path], fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = tmpfs("2m")  # the repository is about 4 MiB
    monkeypatch.setenv("HF_HUB_CACHE", str(small / "hub"))
    manager = DownloadManager(headroom_bytes=0)
    with pytest.raises(InsufficientDiskSpaceError) as info:
        manager.download(DEFAULT_REPO)
    error = info.value
    assert error.free <= 2 * 1024 * 1024 < error.needed
    assert str(small / "hub") in error.reason
    assert "HF_HUB_CACHE" in error.hint and "Nothing was downloaded" in error.hint
    assert fake_hub.requests(kind="resolve") == []
    assert not manager.is_cached(DEFAULT_REPO)


def test_disk_large_enough_downloads_and_headroom_counts(
    tmpfs: Callable[[str], Path], fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch, repo: FakeRepo
) -> None:
    roomy = tmpfs("16m")
    monkeypatch.setenv("HF_HUB_CACHE", str(roomy / "hub"))
    with pytest.raises(InsufficientDiskSpaceError):
        DownloadManager(headroom_bytes=14 * 1024 * 1024).download(DEFAULT_REPO)
    assert fake_hub.requests(kind="resolve") == []
    result = DownloadManager(headroom_bytes=1024 * 1024).download(DEFAULT_REPO)
    assert result.snapshot.is_relative_to(roomy)
    assert_snapshot_matches(result.snapshot, repo)


def test_rate_meter_window() -> None:
    now = [0.0]
    meter = RateMeter(window_s=5.0, clock=lambda: now[0])
    assert meter.rate is None
    for _ in range(10):
        now[0] += 1.0
        meter.add(1000)
    assert meter.rate == pytest.approx(1000.0)
    assert meter.eta(5000) == pytest.approx(5.0)
    now[0] += 0.1
    meter.add(0)
    assert meter.total == 10_000


def test_cancel_returns_before_a_slow_chunk_arrives_and_the_transfer_cleans_up(
    fake_hub: FakeHub, repo: FakeRepo
) -> None:
    manager = DownloadManager(headroom_bytes=0, cancel_grace_s=0.2)
    fake_hub.rate = 64 * 1024  # one 256 KiB chunk takes about four seconds
    cancel = threading.Event()

    def on_progress(p: DownloadProgress) -> None:
        if p.file == SHARD1 and p.phase == "downloading":
            cancel.set()

    with pytest.raises(DownloadCancelledError):
        manager.download(DEFAULT_REPO, on_progress=on_progress, cancel=cancel)
    # Returned while the first chunk of the shard was still on its way.
    assert fake_hub.bytes_served(SHARD1) < TRANSFER_CHUNK_BYTES
    # The abandoned transfer stops at that chunk and huggingface_hub deletes its file.
    assert wait_for_transfers(60)
    assert leftovers() == []
    assert fake_hub.bytes_served(SHARD1) < len(repo.files[SHARD1].data)
