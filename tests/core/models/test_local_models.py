"""The models on disk (core.models.local_models, core.models.model_use) with the real
huggingface_hub client, its cache scan and its delete, against the fake hub."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gemma_desktop.core import paths
from gemma_desktop.core.models import model_use
from gemma_desktop.core.models.catalog import BUNDLED_MODEL_ID
from gemma_desktop.core.models.downloads import DownloadManager
from gemma_desktop.core.models.local_models import (
    ModelNotDeletableError,
    ModelNotOnDiskError,
    delete_model,
    get_model,
    list_models,
    verify_model,
)
from gemma_desktop.core.models.model_use import (
    ModelBeingDeletedError,
    ModelInUseError,
    ModelUse,
    exclusive_use,
    in_use,
)
from tests.fixtures.fakehub import DEFAULT_REPO, SHARD1, FakeHub, FakeRepo, storage_dir

OTHER = "google/gemma-4-E2B"


pytestmark = pytest.mark.usefixtures("private_runtime_dir")  # this test's lock files


def scanned_size(repo_id: str) -> int:
    from huggingface_hub import scan_cache_dir

    repos = {r.repo_id: r for r in scan_cache_dir(paths.hf_hub_cache()).repos}
    return repos[repo_id].size_on_disk


def test_list_reports_every_variant_with_the_scans_size(
    manager: DownloadManager, repo: FakeRepo
) -> None:
    before = {m.id: m for m in list_models()}
    assert [m.id for m in list_models()][-1] == BUNDLED_MODEL_ID
    assert not before[DEFAULT_REPO].downloaded and before[DEFAULT_REPO].size_on_disk == 0
    assert before[DEFAULT_REPO].last_used_source == "never"

    result = manager.download(DEFAULT_REPO)

    model = get_model(DEFAULT_REPO)
    assert model.downloaded and model.path == result.snapshot
    assert model.size_on_disk == scanned_size(DEFAULT_REPO) >= repo.total_size
    assert model.last_used_source == "cache-access" and model.last_used is not None
    assert not get_model(OTHER).on_disk

    with ModelUse(DEFAULT_REPO, "running"):
        assert in_use(DEFAULT_REPO) == "running"
    used = get_model(DEFAULT_REPO)
    assert used.last_used_source == "app"
    assert used.last_used is not None and abs(used.last_used - time.time()) < 60
    assert in_use(DEFAULT_REPO) is None


def test_partial_download_counts_its_bytes_but_is_not_downloaded(
    manager: DownloadManager, fake_hub: FakeHub
) -> None:
    fake_hub.fail(404, pattern=SHARD1, times=100)
    with pytest.raises(Exception):  # noqa: B017 - which error the hub's 404 becomes is not the point
        manager.download(DEFAULT_REPO)
    model = get_model(DEFAULT_REPO)
    assert not model.downloaded and model.on_disk
    assert model.size_on_disk == scanned_size(DEFAULT_REPO) > 0

    freed = delete_model(DEFAULT_REPO).freed_bytes
    assert freed == model.size_on_disk
    assert not storage_dir().exists()


def test_delete_goes_through_the_cache_and_keeps_the_other_model(
    manager: DownloadManager,
) -> None:
    manager.download(DEFAULT_REPO)
    manager.download(OTHER)
    size = get_model(DEFAULT_REPO).size_on_disk

    # The other model runs meanwhile (its engine holds it, as VllmEngine does).
    with ModelUse(OTHER, "running"):
        result = delete_model(DEFAULT_REPO)

    assert result.freed_bytes == size and len(result.revisions) == 1
    assert not storage_dir().exists()
    assert not get_model(DEFAULT_REPO).on_disk
    assert get_model(OTHER).downloaded
    assert manager.is_cached(OTHER)
    with pytest.raises(ModelNotOnDiskError):
        delete_model(DEFAULT_REPO)


@pytest.mark.parametrize("purpose", ["running", "downloading"])
def test_delete_refused_while_the_model_is_in_use(
    manager: DownloadManager, purpose: model_use.Purpose
) -> None:
    manager.download(DEFAULT_REPO)
    with ModelUse(DEFAULT_REPO, purpose), pytest.raises(ModelInUseError) as refused:
        delete_model(DEFAULT_REPO)
    assert refused.value.purpose == purpose
    assert "cannot be deleted" in refused.value.reason and refused.value.hint
    assert manager.is_cached(DEFAULT_REPO)
    delete_model(DEFAULT_REPO)  # released: it goes now
    assert not manager.is_cached(DEFAULT_REPO)


def test_use_held_by_another_process_is_seen(manager: DownloadManager) -> None:
    """The lock is the kernel's: another process holding it refuses the delete, and
    the refusal names that process; when it ends, the delete goes."""
    manager.download(DEFAULT_REPO)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from gemma_desktop.core.models.model_use import ModelUse; "
            f"u = ModelUse({DEFAULT_REPO!r}, 'running'); u.acquire(); print('held', flush=True); "
            "sys.stdin.readline()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ModelInUseError) as refused:
            delete_model(DEFAULT_REPO)
        assert f"process {holder.pid}" in refused.value.reason
    finally:
        holder.communicate("\n", timeout=30)
    delete_model(DEFAULT_REPO)


def test_no_use_starts_while_a_delete_holds_the_model() -> None:
    with exclusive_use(DEFAULT_REPO), pytest.raises(ModelBeingDeletedError):
        ModelUse(DEFAULT_REPO, "running").acquire()


def test_a_download_holds_its_model(manager: DownloadManager, fake_hub: FakeHub) -> None:
    seen: list[str | None] = []

    def progress(_: object) -> None:
        if not seen:
            seen.append(in_use(DEFAULT_REPO))

    manager.download(DEFAULT_REPO, on_progress=progress)
    assert seen == ["downloading"]
    assert in_use(DEFAULT_REPO) is None


def test_bundled_model_is_not_deleted() -> None:
    with pytest.raises(ModelNotDeletableError):
        delete_model(BUNDLED_MODEL_ID)


def test_verify_against_the_hub_and_the_cache(
    manager: DownloadManager, fake_hub: FakeHub, repo: FakeRepo
) -> None:
    snapshot = manager.download(DEFAULT_REPO).snapshot

    online = verify_model(DEFAULT_REPO, manager=manager)
    assert online.against == "hub" and online.ok
    assert sorted(f.path for f in online.files) == sorted(repo.files)
    offline = verify_model(DEFAULT_REPO, online=False, manager=manager)
    assert offline.against == "cache" and offline.ok and len(offline.files) == len(repo.files)

    # Damage one weight file and one small file in place (a failing disk would).
    blob = (snapshot / SHARD1).resolve()
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0xFF
    blob.write_bytes(bytes(data))
    config = (snapshot / "config.json").resolve()
    config.write_text(config.read_text().replace("gemma4", "gemmaX"))  # same size
    for report in (
        verify_model(DEFAULT_REPO, manager=manager),
        verify_model(DEFAULT_REPO, online=False, manager=manager),
    ):
        assert sorted(f.path for f in report.failed) == ["config.json", SHARD1]
        assert not report.ok

    # The Hub away: the cache's own hashes, and the report says so.
    fake_hub.fail(503, endpoint="info", times=100)
    away = verify_model(
        DEFAULT_REPO,
        manager=DownloadManager(retry_delays=(), headroom_bytes=0),
    )
    assert away.against == "cache" and away.note and not away.ok


def test_verify_needs_a_complete_snapshot(manager: DownloadManager) -> None:
    with pytest.raises(ModelNotOnDiskError):
        verify_model(DEFAULT_REPO, manager=manager)


def test_last_used_record_survives_a_broken_file() -> None:
    target = paths.state_dir() / model_use.LAST_USED_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("{not json")
    model_use.record_last_used(DEFAULT_REPO, 123.0)
    assert json.loads(target.read_text()) == {DEFAULT_REPO: 123.0}


def test_the_engine_holds_its_model_from_start_to_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arun: Any
) -> None:
    """VllmEngine takes the ``running`` use before it loads vLLM and lets go when the start
    fails; vLLM's import is replaced by a check (a real start takes a minute)."""
    from gemma_desktop.core.engine import vllm_local
    from gemma_desktop.core.engine.config import EngineConfig
    from gemma_desktop.core.engine.processes import EngineRegistry
    from gemma_desktop.core.engine.protocol import EngineError

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    seen: list[str | None] = []

    def loading_vllm() -> None:
        seen.append(in_use(DEFAULT_REPO))
        raise RuntimeError("no vLLM in this test")

    monkeypatch.setattr(vllm_local, "_wait_for_vllm", loading_vllm)
    engine = vllm_local.VllmEngine(
        EngineConfig(model=str(folder), model_id=DEFAULT_REPO),
        EngineRegistry(tmp_path / "engine-processes.json"),
    )
    with pytest.raises(EngineError):
        arun(engine.start())  # on the session's loop, as every engine test
    assert seen == ["running"]
    assert in_use(DEFAULT_REPO) is None
    assert model_use.last_used()[DEFAULT_REPO] > 0
