"""The Connections page against real loopback HTTP servers (no vLLM engine is started)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from PySide6.QtWidgets import QLineEdit, QMessageBox

from gemma_desktop.core.engine.protocol import EngineState
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.machine.probe import ProbeService
from gemma_desktop.core.settings import SettingsStore
from gemma_desktop.ui.app_state import AppState
from gemma_desktop.ui.engine_host import EngineHost
from gemma_desktop.ui.local_api_host import LocalApiHost
from gemma_desktop.ui.panels.connections_panel import ConnectionsPanel
from gemma_desktop.ui.tasks import spawn
from tests.fixtures.vllm_models import MODELS, SERVER_KEY


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def panel(qtbot: Any, qloop: Any) -> ConnectionsPanel:
    host = EngineHost(None, "bundled/gemma-3-270m")
    store = SettingsStore()
    state = AppState(store, ProbeService())
    widget = ConnectionsPanel(host, state, local_api=LocalApiHost(host, store, "gemma-local"))
    qtbot.addWidget(widget)
    widget.show()
    return widget


def test_unreachable_server_shows_reason_and_hint(
    panel: ConnectionsPanel, arun: Any, closed_port_url: str
) -> None:
    panel.remote_choice.setChecked(True)
    panel.url_field.setText(closed_port_url)
    assert arun(panel.connect_remote(), timeout=30) is False
    text = panel.remote_status.text()
    assert "cannot be reached" in text
    assert "vllm serve" in text  # the hint
    assert panel.model_combo.count() == 0
    assert panel.connect_button.isEnabled()


def test_not_an_address_is_explained(panel: ConnectionsPanel, arun: Any) -> None:
    panel.url_field.setText("gpu-server")
    assert arun(panel.connect_remote(), timeout=10) is False
    assert "not a server address" in panel.remote_status.text()


def test_connect_lists_models_and_reports_wrong_key(
    panel: ConnectionsPanel, arun: Any, server_url: str
) -> None:
    panel.remote_choice.setChecked(True)
    assert panel.key_field.echoMode() == QLineEdit.EchoMode.Password
    panel.url_field.setText(server_url + "/v1/")
    panel.key_field.setText("sk-wrong-key")
    assert arun(panel.connect_remote(), timeout=30) is False
    text = panel.remote_status.text()
    assert "401" in text or "rejected" in text.lower(), text
    assert "sk-wrong-key" not in text
    assert panel.model_combo.count() == 0

    panel.key_field.setText(SERVER_KEY)
    assert arun(panel.connect_remote(), timeout=30) is True
    assert [panel.model_combo.itemText(i) for i in range(panel.model_combo.count())] == MODELS
    assert "2 models" in panel.remote_status.text()
    assert SERVER_KEY not in panel.remote_status.text()


def test_apply_saves_choice_without_the_key(
    panel: ConnectionsPanel, arun: Any, server_url: str, qtbot: Any
) -> None:
    panel.remote_choice.setChecked(True)
    panel.url_field.setText(server_url)
    panel.key_field.setText(SERVER_KEY)
    assert arun(panel.connect_remote(), timeout=30) is True
    panel.model_combo.setCurrentIndex(1)
    applied: list[str] = []
    panel.engine_choice_applied.connect(applied.append)

    # The tests' keyring backend always fails: the panel offers a session-only key.
    task = spawn(panel.apply(), "test")
    qtbot.waitUntil(
        lambda: any(b.isVisible() for b in panel.findChildren(QMessageBox)), timeout=10_000
    )
    box = next(b for b in panel.findChildren(QMessageBox) if b.isVisible())
    assert "keyring" in box.text().lower()
    next(b for b in box.buttons() if b.text() == "Keep for this session").click()
    qtbot.waitUntil(task.done, timeout=10_000)
    assert task.result() is True
    assert applied == ["remote"]

    store = SettingsStore()
    saved = store.load()
    assert saved["engine"] == "remote"
    assert saved["remote_base_url"] == server_url
    assert saved["remote_model"] == MODELS[1]
    assert SERVER_KEY not in store.path.read_text(encoding="utf-8")
    assert panel.session_keys == {server_url: SERVER_KEY}
    assert panel.key_field.text() == ""

    # A new panel shows the saved choice; Connect uses the session key.
    again = ConnectionsPanel(
        panel.host, AppState(store, ProbeService()), session_keys=panel.session_keys
    )
    qtbot.addWidget(again)
    assert again.remote_choice.isChecked()
    assert again.url_field.text() == server_url
    assert again.model_combo.currentText() == MODELS[1]
    assert arun(again.connect_remote(), timeout=30) is True

    # Back to this computer.
    again.local_choice.setChecked(True)
    assert arun(again.apply(), timeout=30) is True
    assert store.load()["engine"] == "local"


def test_cancelling_the_session_key_saves_nothing(
    panel: ConnectionsPanel, server_url: str, qtbot: Any
) -> None:
    panel.remote_choice.setChecked(True)
    panel.url_field.setText(server_url)
    panel.key_field.setText(SERVER_KEY)
    task = spawn(panel.apply(), "test")
    qtbot.waitUntil(
        lambda: any(b.isVisible() for b in panel.findChildren(QMessageBox)), timeout=10_000
    )
    box = next(b for b in panel.findChildren(QMessageBox) if b.isVisible())
    next(b for b in box.buttons() if b.text() == "Cancel").click()
    qtbot.waitUntil(task.done, timeout=10_000)
    assert task.result() is False
    assert "engine" not in SettingsStore().load()
    assert panel.session_keys == {}


def test_local_api_checkbox_persists_and_explains_without_engine(
    panel: ConnectionsPanel, qtbot: Any, arun: Any
) -> None:
    assert panel.host.status.state == EngineState.NOT_STARTED
    assert not panel.api_checkbox.isChecked()
    assert not panel.api_checkbox.isEnabled()
    assert "start it first" in panel.api_note.text()
    assert panel.api_address.text() == "" and panel.api_token.text() == ""
    assert not panel.copy_token_button.isEnabled()
    assert panel.api_token.echoMode() == QLineEdit.EchoMode.Password

    # Saved as opted in (as if ticked while the engine ran): shown ticked, nothing served.
    panel.api_checkbox.setChecked(True)
    qtbot.waitUntil(lambda: SettingsStore().load().get("local_api_enabled") is True)
    assert SettingsStore().load()["local_api_enabled"] is True
    assert panel.server is None
    assert "The API starts with it." in panel.api_note.text()
    again = ConnectionsPanel(panel.host, AppState(SettingsStore(), ProbeService()))
    qtbot.addWidget(again)
    assert again.api_checkbox.isChecked()
    assert "not available in this installation" in again.api_note.text()
    assert not again.api_checkbox.isEnabled()

    # Unticking removes the key (off is the default).
    panel.api_checkbox.setChecked(False)
    qtbot.waitUntil(lambda: "local_api_enabled" not in SettingsStore().load())
    assert "local_api_enabled" not in SettingsStore().load()
    assert panel.local_api is not None
    arun(panel.local_api.shutdown(), timeout=10)


def test_app_engine_assembly_follows_the_saved_choice(
    arun: Any, server_url: str, bundled_model_path: Any
) -> None:
    from gemma_desktop.core.engine.assembly import EngineAssembly
    from gemma_desktop.core.engine.remote import RemoteEngine
    from gemma_desktop.core.engine.vllm_local import VllmEngine
    from gemma_desktop.core.machine.probe import run_probe
    from gemma_desktop.core.settings import load_settings

    store = SettingsStore()
    keys = {server_url: SERVER_KEY}
    assembly = EngineAssembly(session_keys=keys)

    def build() -> Any:
        settings = load_settings({}, store)
        report = run_probe(settings, env={})
        return arun(assembly.build("bundled/gemma-3-270m", settings, report), timeout=60)

    local = build()  # built, not started: nothing is loaded yet
    assert isinstance(local, VllmEngine)
    assert local.status.state == EngineState.NOT_STARTED
    assert local.config.model == str(bundled_model_path.resolve())

    store.update(engine="remote", remote_base_url=server_url, remote_model=MODELS[0])
    engine = build()
    assert isinstance(engine, RemoteEngine)
    arun(engine.start(), timeout=30)
    try:
        assert engine.status.state == EngineState.READY
        assert engine.model_id == MODELS[0]
    finally:
        arun(engine.shutdown(), timeout=30)

    keys.clear()  # no session key and no keyring: the server refuses
    engine = build()
    with pytest.raises(GemmaDesktopError):
        arun(engine.start(), timeout=30)
    assert engine.status.state == EngineState.CRASHED
    arun(engine.shutdown(), timeout=30)
