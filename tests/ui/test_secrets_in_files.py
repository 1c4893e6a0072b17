"""Secrets that do not look like ``hf_…`` never reach a file the app writes either.

A remote server's API key, the local API's token and an HF token of an unusual shape
pass through the real window (Connections page, local API over the real engine, the
token check at start-up); then every file under the test's folders and the engine's
log folder is scanned. The only files allowed to hold a secret are the ones whose job
that is (the local API token file, 0600, used because the tests have no keyring).
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.engine import LOG_DIR
from tests.fixtures.vllm_models import SERVER_KEY

UNUSUAL_HF_TOKEN = "team-vault-Qm7Zx2Lp9Rw4Tn8"

pytestmark = pytest.mark.engine


def test_unusual_secrets_never_reach_a_file(
    make_app: Any,
    shared_engine: Any,
    server_url: str,
    arun: Any,
    qtbot: Any,
    isolated_dirs: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import openai

    monkeypatch.setenv("HF_TOKEN", UNUSUAL_HF_TOKEN)
    # The engine's log folder lives across tests: only what this test adds is scanned.
    before = {p: p.stat().st_size for p in LOG_DIR.rglob("*") if p.is_file()}
    app = make_app(crash_dialogs=True)
    arun(app.startup(), timeout=60)
    app.host.adopt(shared_engine)
    window = app.window

    # A remote server's key, typed into the Connections page.
    connections = window.connections
    connections.remote_choice.setChecked(True)
    connections.url_field.setText(server_url)
    connections.key_field.setText(SERVER_KEY)
    assert arun(connections.connect_remote(), timeout=30) is True

    # The local API over the real engine, used with its token.
    app.local_api.port = 0
    arun(app.local_api.set_enabled(True), timeout=120)
    server = app.local_api.server
    assert server is not None and server.token is not None
    local_token = server.token.value

    async def ask() -> str | None:
        async with openai.AsyncOpenAI(
            base_url=server.address, api_key=local_token, max_retries=0
        ) as client:
            reply = await client.completions.create(
                model=server.served_model_name, prompt="Once upon a time,", max_tokens=4
            )
            return reply.choices[0].text

    assert arun(ask(), timeout=120)

    # Code that mentions them by mistake: a log line (the app's and vLLM's), a crash.
    secrets = (SERVER_KEY, local_token, UNUSUAL_HF_TOKEN)
    logging.getLogger("gemma_desktop.session").warning("keys %s %s %s", *secrets)
    logging.getLogger("vllm.session").warning("keys %s %s %s", *secrets)
    try:
        raise RuntimeError(f"failure mentioning {' and '.join(secrets)}")
    except RuntimeError as exc:
        app.crash.excepthook(type(exc), exc, exc.__traceback__)
    assert app.crash.dialog is not None
    for secret in secrets:
        assert secret not in app.crash.dialog.informativeText()
        assert secret not in app.crash.dialog.detailedText()
    app.crash.dialog.close()
    window.copy_diagnostics_action.trigger()
    arun(app.local_api.shutdown(), timeout=60)
    window.close()
    qtbot.waitUntil(lambda: window.is_closed, timeout=60_000)
    app.close()

    token_file = isolated_dirs / "config" / "gemma-desktop" / "local-api-token"
    assert token_file.is_file() and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    written = [p for p in [*isolated_dirs.rglob("*"), *LOG_DIR.rglob("*")] if p.is_file()]
    assert any(p.name == "engine.log" for p in written)
    assert any(p.name == "gemma-desktop.log" for p in written)
    hits = [
        (str(p), secret)
        for p in written
        if p != token_file
        for secret in secrets
        if secret.encode() in p.read_bytes()[before.get(p, 0) :]
    ]
    assert hits == []
