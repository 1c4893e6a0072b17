"""``gemma-desktop models`` and ``models delete`` as real subprocesses, on a Hugging Face
cache that the real ``gemma-desktop download`` filled from the fake hub."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gemma_desktop.core import paths
from gemma_desktop.core.models.model_use import ModelUse
from tests.fixtures.fakehub import DEFAULT_REPO, SHARD2, FakeHub, storage_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120
OTHER = "google/gemma-4-E2B"


pytestmark = pytest.mark.usefixtures("private_runtime_dir")  # this test's lock files


def cli(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gemma_desktop", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        stdin=stdin,
        timeout=TIMEOUT,
    )


def download(variant: str) -> None:
    done = cli("download", "--variant", variant, "--json")
    assert done.returncode == 0, done.stderr


def listed() -> dict[str, dict[str, Any]]:
    done = cli("models", "--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["hub_cache"] == str(paths.hf_hub_cache())
    return {m["id"]: m for m in payload["models"]}


def scanned() -> dict[str, int]:
    from huggingface_hub import scan_cache_dir

    return {r.repo_id: r.size_on_disk for r in scan_cache_dir(paths.hf_hub_cache()).repos}


def test_models_lists_and_delete_yes_frees_the_disk(fake_hub: FakeHub) -> None:
    download(DEFAULT_REPO)
    download(OTHER)

    models = listed()
    assert list(models)[:4] == [
        "google/gemma-4-E2B",
        "google/gemma-4-E2B-it",
        "google/gemma-4-E4B",
        "google/gemma-4-E4B-it",
    ]
    sizes = scanned()
    for repo_id in (DEFAULT_REPO, OTHER):
        assert models[repo_id]["downloaded"] is True
        assert models[repo_id]["size_on_disk"] == sizes[repo_id] > 0
        assert models[repo_id]["in_use"] is None
    assert models["google/gemma-4-E4B"]["downloaded"] is False
    assert models["google/gemma-4-E4B"]["size_on_disk"] == 0
    table = cli("models")
    assert table.returncode == 0 and "downloaded" in table.stdout and DEFAULT_REPO in table.stdout

    blobs = sorted((storage_dir() / "blobs").iterdir())
    assert blobs
    done = cli("models", "delete", DEFAULT_REPO, "--yes")
    assert done.returncode == 0, done.stderr
    assert "Deleted" in done.stdout
    assert not any(blob.exists() for blob in blobs)
    assert not storage_dir().exists()
    assert DEFAULT_REPO not in scanned()
    after = listed()
    assert after[DEFAULT_REPO]["downloaded"] is False
    assert after[DEFAULT_REPO]["size_on_disk"] == 0
    assert after[OTHER]["downloaded"] is True, "the other model is untouched"
    assert after[OTHER]["size_on_disk"] == sizes[OTHER]

    again = cli("models", "delete", DEFAULT_REPO, "--yes")
    assert again.returncode == 1 and "not in the Hugging Face cache" in again.stderr


def ask_on_a_terminal(answer: str) -> tuple[int, str]:
    """``models delete`` on a pseudo-terminal, answering its question with ``answer``."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gemma_desktop", "models", "delete", DEFAULT_REPO],
        cwd=REPO_ROOT,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=dict(os.environ),
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + TIMEOUT
    answered = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            if not answered and b"[y/N]" in seen:
                os.write(master, answer.encode() + b"\n")
                answered = True
            if proc.poll() is not None and not ready:
                break
        code = proc.wait(timeout=TIMEOUT)
    finally:
        proc.kill()
        os.close(master)
    return code, seen.decode(errors="replace")


def test_delete_asks_on_a_terminal(fake_hub: FakeHub) -> None:
    download(DEFAULT_REPO)

    code, text = ask_on_a_terminal("n")
    assert f"Delete {DEFAULT_REPO}" in text and "[y/N]" in text
    assert code == 1 and "Not deleted" in text
    assert listed()[DEFAULT_REPO]["downloaded"] is True

    code, text = ask_on_a_terminal("y")
    assert code == 0, text
    assert "Deleted" in text
    assert not storage_dir().exists()


def test_delete_without_a_terminal_needs_yes(fake_hub: FakeHub) -> None:
    download(DEFAULT_REPO)
    done = cli("models", "delete", DEFAULT_REPO)
    assert done.returncode == 1
    assert "no terminal" in done.stderr and "--yes" in done.stderr
    assert listed()[DEFAULT_REPO]["downloaded"] is True


def test_running_model_is_refused(fake_hub: FakeHub) -> None:
    download(DEFAULT_REPO)
    # What the app's engine holds from its start to its shutdown (VllmEngine).
    with ModelUse(DEFAULT_REPO, "running"):
        assert listed()[DEFAULT_REPO]["in_use"] == "running"
        done = cli("models", "delete", DEFAULT_REPO, "--yes")
        assert done.returncode == 1
        assert f"{DEFAULT_REPO} is running (process {os.getpid()})" in done.stderr
        assert "hint: Stop the engine first" in done.stderr
        as_json = cli("models", "delete", DEFAULT_REPO, "--yes", "--json")
        assert json.loads(as_json.stdout)["error"]["type"] == "ModelInUseError"
        assert storage_dir().exists() and listed()[DEFAULT_REPO]["downloaded"] is True
    done = cli("models", "delete", DEFAULT_REPO, "--yes")
    assert done.returncode == 0, done.stderr


def test_model_being_downloaded_is_refused(fake_hub: FakeHub) -> None:
    fake_hub.rate = 256 * 1024
    proc = subprocess.Popen(
        [sys.executable, "-m", "gemma_desktop", "download", "--variant", DEFAULT_REPO, "--json"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ),
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            event = json.loads(line)
            assert event["event"] == "progress", event
            if event.get("file_done", 0) > 0:
                break
        done = cli("models", "delete", DEFAULT_REPO, "--yes")
        assert done.returncode == 1
        assert "is being downloaded" in done.stderr
        assert "Cancel the download" in done.stderr
        assert listed()[DEFAULT_REPO]["in_use"] == "downloading"
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
    assert fake_hub.bytes_served(SHARD2) == 0, "the download was still under way"
    # The killed download let go (the kernel dropped its lock): its partial files go.
    done = cli("models", "delete", DEFAULT_REPO, "--yes")
    assert done.returncode == 0, done.stderr
    assert not storage_dir().exists()


def test_verify(fake_hub: FakeHub) -> None:
    download(DEFAULT_REPO)
    online = cli("models", "verify", DEFAULT_REPO, "--json")
    assert online.returncode == 0, online.stderr
    report = json.loads(online.stdout)
    assert report["ok"] is True and report["against"] == "hub"
    assert len(report["files"]) == len(fake_hub.repos[DEFAULT_REPO].files)

    shard = (storage_dir() / "snapshots" / report["commit"] / SHARD2).resolve()
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    offline = cli("models", "verify", DEFAULT_REPO, "--offline")
    assert offline.returncode == 1
    assert f"FAIL  {SHARD2}" in offline.stdout
    assert "cache's hashes" in offline.stdout
    assert "models delete" in offline.stderr
