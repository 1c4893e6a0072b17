"""The first-run wizard walked with pytest-qt: end to end, and quitting midway then resuming."""

from __future__ import annotations

import json
from typing import Any

import pytest
from PySide6.QtWidgets import QMessageBox

from gemma_desktop.core.machine.gpu import NvmlReader
from gemma_desktop.core.machine.probe import ProbeService
from gemma_desktop.core.models.catalog import BUNDLED_MODEL_ID, VariantCatalog
from gemma_desktop.core.models.downloads import DownloadManager
from gemma_desktop.core.secrets import TokenStore
from gemma_desktop.core.settings import SettingsStore
from gemma_desktop.ui.app_state import AppState
from gemma_desktop.ui.engine_host import EngineHost
from gemma_desktop.ui.setup.wizard import (
    COMPLETE_KEY,
    PROGRESS_KEY,
    STEPS,
    SetupWizard,
    WizardProgress,
    needs_wizard,
)
from gemma_desktop.ui.tasks import spawn
from tests.fixtures.nvml import RTX_4080, FakeNvml

GATED = "google/gemma-4-E2B-it"


#: The real probe with a 16 GB card: a GPU is the one thing this machine lacks.
CARD = NvmlReader(FakeNvml([RTX_4080])).read()[0]
GPU_PROBE = ProbeService(gpu_reader=lambda: [CARD])


def make_wizard(
    host: EngineHost,
    store: SettingsStore,
    *,
    probe: ProbeService | None = None,
    download_manager: DownloadManager | None = None,
    session_keys: dict[str, str] | None = None,
) -> SetupWizard:
    """A wizard with the services ``app.py`` gives it."""
    return SetupWizard(
        host=host,
        state=AppState(store, probe or ProbeService()),
        token_store=TokenStore(),
        download_manager=download_manager or DownloadManager(),
        catalog=VariantCatalog(),
        session_keys=session_keys if session_keys is not None else {},
    )


class Walker:
    """Drives a :class:`SetupWizard` like a user, through its buttons."""

    def __init__(self, qtbot: Any, wizard: SetupWizard) -> None:
        self.qtbot = qtbot
        self.wizard = wizard
        self.outcome: list[bool] = []
        wizard.finished.connect(self.outcome.append)
        qtbot.addWidget(wizard)
        wizard.show()
        spawn(wizard.start(), "test")

    def at(self, step: str, timeout: float = 30.0) -> None:
        self.qtbot.waitUntil(lambda: self.wizard.current_step == step, timeout=int(timeout * 1000))

    def next_enabled(self, timeout: float = 60.0) -> None:
        self.qtbot.waitUntil(self.wizard.next_button.isEnabled, timeout=int(timeout * 1000))

    def next(self, expect: str, timeout: float = 60.0) -> None:
        self.next_enabled(timeout)
        self.wizard.next_button.click()
        self.at(expect, timeout)

    def skip(self, expect: str) -> None:
        assert self.wizard.skip_button.isVisible()
        self.wizard.skip_button.click()
        self.at(expect)


def _saved() -> dict[str, Any]:
    return SettingsStore().load()


@pytest.mark.engine
def test_wizard_end_to_end_with_the_bundled_model(
    qloop: Any, qtbot: Any, shared_engine: Any
) -> None:
    assert needs_wizard(_saved())
    host = EngineHost(None, BUNDLED_MODEL_ID)
    host.adopt(shared_engine)  # the session's real engine; the wizard must not stop it
    wizard = make_wizard(host, SettingsStore())
    walk = Walker(qtbot, wizard)
    walk.at("welcome")
    assert not wizard.back_button.isEnabled() and not wizard.skip_button.isVisible()
    walk.next("hardware")

    hardware: Any = wizard.page("hardware")
    walk.next_enabled()  # the live probe finished
    assert hardware.panel.report is not None and hardware.panel.rows()
    assert hardware.panel.report.check("gpu") is not None
    # No GPU here: the default Gemma 4 cannot run, and the wizard says what can.
    assert "Gemma 3 270M (bundled)" in hardware.summary.text()
    walk.next("token")

    token: Any = wizard.page("token")
    qtbot.waitUntil(lambda: "No token yet" in token.panel.source_label.text())
    assert not wizard.next_button.isEnabled()  # nothing to go on with but Skip
    assert "gated" in token.findChild(type(token.panel.source_label), "tokenWhy").text()
    walk.skip("variant")

    variant: Any = wizard.page("variant")
    qtbot.waitUntil(lambda: variant.selected == BUNDLED_MODEL_ID)  # preselected
    variant.select("google/gemma-4-E4B-it")
    qtbot.waitUntil(lambda: not wizard.next_button.isEnabled())  # does not fit here
    variant.select(BUNDLED_MODEL_ID)
    walk.next("download")
    assert _saved()["model_id"] == BUNDLED_MODEL_ID

    download: Any = wizard.page("download")
    walk.next_enabled()
    assert "already on this computer" in download.status.text()  # prepared: skipped
    walk.next("engine")

    engine_page: Any = wizard.page("engine")
    walk.next_enabled(timeout=600)
    assert "ready" in engine_page.status.text()
    walk.next("done")
    assert wizard.next_button.text() == "Start chatting"
    wizard.next_button.click()
    qtbot.waitUntil(lambda: walk.outcome == [True])
    saved = _saved()
    assert saved[COMPLETE_KEY] is True and PROGRESS_KEY not in saved
    assert not needs_wizard(saved)
    assert shared_engine.status.state.value == "ready"  # left running for the chat


def test_quit_midway_and_resume_through_a_download(qloop: Any, qtbot: Any, fake_hub: Any) -> None:
    """Quit during the download, relaunch: it resumes there and finishes; then quit at
    the engine step and resume there."""
    fake_hub.rate = 1.5 * 1024 * 1024  # slow enough to quit part-way
    manager = DownloadManager(retry_delays=(0.1,))

    def make() -> SetupWizard:
        return make_wizard(
            EngineHost(None, GATED), SettingsStore(), probe=GPU_PROBE, download_manager=manager
        )

    walk = Walker(qtbot, make())
    walk.at("welcome")
    walk.next("hardware")
    walk.next("token")
    token: Any = walk.wizard.page("token")
    walk.next_enabled()  # HF_TOKEN is set: the token step can be passed
    assert "HF_TOKEN" in token.panel.source_label.text()
    walk.next("variant")
    variant: Any = walk.wizard.page("variant")
    qtbot.waitUntil(lambda: variant.selected is not None)
    variant.select(GATED)
    qtbot.waitUntil(lambda: variant.selected == GATED)
    walk.next("download")
    download: Any = walk.wizard.page("download")
    qtbot.waitUntil(lambda: download.panel is not None and download.panel.is_running)
    qtbot.waitUntil(
        lambda: any(
            r.bytes_sent > 0 and r.file.endswith(".safetensors")
            for r in fake_hub.requests(kind="resolve", method="GET")
        ),
        timeout=30_000,
    )
    walk.wizard.close()  # quit midway
    qtbot.waitUntil(lambda: walk.outcome == [False])
    qtbot.waitUntil(lambda: not download.panel.is_running, timeout=15_000)

    progress = WizardProgress.from_saved(_saved())
    assert progress.completed == ("welcome", "hardware", "token", "variant")
    assert progress.variant == GATED and _saved()["model_id"] == GATED
    assert not manager.is_cached(GATED)  # nothing half-downloaded counts as a model

    fake_hub.rate = None
    walk = Walker(qtbot, make())
    walk.at("download")  # resumed at the first unfinished step
    download = walk.wizard.page("download")
    walk.next_enabled(timeout=60)
    assert manager.is_cached(GATED)
    walk.next("engine")
    walk.wizard.close()
    qtbot.waitUntil(lambda: walk.outcome == [False])
    assert WizardProgress.from_saved(_saved()).first_unfinished() == "engine"

    walk = Walker(qtbot, make())
    walk.at("engine")
    download = walk.wizard.page("download")
    walk.wizard.back_button.click()
    walk.at("download")
    walk.next_enabled()  # already in the cache: skipped without a new transfer
    assert "already on this computer" in download.status.text()
    walk.wizard.close()


def test_unsaved_token_is_not_kept_and_no_keyring_offers_a_choice(
    qloop: Any, qtbot: Any, fake_hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fixtures.fakehub import VALID_TOKEN

    monkeypatch.delenv("HF_TOKEN")
    store = SettingsStore()
    store.update(**{PROGRESS_KEY: WizardProgress(("welcome", "hardware")).to_saved()})

    def make() -> SetupWizard:
        return make_wizard(EngineHost(None, BUNDLED_MODEL_ID), store, probe=GPU_PROBE)

    walk = Walker(qtbot, make())
    walk.at("token")
    token: Any = walk.wizard.page("token")
    token.panel.field.setText(VALID_TOKEN)
    walk.wizard.close()  # typed, never saved
    qtbot.waitUntil(lambda: walk.outcome == [False])
    text = store.path.read_text(encoding="utf-8")
    assert VALID_TOKEN not in text

    walk = Walker(qtbot, make())
    walk.at("token")  # still unfinished
    token = walk.wizard.page("token")
    qtbot.waitUntil(lambda: "No token yet" in token.panel.source_label.text())
    token.panel.field.setText(VALID_TOKEN)
    qtbot.waitUntil(token.panel.save_button.isEnabled)
    token.panel.save_button.click()
    # keyring's real fail backend: no keyring, so the user must choose.
    qtbot.waitUntil(token.panel.fallback_box.isVisible, timeout=30_000)
    assert not walk.wizard.next_button.isEnabled()
    token.panel.session_button.click()
    walk.next("variant")
    assert VALID_TOKEN not in store.path.read_text(encoding="utf-8")
    assert WizardProgress.from_saved(store.load()).completed == ("welcome", "hardware", "token")
    walk.wizard.close()


def test_progress_records_are_ordered_and_validated() -> None:
    p = WizardProgress().with_step("token").with_step("welcome")
    assert p.completed == ("welcome", "token")
    assert p.first_unfinished() == "hardware"
    saved = {PROGRESS_KEY: {"format": 1, "completed": ["welcome", "bogus"], "variant": 3}}
    assert WizardProgress.from_saved(saved) == WizardProgress(("welcome",), None)
    assert WizardProgress.from_saved({PROGRESS_KEY: {"format": 99}}) == WizardProgress()
    everything = WizardProgress(STEPS)
    assert everything.first_unfinished() == "done"
    assert json.loads(json.dumps(p.to_saved())) == p.to_saved()
    assert needs_wizard({}) and needs_wizard({COMPLETE_KEY: "yes"})
    assert not needs_wizard({COMPLETE_KEY: True})


def test_remote_server_skips_the_download_and_starts_a_remote_engine(
    qloop: Any, qtbot: Any, arun: Any, server_url: str
) -> None:
    from gemma_desktop.core.engine.assembly import EngineAssembly
    from gemma_desktop.core.engine.remote import RemoteEngine
    from gemma_desktop.core.settings import load_settings
    from tests.fixtures.vllm_models import MODELS, SERVER_KEY

    local_builds: list[str] = []
    store = SettingsStore()
    store.update(**{PROGRESS_KEY: WizardProgress(("welcome", "hardware", "token")).to_saved()})
    session_keys: dict[str, str] = {}
    assembly = EngineAssembly(session_keys=session_keys)

    async def factory(variant_id: str, progress: Any) -> Any:
        # What the app's factory does: the saved choice decides, through the assembly.
        settings = load_settings({}, store)
        engine = await assembly.build(variant_id, settings, GPU_PROBE.run(settings), progress)
        if not isinstance(engine, RemoteEngine):
            local_builds.append(variant_id)
        return engine

    host = EngineHost(factory, BUNDLED_MODEL_ID)

    def make() -> SetupWizard:
        return make_wizard(host, store, probe=GPU_PROBE, session_keys=session_keys)

    walk = Walker(qtbot, make())
    walk.at("variant")
    variant: Any = walk.wizard.page("variant")
    qtbot.waitUntil(lambda: variant.selected is not None)
    assert not variant.remote.isVisible() and variant.picker.isVisible()
    variant.remote_toggle.setChecked(True)
    assert variant.remote.isVisible() and not variant.picker.isVisible()
    assert not variant.remote.api_card.isVisible()  # the local API is not part of setup
    assert not walk.wizard.next_button.isEnabled()  # no model picked yet

    remote = variant.remote
    remote.url_field.setText(server_url)
    remote.key_field.setText("sk-wrong-key")
    remote.connect_button.click()
    qtbot.waitUntil(
        lambda: (
            "rejected" in remote.remote_status.text().lower()
            or "401" in remote.remote_status.text()
        )
    )
    assert not walk.wizard.next_button.isEnabled()
    remote.key_field.setText(SERVER_KEY)
    remote.connect_button.click()
    qtbot.waitUntil(lambda: remote.model_combo.count() == len(MODELS))
    remote.model_combo.setCurrentIndex(1)
    walk.next_enabled()
    walk.wizard.next_button.click()

    # The tests' keyring always fails: keep the key for this session.
    qtbot.waitUntil(
        lambda: any(b.isVisible() for b in remote.findChildren(QMessageBox)), timeout=10_000
    )
    box = next(b for b in remote.findChildren(QMessageBox) if b.isVisible())
    next(b for b in box.buttons() if b.text() == "Keep for this session").click()
    walk.at("engine")  # the download step is skipped

    saved = _saved()
    assert saved["engine"] == "remote"
    assert saved["remote_base_url"] == server_url
    assert saved["remote_model"] == MODELS[1]
    assert WizardProgress.from_saved(saved).completed == (
        "welcome",
        "hardware",
        "token",
        "variant",
        "download",
    )
    assert SERVER_KEY not in store.path.read_text(encoding="utf-8")
    assert session_keys == {server_url: SERVER_KEY}

    engine_page: Any = walk.wizard.page("engine")
    walk.next_enabled()  # the host's factory built a RemoteEngine and it connected
    assert isinstance(host.engine, RemoteEngine)
    assert host.engine.model_id == MODELS[1]
    assert "ready" in engine_page.status.text() and MODELS[1] in engine_page.status.text()
    assert local_builds == []

    walk.wizard.back_button.click()
    walk.at("variant")  # back skips the download too
    walk.wizard.close()
    qtbot.waitUntil(lambda: walk.outcome == [False])

    # Relaunched: resumes at the engine step, still remote, and finishes.
    walk = Walker(qtbot, make())
    walk.at("engine")
    walk.next("done")
    assert MODELS[1] in walk.wizard.page("done").summary.text()  # type: ignore[attr-defined]
    walk.wizard.next_button.click()
    qtbot.waitUntil(lambda: walk.outcome == [True])
    assert _saved()[COMPLETE_KEY] is True and _saved()["engine"] == "remote"
    assert local_builds == []
    arun(host.shutdown(), timeout=30)
