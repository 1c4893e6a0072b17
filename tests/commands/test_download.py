"""``gemma-desktop download`` as a real subprocess against the fake hub."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gemma_desktop.core.models.downloads import DownloadManager
from tests.fixtures.fakehub import (
    DEFAULT_REPO,
    SHARD1,
    SHARD2,
    FakeHub,
    FakeRepo,
    assert_snapshot_matches,
    leftovers,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gemma_desktop", "download", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gemma_desktop", "download", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=TIMEOUT,
    )


def read_events_until(proc: subprocess.Popen[str], predicate: Any) -> list[dict[str, Any]]:
    """JSON events from the child's stdout up to the first one matching ``predicate``."""
    assert proc.stdout is not None
    events: list[dict[str, Any]] = []
    for line in proc.stdout:
        event = json.loads(line)
        events.append(event)
        if predicate(event):
            return events
        if event["event"] in ("done", "error"):
            break
    raise AssertionError(f"the download ended before the expected point: {events[-3:]}")


def last_event(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    return dict(json.loads(lines[-1]))


def test_killed_process_resumes_without_refetching_finished_files(
    fake_hub: FakeHub, repo: FakeRepo
) -> None:
    fake_hub.rate = 512 * 1024
    proc = start("--variant", DEFAULT_REPO, "--json")
    try:
        read_events_until(proc, lambda e: e.get("file") == SHARD2 and e.get("file_done", 0) > 0)
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL
    assert not DownloadManager().is_cached(DEFAULT_REPO)
    shard2_served_before = fake_hub.bytes_served(SHARD2)
    assert 0 < shard2_served_before < len(repo.files[SHARD2].data)

    fake_hub.rate = None
    done = run_cli("--variant", DEFAULT_REPO, "--json")
    assert done.returncode == 0, done.stderr
    result = last_event(done.stdout)
    assert result["event"] == "done"
    assert SHARD1 in result["reused"]
    assert SHARD2 in result["fetched"]
    # Finished files were fetched once in all; the interrupted one started over.
    assert len(fake_hub.requests(kind="resolve", file=SHARD1, method="GET")) == 1
    for name, entry in repo.files.items():
        if not entry.lfs:
            assert len(fake_hub.requests(kind="resolve", file=name, method="GET")) == 1
    second = fake_hub.requests(kind="resolve", file=SHARD2, method="GET")[-1]
    assert second.range is None and second.status == 200
    assert leftovers() == [], "the killed run's partial file was cleaned up"
    assert_snapshot_matches(Path(result["snapshot"]), repo)


def test_ctrl_c_cancels_cleanly(fake_hub: FakeHub, repo: FakeRepo) -> None:
    fake_hub.rate = 256 * 1024
    proc = start("--variant", DEFAULT_REPO, "--json")
    try:
        read_events_until(proc, lambda e: e.get("file") == SHARD1 and e.get("file_done", 0) > 0)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    error = last_event(stdout)
    assert error["event"] == "error" and error["type"] == "DownloadCancelledError"
    assert "resume" in error["hint"]
    assert "Traceback" not in stderr
    assert fake_hub.bytes_served(SHARD1) < len(repo.files[SHARD1].data)
    assert leftovers() == [], "huggingface_hub deleted its temporary file"


def test_terminal_progress_and_dropped_connection(fake_hub: FakeHub, repo: FakeRepo) -> None:
    fake_hub.rate = 2 * 1024 * 1024
    fake_hub.drop_after(SHARD1, 1_500_000)
    done = run_cli("--variant", DEFAULT_REPO)
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert "%" in err and "MB/s" in err and "ETA" in err
    assert "Connection dropped; resuming" in err
    assert "Error while downloading" not in err, "the library's raw warning is not shown"
    assert "Done:" in err
    snapshot = Path(done.stdout.strip())
    assert_snapshot_matches(snapshot, repo)


def test_variant_defaults_to_settings(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATOMR_INFER_GEMMA_MODEL", "google/gemma-4-E2B")
    done = run_cli("--json")
    assert done.returncode == 0, done.stderr
    assert last_event(done.stdout)["variant"] == "google/gemma-4-E2B"


def test_gated_error_has_reason_and_hint(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN")
    done = run_cli("--variant", DEFAULT_REPO)
    assert done.returncode == 1
    assert "error: " in done.stderr and "license" in done.stderr
    assert f"hint: Open https://huggingface.co/{DEFAULT_REPO}" in done.stderr
    assert "Traceback" not in done.stderr


def test_offline_without_cache(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    done = run_cli("--variant", DEFAULT_REPO, "--json")
    assert done.returncode == 1
    error = last_event(done.stdout)
    assert error["type"] == "OfflineModelMissingError"
    assert fake_hub.log == []
