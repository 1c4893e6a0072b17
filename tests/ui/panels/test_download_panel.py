"""The download panel (offscreen Qt) driving a real download from the fake hub."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from PySide6.QtCore import Qt

from gemma_desktop.core.models.downloads import DownloadManager
from gemma_desktop.ui.panels.download_panel import DownloadPanel
from tests.fixtures.fakehub import DEFAULT_REPO, SHARD1, FakeHub, FakeRepo

TIMEOUT_MS = 60_000


@pytest.fixture
def panel(qtbot: Any, manager: DownloadManager) -> Iterator[DownloadPanel]:
    widget = DownloadPanel(manager, DEFAULT_REPO)
    qtbot.addWidget(widget)
    widget.show()
    yield widget
    widget.shutdown()


def test_progress_moves_and_finishes(
    qtbot: Any, panel: DownloadPanel, fake_hub: FakeHub, repo: FakeRepo
) -> None:
    fake_hub.rate = 1024 * 1024
    assert "Gemma 4 E2B-it" in panel.variant_label.text()
    seen: list[int] = []
    with qtbot.waitSignal(panel.finished, timeout=TIMEOUT_MS) as blocker:
        qtbot.mouseClick(panel.action_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: 0 < panel.progress_bar.value() < 1000, timeout=TIMEOUT_MS)
        seen.append(panel.progress_bar.value())
        qtbot.waitUntil(lambda: "/s" in panel.bytes_label.text(), timeout=TIMEOUT_MS)
        assert "left" in panel.bytes_label.text()
    assert blocker.args == [True]
    assert panel.progress_bar.value() == 1000
    assert panel.result is not None and panel.result.snapshot.is_dir()
    assert "Ready" in panel.status_label.text()
    assert not panel.error_label.isVisible()


def test_cancel_then_resume(qtbot: Any, panel: DownloadPanel, fake_hub: FakeHub) -> None:
    fake_hub.rate = 256 * 1024
    with qtbot.waitSignal(panel.finished, timeout=TIMEOUT_MS) as blocker:
        panel.start()
        qtbot.waitUntil(lambda: SHARD1 in panel.file_label.text(), timeout=TIMEOUT_MS)
        assert panel.cancel_button.isEnabled()
        qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    assert blocker.args == [False]
    assert panel.action_button.text() == "Resume"
    assert "Cancelled" in panel.status_label.text()
    assert not panel.is_running

    fake_hub.rate = None
    with qtbot.waitSignal(panel.finished, timeout=TIMEOUT_MS) as blocker:
        qtbot.mouseClick(panel.action_button, Qt.MouseButton.LeftButton)
    assert blocker.args == [True]
    assert panel.result is not None and SHARD1 in panel.result.fetched
    assert all(
        name not in panel.result.fetched for name in ("config.json", "tokenizer_config.json")
    )


def test_bad_token_shows_its_hint(
    qtbot: Any, panel: DownloadPanel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_thisTokenDoesNotExist00")
    with qtbot.waitSignal(panel.finished, timeout=TIMEOUT_MS) as blocker:
        panel.start()
    assert blocker.args == [False]
    assert panel.error_label.isVisible() and "401" in panel.error_label.text()
    assert panel.hint_label.isVisible() and "token field" in panel.hint_label.text()
    assert panel.action_button.text() == "Retry"


def test_gated_hint_links_the_model_page(
    qtbot: Any, panel: DownloadPanel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN")
    with qtbot.waitSignal(panel.finished, timeout=TIMEOUT_MS):
        panel.start()
    url = f"https://huggingface.co/{DEFAULT_REPO}"
    assert f'<a href="{url}">{url}</a>' in panel.hint_label.text()
