"""The Model page's Delete…, Verify and Open folder on a cache the real download manager
filled from the fake hub, while another model runs (its engine holds it as VllmEngine
does)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from PySide6.QtGui import QDesktopServices

from gemma_desktop.core.machine.probe import ProbeService
from gemma_desktop.core.models.catalog import VariantCatalog
from gemma_desktop.core.models.downloads import DownloadManager
from gemma_desktop.core.models.model_use import ModelUse
from gemma_desktop.core.settings import SettingsStore, load_settings
from gemma_desktop.ui.app_state import AppState
from gemma_desktop.ui.panels.variant_picker import VariantPicker
from tests.fixtures.fakehub import DEFAULT_REPO, FakeHub, storage_dir
from tests.fixtures.qt import click, wait_for_question

RUNNING = "google/gemma-4-E2B"


pytestmark = pytest.mark.usefixtures("private_runtime_dir")  # this test's lock files


def make_picker(qtbot: Any) -> VariantPicker:
    picker = VariantPicker(
        VariantCatalog(),
        AppState(SettingsStore(), ProbeService()),
        selected=load_settings().model_id.value,
    )
    qtbot.addWidget(picker)
    picker.show()
    return picker


def test_delete_one_model_while_another_runs(
    qtbot: Any, qloop: asyncio.AbstractEventLoop, manager: DownloadManager, fake_hub: FakeHub
) -> None:
    manager.download(DEFAULT_REPO)
    manager.download(RUNNING)
    picker = make_picker(qtbot)

    picker.select(DEFAULT_REPO)
    assert picker.delete_button.isVisible() and picker.verify_button.isVisible()
    assert picker.open_folder_button.isVisible()

    with ModelUse(RUNNING, "running"):
        # Declined: nothing happens.
        task = asyncio.ensure_future(picker.delete(DEFAULT_REPO), loop=qloop)
        box = wait_for_question(qtbot)
        assert "Delete Gemma 4 E2B-it" in box.text() and "MB" in box.informativeText()
        click(box, "Cancel")
        qtbot.waitUntil(task.done, timeout=10_000)
        assert task.result() is False and manager.is_cached(DEFAULT_REPO)

        task = asyncio.ensure_future(picker.delete(DEFAULT_REPO), loop=qloop)
        click(wait_for_question(qtbot), "Delete")
        qtbot.waitUntil(task.done, timeout=10_000)
        assert task.result() is True
        assert picker.status_label.text().startswith("Deleted Gemma 4 E2B-it")
        assert not storage_dir().exists() and not manager.is_cached(DEFAULT_REPO)
        assert not picker.delete_button.isVisible()
        assert picker.download_button.isVisible()

        # The running model: refused before any question, with the reason.
        picker.select(RUNNING)
        assert picker.delete_button.isVisible()
        task = asyncio.ensure_future(picker.delete(RUNNING), loop=qloop)
        qtbot.waitUntil(task.done, timeout=10_000)
        assert task.result() is False
        assert f"{RUNNING} is running" in picker.status_label.text()
        assert "Stop the engine first" in picker.status_label.text()
        assert manager.is_cached(RUNNING)

    task = asyncio.ensure_future(picker.verify(RUNNING), loop=qloop)
    qtbot.waitUntil(task.done, timeout=30_000)
    assert task.result() is True
    assert "match the Hub's hashes" in picker.status_label.text()


def test_open_folder_opens_the_snapshot(
    qtbot: Any, manager: DownloadManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = manager.download(DEFAULT_REPO).snapshot
    opened: list[str] = []
    monkeypatch.setattr(
        QDesktopServices, "openUrl", staticmethod(lambda url: opened.append(url.toLocalFile()))
    )
    picker = make_picker(qtbot)
    picker.select(DEFAULT_REPO)
    picker.open_folder_button.click()
    assert opened == [str(snapshot)]
