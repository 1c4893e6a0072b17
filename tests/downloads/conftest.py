"""Helpers shared by the download tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gemma_desktop.core import paths
from gemma_desktop.core.downloads import DownloadManager
from tests.fixtures.fakehub import DEFAULT_REPO, FakeHub, FakeRepo

SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"


@pytest.fixture
def manager(fake_hub: FakeHub) -> DownloadManager:
    """A manager reading everything from the environment, with short retry delays."""
    return DownloadManager(headroom_bytes=0, retry_delays=(0.05, 0.05))


@pytest.fixture
def repo(fake_hub: FakeHub) -> FakeRepo:
    return fake_hub.repos[DEFAULT_REPO]


def storage_dir() -> Path:
    return paths.hf_hub_cache() / ("models--" + DEFAULT_REPO.replace("/", "--"))


def leftovers() -> list[Path]:
    blobs = storage_dir() / "blobs"
    return sorted(blobs.glob("*incomplete")) if blobs.is_dir() else []


def assert_snapshot_matches(snapshot: Path, repo: FakeRepo) -> None:
    for name, entry in repo.files.items():
        data = (snapshot / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry.sha256, name
