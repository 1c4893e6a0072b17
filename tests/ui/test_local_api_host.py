"""The local API switched on and off from the Connections page, over the real shared engine:
the page flips the app's LocalApiHost, which serves the engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from gemma_desktop.core.engine.local_api import LocalApiServer
from gemma_desktop.core.engine.protocol import EngineState
from gemma_desktop.core.machine.probe import ProbeService
from gemma_desktop.core.settings import SettingsStore, load_settings
from gemma_desktop.ui.app_state import AppState
from gemma_desktop.ui.engine_host import EngineHost
from gemma_desktop.ui.local_api_host import LocalApiHost
from gemma_desktop.ui.panels.connections_panel import ConnectionsPanel

Arun = Callable[..., Any]


@pytest.mark.engine
def test_tick_serves_the_engine_and_untick_stops_it(
    qloop: Any, qtbot: Any, arun: Arun, shared_engine: Any
) -> None:
    assert shared_engine.status.state == EngineState.READY
    deployment = load_settings().deployment_name.value
    built: list[LocalApiServer] = []
    host = EngineHost(None, shared_engine.model_id)
    host.adopt(shared_engine)  # not owned: the host never stops it
    store = SettingsStore()
    # The app's own local API host; only the port differs (a free one, not the editors' default).
    api = LocalApiHost(host, store, deployment, port=0)

    def note_server() -> None:
        if api.server is not None and api.server not in built:
            built.append(api.server)

    api.changed.connect(note_server)
    panel = ConnectionsPanel(host, AppState(store, ProbeService()), local_api=api)
    qtbot.addWidget(panel)
    panel.show()
    try:
        assert panel.api_checkbox.isEnabled() and not panel.api_checkbox.isChecked()
        assert panel.server is None and panel.api_address.text() == ""

        panel.api_checkbox.setChecked(True)
        qtbot.waitUntil(lambda: panel.api_address.text() != "", timeout=120_000)
        assert len(built) == 1 and built[0].served_model_name == deployment
        address = panel.api_address.text()
        token = panel.api_token.text()
        assert address == built[0].address and address.startswith("http://127.0.0.1:")
        assert token and token == (built[0].token.value if built[0].token else None)
        assert "127.0.0.1 only" in panel.api_note.text()
        assert SettingsStore().load()["local_api_enabled"] is True

        async def ask(key: str) -> tuple[list[str], str | None]:
            async with openai.AsyncOpenAI(base_url=address, api_key=key, max_retries=0) as client:
                models = [m.id async for m in client.models.list()]
                reply = await client.chat.completions.create(
                    model=deployment,
                    messages=[{"role": "user", "content": "Once upon a time,"}],
                    temperature=0,
                    max_tokens=8,
                )
                return models, reply.choices[0].message.content

        models, text = arun(ask(token), timeout=180)
        assert models == [deployment]
        assert text and text.strip()
        with pytest.raises(openai.AuthenticationError):
            arun(ask("gd-local-not-the-token"), timeout=60)

        panel.api_checkbox.setChecked(False)
        qtbot.waitUntil(lambda: panel.server is None and panel.api_address.text() == "")
        qtbot.waitUntil(lambda: not built[0].running, timeout=30_000)
        assert panel.api_token.text() == ""
        assert "local_api_enabled" not in SettingsStore().load()
        with pytest.raises(openai.APIConnectionError):
            arun(ask(token), timeout=60)
    finally:
        arun(api.shutdown(), timeout=60)
        for server in built:
            assert not server.running
        shared_engine.remove_state_listener(host._on_engine_state)
    assert shared_engine.status.state == EngineState.READY
