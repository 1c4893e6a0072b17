"""The token panel: validation against a loopback hub, and the no-keyring paths with
keyring's real ``fail`` backend."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from gemma_desktop.core.secrets import TokenStore
from gemma_desktop.ui.panels.token_panel import TokenPanel
from tests.fixtures.fakehub import NO_ACCESS_TOKEN, VALID_TOKEN

pytestmark = pytest.mark.usefixtures("fail_keyring")


@pytest.fixture
def panel(qtbot: Any, arun: Any) -> TokenPanel:
    widget = TokenPanel(TokenStore())
    qtbot.addWidget(widget)
    widget.show()
    arun(widget.refresh())
    return widget


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_field_is_masked_with_show_hide(panel: TokenPanel) -> None:
    from PySide6.QtWidgets import QLineEdit

    assert panel.field.echoMode() == QLineEdit.EchoMode.Password
    panel.show_button.click()
    assert panel.field.echoMode() == QLineEdit.EchoMode.Normal
    assert panel.show_button.accessibleName() == "Hide token"
    panel.show_button.click()
    assert panel.field.echoMode() == QLineEdit.EchoMode.Password


def test_no_keyring_is_said_plainly(panel: TokenPanel) -> None:
    assert panel.location is not None and panel.location.source is None
    assert "No OS keyring is available" in panel.source_label.text()


def test_valid_token_without_keyring_offers_the_choice(
    panel: TokenPanel, arun: Any, fake_hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN")  # the panel's own token, not the environment's
    panel.field.setText(VALID_TOKEN)
    assert arun(panel.save()) is False
    assert (
        "Valid token for gemma-fan" in panel.result_label.text() or panel.fallback_box.isVisible()
    )
    assert panel.fallback_box.isVisible()
    assert "plaintext" in panel.fallback_label.text()
    # Nothing was written anywhere: no silent plaintext fallback.
    assert not TokenStore().token_file().exists()
    assert arun(panel.refresh()).source is None


def test_session_only(panel: TokenPanel, arun: Any, fake_hub: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("HF_TOKEN")
    panel.field.setText(VALID_TOKEN)
    arun(panel.save())
    arun(panel.keep_for_session())
    assert panel.location is not None and panel.location.source == "session"
    assert "this session only" in panel.source_label.text()
    assert panel.field.text() == ""
    assert not TokenStore().token_file().exists()
    arun(panel.remove())
    assert panel.location.source is None


def test_token_file_when_chosen(
    panel: TokenPanel, arun: Any, fake_hub: Any, monkeypatch: Any
) -> None:
    monkeypatch.delenv("HF_TOKEN")
    panel.field.setText(VALID_TOKEN)
    arun(panel.save())
    arun(panel.save_to_file())
    path = Path(TokenStore().token_file())
    assert path.read_text() == VALID_TOKEN
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert panel.location is not None and panel.location.source == "file"
    assert "plaintext" in panel.source_label.text()
    assert panel.remove_button.isEnabled()
    arun(panel.remove())
    assert not path.exists()


def test_rejected_token_is_not_saved(
    panel: TokenPanel, arun: Any, fake_hub: Any, monkeypatch: Any
) -> None:
    monkeypatch.delenv("HF_TOKEN")
    panel.field.setText("hf_notAKnownToken12345")
    assert arun(panel.verify()) is False
    assert "rejected" in panel.result_label.text()
    assert arun(panel.save()) is False
    assert not panel.fallback_box.isVisible()


def test_no_access_token_is_still_valid(panel: TokenPanel, arun: Any, fake_hub: Any) -> None:
    panel.field.setText(NO_ACCESS_TOKEN)
    assert arun(panel.verify()) is True


def test_offline_could_not_verify_but_savable(
    panel: TokenPanel, arun: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    panel.field.setText(VALID_TOKEN)
    assert arun(panel.verify(), timeout=60) is None
    assert "Could not verify" in panel.result_label.text()
    arun(panel.save(), timeout=60)
    assert panel.fallback_box.isVisible()  # reached the keyring step despite no network
    arun(panel.keep_for_session())
    assert panel.location is not None and panel.location.source == "session"


def test_environment_token_wins_and_is_shown(
    panel: TokenPanel, arun: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_fromTheEnvironment123")
    TokenStore().write_token_file("hf_inTheTokenFile123456")
    location = arun(panel.refresh())
    assert location.source == "env"
    assert "HF_TOKEN environment variable" in panel.source_label.text()
    assert not panel.remove_button.isEnabled()
    assert "hf_fromTheEnvironment123" not in panel.source_label.text()
