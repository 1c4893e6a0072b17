"""The whole window built by app.py: pages, menus, keyboard, start-up, crash handler."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractSpinBox,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QTextBrowser,
    QTreeWidget,
)

from gemma_desktop.core import paths
from gemma_desktop.core.engine.protocol import EngineState
from gemma_desktop.core.machine.probe import can_run_unattended as can_autostart
from gemma_desktop.core.models.catalog import BUNDLED_MODEL_ID, VariantCatalog
from gemma_desktop.crash import LOG_FILE_NAME
from gemma_desktop.ui.main_window import PAGE_HARDWARE, PAGE_MODEL, focus_chain

pytestmark = pytest.mark.usefixtures("fail_keyring")


def test_startup_on_this_machine_picks_what_can_run(make_app: Any, arun: Any) -> None:
    app = make_app()
    arun(app.startup(), timeout=60)
    report = app.state.report
    assert report is not None
    assert app.window.probe_panel.report is report
    # Auto-start is off in these tests: the engine waits for the user.
    assert app.host.status.state is EngineState.NOT_STARTED
    if report.gpus:
        pytest.skip("this machine has a GPU; the GPU-less path is what is checked here")
    assert app.host.variant_id == BUNDLED_MODEL_ID
    assert "cannot run here" in app.window.notice_label.text()
    assert "(selected)" in app.window.picker.tree.topLevelItem(4).text(0)
    ok, why = can_autostart(VariantCatalog().bundled, report)
    assert ok, why
    ok, why = can_autostart(VariantCatalog().default, report)
    assert not ok and why


def test_every_control_is_named_and_reachable(make_app: Any, arun: Any) -> None:
    app = make_app()
    arun(app.startup(), timeout=60)
    window = app.window
    kinds = (
        QAbstractButton,
        QAbstractSpinBox,
        QLineEdit,
        QPlainTextEdit,
        QTextBrowser,
        QListWidget,
        QTreeWidget,
    )
    controls = [w for kind in kinds for w in window.findChildren(kind)]
    # Qt's own helpers (a spin box's line edit, a line edit's clear button, the
    # menu bar's overflow button) are named by Qt's accessibility layer.
    controls = [
        w
        for w in controls
        if not w.objectName().startswith("qt_") and not isinstance(w.parent(), QLineEdit)
    ]
    unnamed = [
        f"{type(w).__name__}({w.objectName()})"
        for w in controls
        if not (w.accessibleName() or (isinstance(w, QAbstractButton) and w.text()))
    ]
    assert unnamed == []
    chain = focus_chain(window)
    for name in ("composer", "transcript", "navigation", "tokenField", "variants"):
        assert any(w.objectName() == name for w in [*chain, window.navigation]), name
    for widget in (
        window.chat.send_button,
        window.chat.stop_button,
        window.chat.temperature,
        window.probe_panel.rerun_button,
        window.token_panel.save_button,
        window.picker.use_button,
    ):
        assert widget in chain


def test_menus_and_pages(make_app: Any, arun: Any, qtbot: Any) -> None:
    app = make_app()
    window = app.window
    titles = [a.text() for a in window.menuBar().actions()]
    assert titles == ["&File", "&Engine", "&View", "&Help"]
    window.show_page(PAGE_HARDWARE)
    assert window.pages.currentWidget() is window.probe_panel
    window.show_page(PAGE_MODEL)
    assert window.pages.currentIndex() == PAGE_MODEL
    assert window.start_action.isEnabled() and not window.stop_action.isEnabled()
    window.show_download("google/gemma-4-E2B-it")
    assert window.download_area.isVisible()
    panel = window._download_widget
    assert panel is not None and getattr(panel, "variant_id", None) == "google/gemma-4-E2B-it"


def test_log_file_redacts_tokens(make_app: Any, monkeypatch: Any) -> None:
    app = make_app()
    app.redactor.add_secret("sessionSecretValue42")
    logging.getLogger("gemma_desktop.test").warning(
        "token %s and %s", "hf_abcdefghijklmnop", "sessionSecretValue42"
    )
    try:
        raise ValueError("failed with hf_zyxwvutsrqponmlk")
    except ValueError:
        logging.getLogger("gemma_desktop.test").exception("boom")
    app.log_handler.flush()
    text = (paths.state_dir() / LOG_FILE_NAME).read_text()
    assert "token hf_*** and hf_***" in text
    assert "hf_abcdefghijklmnop" not in text and "sessionSecretValue42" not in text
    assert "ValueError: failed with hf_***" in text
    assert app.log_path == paths.state_dir() / LOG_FILE_NAME


def test_crash_handler_explains_and_copies_redacted_diagnostics(make_app: Any, qtbot: Any) -> None:
    app = make_app(crash_dialogs=True)
    try:
        raise RuntimeError("unexpected with hf_secretTokenValue999")
    except RuntimeError as exc:
        app.crash.excepthook(type(exc), exc, exc.__traceback__)
    box = app.crash.dialog
    assert box is not None and box.isVisible()
    assert "Something went wrong" in box.text()
    assert "copy the diagnostics" in box.informativeText()
    assert "hf_secretTokenValue999" not in box.informativeText() + box.detailedText()
    assert "RuntimeError" in box.detailedText()
    copy = next(b for b in box.buttons() if b.text() == "Copy diagnostics")
    copy.click()
    copied = QGuiApplication.clipboard().text()
    assert "Gemma Desktop" in copied and "RuntimeError" in copied
    assert "hf_secretTokenValue999" not in copied
    box.close()
    app.log_handler.flush()
    log_text = app.log_path.read_text()
    assert "Unexpected error: RuntimeError" in log_text
    assert "hf_secretTokenValue999" not in log_text


def test_help_copy_diagnostics(make_app: Any, arun: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_environmentToken1234")
    app = make_app()
    arun(app.startup(), timeout=60)
    app.window.copy_diagnostics_action.trigger()
    text = QGuiApplication.clipboard().text()
    assert "Outcome:" in text and "Engine:" in text
    assert "hf_environmentToken1234" not in text
