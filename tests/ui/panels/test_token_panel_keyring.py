"""The token panel against a real Secret Service (gnome-keyring on a private D-Bus)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from gemma_desktop.core.secrets import KEYRING_SERVICE, KEYRING_USER, TokenStore
from gemma_desktop.ui.panels.token_panel import TokenPanel
from tests.fixtures.fakehub import VALID_TOKEN

pytestmark = [pytest.mark.keyring, pytest.mark.usefixtures("real_keyring")]

READ_BACK = (
    "import keyring, sys; "
    f"value = keyring.get_password({KEYRING_SERVICE!r}, {KEYRING_USER!r}); "
    "sys.stdout.write('<none>' if value is None else value)"
)


def read_from_another_process() -> str:
    done = subprocess.run(
        [sys.executable, "-c", READ_BACK],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_save_read_back_and_remove(qtbot: Any, arun: Any, fake_hub: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("HF_TOKEN")  # the fake hub's env token would take precedence
    panel = TokenPanel(TokenStore())
    qtbot.addWidget(panel)
    panel.show()
    assert arun(panel.refresh()).source is None
    assert "keyring" not in panel.source_label.text().lower() or "No OS keyring" not in (
        panel.source_label.text()
    )

    panel.field.setText(VALID_TOKEN)
    assert arun(panel.save()) is True
    assert not panel.fallback_box.isVisible()
    assert panel.location is not None and panel.location.source == "keyring"
    assert "saved in the OS keyring" in panel.source_label.text()
    assert read_from_another_process() == VALID_TOKEN
    # Never the plaintext file.
    assert not TokenStore().token_file().exists()

    replacement = "hf_fakeNoAccessToken0123456"
    panel.field.setText(replacement)
    assert arun(panel.save()) is True
    assert read_from_another_process() == replacement

    arun(panel.remove())
    assert panel.location is not None and panel.location.source is None
    assert read_from_another_process() == "<none>"
