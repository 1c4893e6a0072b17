"""The first-run setup wizard (also reachable later from the menu).

Steps: welcome → hardware check → Hugging Face token → model choice →
download → engine start → done. Each step is recorded in the settings file
the moment it is finished, in the same atomic write as what it decided
(:meth:`SettingsStore.update`: temporary file + rename), so quitting at any
point and launching again resumes at the first unfinished step and nothing
half-done is kept: a typed but unsaved token is never written, a variant only
counts once chosen, a download only once verified in the cache.

All blocking work (probe, keyring, settings file, download, model
preparation, engine start) runs off the UI thread; questions use
``open()``, never ``exec()``.

Signals:
    finished(bool): ``True`` when setup completed (the engine is ready),
        ``False`` when the user closed the wizard midway.
    step_changed(str): the step now shown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from gemma_desktop import APP_NAME
from gemma_desktop.core.engine.protocol import EngineState, EngineStatus, StartProgress
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.machine.probe import FitKind, ProbeReport, startup_variant
from gemma_desktop.core.models.catalog import BUNDLED_MODEL_ID, Variant, VariantCatalog
from gemma_desktop.core.models.downloads import DownloadManager
from gemma_desktop.core.models.hub_cache import is_on_disk
from gemma_desktop.core.secrets import TokenStore, validate_token
from gemma_desktop.core.settings import Settings
from gemma_desktop.ui.app_state import AppState
from gemma_desktop.ui.engine_host import EngineHost
from gemma_desktop.ui.panels.token_panel import Validator
from gemma_desktop.ui.tasks import run_blocking, spawn

log = logging.getLogger(__name__)

STEPS: tuple[str, ...] = ("welcome", "hardware", "token", "variant", "download", "engine", "done")
STEP_TITLES: dict[str, str] = {
    "welcome": "Welcome",
    "hardware": "Hardware check",
    "token": "Hugging Face token",
    "variant": "Choose a model",
    "download": "Download",
    "engine": "Start the engine",
    "done": "Ready",
}
#: Settings keys: the wizard's progress, and "setup finished once".
PROGRESS_KEY = "setup_wizard"
COMPLETE_KEY = "setup_complete"
PROGRESS_FORMAT = 1


@dataclass(frozen=True)
class WizardProgress:
    """What the settings file says about the wizard: finished steps and the chosen model."""

    completed: tuple[str, ...] = ()
    variant: str | None = None

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> WizardProgress:
        raw = saved.get(PROGRESS_KEY)
        if not isinstance(raw, dict) or raw.get("format") != PROGRESS_FORMAT:
            return cls()
        completed = tuple(s for s in raw.get("completed", []) if s in STEPS)
        variant = raw.get("variant")
        return cls(completed, variant if isinstance(variant, str) else None)

    def to_saved(self) -> dict[str, Any]:
        return {
            "format": PROGRESS_FORMAT,
            "completed": list(self.completed),
            "variant": self.variant,
        }

    def first_unfinished(self) -> str:
        return next((s for s in STEPS if s not in self.completed), "done")

    def with_step(self, step: str, variant: str | None = None) -> WizardProgress:
        done = tuple(s for s in STEPS if s in self.completed or s == step)
        return WizardProgress(done, variant if variant is not None else self.variant)


def needs_wizard(saved: Settings | Mapping[str, Any]) -> bool:
    """Whether to show the wizard at start-up: setup never finished on this machine."""
    data = saved.saved if isinstance(saved, Settings) else saved
    return data.get(COMPLETE_KEY) is not True


def _heading(text: str) -> QLabel:
    label = QLabel(text)
    label.setObjectName("wizardHeading")
    font = label.font()
    font.setPointSizeF(font.pointSizeF() * 1.5)
    font.setBold(True)
    label.setFont(font)
    label.setWordWrap(True)
    return label


def _text(text: str, name: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.RichText)
    label.setOpenExternalLinks(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
    if name:
        label.setObjectName(name)
    return label


# --- pages -------------------------------------------------------------------------------


class WizardPage(QWidget):
    """One step. ``complete`` says whether Next is allowed; the wizard calls
    :meth:`enter` when the page is shown and :meth:`commit` on Next."""

    completeChanged = Signal()
    step = ""
    skippable = False

    def __init__(self, wizard: SetupWizard) -> None:
        super().__init__()
        self.wizard = wizard
        self.setObjectName(f"page-{self.step}")
        self.layout_ = QVBoxLayout(self)
        self.layout_.setContentsMargins(24, 20, 24, 20)
        self.layout_.setSpacing(12)
        self.layout_.addWidget(_heading(STEP_TITLES[self.step]))
        self._complete = True

    @property
    def complete(self) -> bool:
        return self._complete

    def set_complete(self, value: bool) -> None:
        if value != self._complete:
            self._complete = value
            self.completeChanged.emit()

    async def enter(self) -> None:
        """The page is shown (again)."""

    async def commit(self) -> bool:
        """Next was pressed: save what the page decided; ``False`` stays here."""
        return True

    def leave(self) -> None:
        """The wizard closes or moves away: stop what the page runs."""


class WelcomePage(WizardPage):
    step = "welcome"

    def __init__(self, wizard: SetupWizard) -> None:
        super().__init__(wizard)
        self.layout_.addWidget(
            _text(
                f"<p>{APP_NAME} runs Google's Gemma models on this computer through vLLM: "
                "your conversations never leave it.</p>"
                "<p>This short setup checks what your hardware can run, lets you add a "
                "Hugging Face token for the gated Gemma 4 models, downloads the model you "
                "choose and starts it. You can leave at any time: the next start continues "
                "where you stopped.</p>"
            )
        )
        self.layout_.addStretch(1)


class HardwarePage(WizardPage):
    """The live probe (the main window's :class:`ProbePanel`) and what it means for setup."""

    step = "hardware"

    def __init__(self, wizard: SetupWizard) -> None:
        super().__init__(wizard)
        from gemma_desktop.ui.panels.probe_panel import ProbePanel

        self.summary = _text("", "probeSummary")
        self.panel = ProbePanel(wizard.state, show_title=False)
        self.panel.report_changed.connect(self._on_report)
        self.layout_.addWidget(self.summary)
        self.layout_.addWidget(self.panel, 1)
        self._complete = False

    async def enter(self) -> None:
        report = self.wizard.state.report
        if report is None:
            await self.run_probe()
        else:
            self._on_report(report)

    async def run_probe(self) -> None:
        self.set_complete(False)
        await self.panel.rerun()

    def _on_report(self, report: ProbeReport) -> None:
        chosen = startup_variant(self.wizard.settings, report)
        if chosen != report.variant and report.variant in self.wizard.catalog:
            label = self.wizard.catalog.get(chosen).label
            self.summary.setText(
                f"{self.wizard.catalog.get(report.variant).label} cannot run on this machine, "
                f"but <b>{label}</b> can: it is preselected in the next steps."
            )
        elif report.outcome.value == "ready":
            self.summary.setText("This machine is ready. Warnings below are worth a look.")
        else:
            self.summary.setText("Follow the hints below, or choose another model later.")
        self.set_complete(True)


class TokenPage(WizardPage):
    """Optional: a Hugging Face token for the gated Gemma 4 models.

    The main window's :class:`TokenPanel`: the token goes to the OS keyring,
    or where no keyring works, to this session only or Hugging Face's
    plaintext token file, as the user chooses. Never to the settings.
    """

    step = "token"
    skippable = True

    def __init__(self, wizard: SetupWizard) -> None:
        super().__init__(wizard)
        from gemma_desktop.ui.panels.token_panel import TokenPanel

        self.layout_.addWidget(
            _text(
                "Only the gated Gemma 4 downloads need a token. The bundled Gemma 3 270M "
                "needs none: <b>Skip</b> this step if that is all you want; you can add a "
                "token later in the main window.",
                "tokenWhy",
            )
        )
        self.panel = TokenPanel(
            wizard.token_store, validator=wizard.token_validator, show_title=False
        )
        self.panel.token_changed.connect(self._on_token_changed)
        self.layout_.addWidget(self.panel, 1)
        self._complete = False

    async def enter(self) -> None:
        location = await self.panel.refresh()
        self.set_complete(location.present)

    def _on_token_changed(self) -> None:
        location = self.panel.location
        self.set_complete(location is not None and location.present)


class VariantPage(WizardPage):
    """The main window's :class:`VariantPicker`: every model with its fit verdict.

    Or, with "Use a remote vLLM server instead", the Connections page's remote
    form: connect, pick one of the server's models; Next saves ``engine=remote``
    with the server and model, and the download step is skipped.
    """

    step = "variant"

    def __init__(self, wizard: SetupWizard) -> None:
        super().__init__(wizard)
        from gemma_desktop.ui.panels.connections_panel import ConnectionsPanel

        self.intro = _text(
            "Pick the model to run. The verdicts come from the hardware check; a model "
            "that does not fit here cannot be chosen.",
            "variantIntro",
        )
        self.layout_.addWidget(self.intro)
        self.remote_toggle = QCheckBox("Use a remote vLLM server instead")
        self.remote_toggle.setObjectName("useRemote")
        self.remote_toggle.setToolTip(
            "A GPU server or cluster that runs vllm serve; nothing is downloaded here."
        )
        self.layout_.addWidget(self.remote_toggle)
        self.remote = ConnectionsPanel(
            wizard.host, wizard.state, session_keys=wizard.session_keys, remote_only=True
        )
        self.remote.setObjectName("wizardRemote")
        self.remote.hide()
        self.layout_.addWidget(self.remote, 1)
        self.picker: Any = None
        self._complete = False
        self.remote_toggle.setChecked(wizard.settings.saved.get("engine") == "remote")
        self.remote_toggle.toggled.connect(lambda _checked: self._update())
        self.remote.remote_model_changed.connect(lambda _text: self._update())

    @property
    def uses_remote(self) -> bool:
        return self.remote_toggle.isChecked()

    @property
    def selected(self) -> str | None:
        if self.picker is None:
            return None
        return cast("str | None", self.picker.current_id())

    def select(self, variant_id: str) -> None:
        if self.picker is not None:
            self.picker.select(variant_id)

    async def enter(self) -> None:
        from gemma_desktop.ui.panels.variant_picker import VariantPicker

        report = await self.wizard.state.report_ready()
        preferred = self.wizard.progress.variant or startup_variant(self.wizard.settings, report)
        if self.picker is None:
            # The wizard's Next saves the choice; the Download step follows.
            self.picker = VariantPicker(
                self.wizard.catalog, self.wizard.state, selected=preferred, choosing=False
            )
            self.picker.tree.currentItemChanged.connect(lambda *_: self._update())
            self.layout_.addWidget(self.picker, 1)
        else:
            self.picker.populate()  # the report it follows is this one; "Downloaded" may not be
        self.picker.select(preferred)
        if not self._fits(preferred):
            self.picker.select(BUNDLED_MODEL_ID)
        self._update()

    def _fits(self, variant_id: str) -> bool:
        report = self.wizard.state.report
        if report is None or variant_id not in self.wizard.catalog:
            return False
        return report.fit(self.wizard.catalog.get(variant_id)).kind is not FitKind.DOES_NOT_FIT

    def _update(self) -> None:
        remote = self.uses_remote
        self.remote.setVisible(remote)
        if self.picker is not None:
            self.picker.setVisible(not remote)
        self.intro.setVisible(not remote)
        if remote:
            self.set_complete(bool(self.remote.remote_model()))
            return
        variant_id = self.selected
        self.set_complete(variant_id is not None and self._fits(variant_id))

    async def commit(self) -> bool:
        if self.uses_remote:
            return await self._commit_remote()
        variant_id = self.selected
        if variant_id is None or not self._fits(variant_id):
            return False
        # The choice and the step are written together, atomically.
        await self.wizard.record("variant", variant_id, model_id=variant_id, engine=None)
        return True

    async def _commit_remote(self) -> bool:
        try:
            changes = await self.remote.remote_changes()
        except GemmaDesktopError as exc:
            self.remote.show_remote_error(exc)
            return False
        if changes is None or not changes.get("remote_model"):
            return False
        # Nothing to download: the server has the model. Both steps, the engine
        # choice and the server are written together, atomically.
        await self.wizard.record("variant", None, also=("download",), **changes)
        self.remote.forget_typed_key()
        return True


class DownloadPage(WizardPage):
    """Downloads the chosen model, or prepares the bundled one; skipped when present."""

    step = "download"

    def __init__(self, wizard: SetupWizard) -> None:
        super().__init__(wizard)
        self.status = _text("", "downloadStatus")
        self.layout_.addWidget(self.status)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.hide()
        self.layout_.addWidget(self.bar)
        self.panel_holder = QVBoxLayout()
        self.layout_.addLayout(self.panel_holder)
        self.retry_button = QPushButton("Try again")
        self.retry_button.hide()
        self.retry_button.clicked.connect(lambda: spawn(self.enter(), "A setup step"))
        self.layout_.addWidget(self.retry_button)
        self.layout_.addStretch(1)
        self.panel: Any = None
        self._complete = False
        self._task: asyncio.Future[Any] | None = None

    async def enter(self) -> None:
        variant = self.wizard.catalog.get(self.wizard.chosen_variant())
        self.retry_button.hide()
        if await run_blocking(self.wizard.is_downloaded, variant.id):
            self.status.setText(f"<b>{variant.label}</b> is already on this computer.")
            self.set_complete(True)
            return
        self.set_complete(False)
        if variant.is_bundled:
            await self._prepare_bundled(variant)
        else:
            self._download(variant)

    async def _prepare_bundled(self, variant: Variant) -> None:
        from gemma_desktop.core.models.bundled import ProvisionProgress

        self.status.setText(f"Preparing <b>{variant.label}</b> (about a minute, once)…")
        self.bar.show()

        def on_progress(step: ProvisionProgress) -> None:
            self.status.setText(f"Preparing <b>{variant.label}</b>: {step.message}")
            self.bar.setValue(int(step.fraction * 1000))

        try:
            await self.wizard.prepare_bundled(on_progress)
        except GemmaDesktopError as exc:
            self.status.setText(f"<b>{exc.reason}</b><br>{exc.hint}")
            self.retry_button.show()
            return
        self.bar.setValue(1000)
        self.status.setText(f"<b>{variant.label}</b> is ready.")
        self.set_complete(True)

    def _download(self, variant: Variant) -> None:
        from gemma_desktop.ui.panels.download_panel import DownloadPanel

        self.status.setText(
            f"Downloading <b>{variant.label}</b> into the Hugging Face cache. You can cancel "
            "and continue later: finished files are kept."
        )
        if self.panel is None:
            self.panel = DownloadPanel(self.wizard.download_manager, variant.id)
            self.panel.finished.connect(self._on_finished)
            self.panel_holder.addWidget(self.panel)
        elif self.panel.variant_id != variant.id:
            self.panel.set_variant(variant.id)
        self.panel.start()

    def _on_finished(self, ok: bool) -> None:
        self.set_complete(ok)
        if ok:
            self.status.setText("Download complete and verified.")

    def leave(self) -> None:
        if self.panel is not None and self.panel.is_running:
            self.panel.shutdown()


class EnginePage(WizardPage):
    """Starts the engine with the chosen model, with its start-up progress."""

    step = "engine"

    def __init__(self, wizard: SetupWizard) -> None:
        super().__init__(wizard)
        self.status = _text("", "engineStatus")
        self.hint = _text("", "engineHint")
        self.bar = QProgressBar()
        self.bar.setRange(0, 0)
        self.retry_button = QPushButton("Try again")
        self.retry_button.hide()
        self.retry_button.clicked.connect(lambda: spawn(self.start(), "Starting the engine"))
        for widget in (self.status, self.bar, self.hint, self.retry_button):
            self.layout_.addWidget(widget)
        self.layout_.addStretch(1)
        self._complete = False
        wizard.host.progress.connect(self._on_progress)
        wizard.host.status_changed.connect(self._on_status)

    async def enter(self) -> None:
        await self.start()

    async def start(self) -> None:
        host = self.wizard.host
        variant_id = self.wizard.chosen_variant()
        self.retry_button.hide()
        self.hint.setText("")
        self.bar.setRange(0, 0)
        self.bar.show()
        if self.wizard.uses_remote:
            await self._start_remote()
            return
        self.status.setText(f"Starting the engine with {variant_id}…")
        if host.is_running and host.variant_id == variant_id and not self._is_remote(host):
            self._on_status(host.status)
            return
        if self._is_remote(host):
            await host.switch(variant_id)  # the saved choice is this computer again
            self._on_status(host.status)
            return
        if host.engine is not None and host.variant_id != variant_id:
            await host.switch(variant_id)
        else:
            host.set_variant(variant_id)
            await host.start()
        self._on_status(host.status)

    @staticmethod
    def _is_remote(host: EngineHost) -> bool:
        from gemma_desktop.core.engine.remote import RemoteEngine

        return isinstance(host.engine, RemoteEngine)

    async def _start_remote(self) -> None:
        """The host's engine factory reads the saved ``engine=remote`` and builds a
        RemoteEngine; a running engine (of either kind) is restarted with it."""
        host = self.wizard.host
        self.status.setText("Connecting to the remote vLLM server…")
        if host.engine is not None or host.status.state is EngineState.STARTING:
            await host.switch(host.variant_id)
        else:
            await host.start()
        self._on_status(host.status)

    def _on_progress(self, step: StartProgress) -> None:
        if not self.isVisible():
            return
        self.status.setText(f"Starting the engine: {step.message}")
        if step.fraction is not None:
            self.bar.setRange(0, 1000)
            self.bar.setValue(int(step.fraction * 1000))

    def _on_status(self, status: EngineStatus) -> None:
        if status.state in (EngineState.READY, EngineState.GENERATING):
            self.bar.setRange(0, 1000)
            self.bar.setValue(1000)
            self.status.setText(f"The engine is ready with <b>{status.model_id}</b>.")
            self.set_complete(True)
        elif status.state is EngineState.CRASHED:
            self.bar.hide()
            self.status.setText(f"<b>The engine did not start:</b> {status.detail}")
            self.hint.setText(status.hint + " You can also go back and choose another model.")
            self.retry_button.show()
            self.set_complete(False)
        elif status.state is EngineState.STARTING and status.detail and self.isVisible():
            self.status.setText(f"Starting the engine: {status.detail}")


class DonePage(WizardPage):
    step = "done"

    def __init__(self, wizard: SetupWizard) -> None:
        super().__init__(wizard)
        self.summary = _text("", "doneSummary")
        self.layout_.addWidget(self.summary)
        self.layout_.addStretch(1)

    async def enter(self) -> None:
        self.summary.setText(
            f"<p>{APP_NAME} is set up with <b>{self.wizard.chosen_label()}</b>.</p>"
            "<p>Press <b>Start chatting</b> to open the chat. Closing the window keeps the "
            "engine running in the tray, so the next chat starts at once; quit from the "
            "tray menu to stop it. You can run this setup again from the Help menu.</p>"
        )


# --- the wizard ----------------------------------------------------------------------------


class SetupWizard(QWidget):
    """The setup window. Build it with the app's services, :meth:`show` it and
    ``await wizard.run()`` (or connect :attr:`finished`)."""

    finished = Signal(bool)
    step_changed = Signal(str)

    def __init__(
        self,
        *,
        host: EngineHost,
        state: AppState,
        token_store: TokenStore,
        download_manager: DownloadManager,
        catalog: VariantCatalog,
        session_keys: dict[str, str],
        token_validator: Validator = validate_token,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"{APP_NAME} setup")
        self.setObjectName("setupWizard")
        self.host = host
        self.state = state
        self.token_store = token_store
        self.token_validator = token_validator
        self.download_manager = download_manager
        self.catalog = catalog
        self.progress = WizardProgress.from_saved(self.settings.saved)
        #: Remote API keys kept for this session only (shared with the engine assembly).
        self.session_keys = session_keys
        self._done = False
        self._busy = False

        self.steps = QListWidget()
        self.steps.setObjectName("wizardSteps")
        self.steps.setFixedWidth(210)
        self.steps.setStyleSheet(
            "QListWidget#wizardSteps { border: none; padding: 20px 10px; }"
            "QListWidget#wizardSteps::item { padding: 7px 10px; border-radius: 6px; }"
            "QListWidget#wizardSteps::item:selected { background: palette(highlight);"
            " color: palette(highlighted-text); }"
        )
        self.steps.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.steps.setAccessibleName("Setup steps")
        self.stack = QStackedWidget()
        self.pages: dict[str, WizardPage] = {}
        for cls in (
            WelcomePage,
            HardwarePage,
            TokenPage,
            VariantPage,
            DownloadPage,
            EnginePage,
            DonePage,
        ):
            page = cls(self)
            self.pages[page.step] = page
            self.stack.addWidget(page)
            self.steps.addItem(QListWidgetItem(self._step_label(page.step, done=False)))
            page.completeChanged.connect(self._update_buttons)

        self.back_button = QPushButton("Back")
        self.skip_button = QPushButton("Skip")
        self.next_button = QPushButton("Next")
        self.next_button.setDefault(True)
        self.next_button.setObjectName("wizardNext")
        self.back_button.setObjectName("wizardBack")
        self.skip_button.setObjectName("wizardSkip")
        self.back_button.clicked.connect(lambda: spawn(self.go_back(), "Setup"))
        self.skip_button.clicked.connect(lambda: spawn(self.go_next(skip=True), "Setup"))
        self.next_button.clicked.connect(lambda: spawn(self.go_next(), "Setup"))
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.back_button)
        buttons.addWidget(self.skip_button)
        buttons.addWidget(self.next_button)
        right = QVBoxLayout()
        right.addWidget(self.stack, 1)
        right.addLayout(buttons)
        right.setContentsMargins(0, 0, 16, 16)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.steps)
        layout.addLayout(right, 1)
        self.resize(1040, 660)
        self.steps.setCurrentRow(0)
        self._update_buttons()

    # -- services --------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self.state.settings

    def is_downloaded(self, variant_id: str) -> bool:
        """Blocking: the model is on disk, complete (the bundled one prepared)."""
        return is_on_disk(variant_id, self.settings.hf_hub_cache.value)

    async def prepare_bundled(self, progress: Callable[[Any], None]) -> None:
        from gemma_desktop.core.models.bundled import provision_bundled_model_async

        await provision_bundled_model_async(progress)

    def chosen_variant(self) -> str:
        page = self.pages["variant"]
        assert isinstance(page, VariantPage)
        return page.selected or self.progress.variant or BUNDLED_MODEL_ID

    @property
    def uses_remote(self) -> bool:
        """The user chose a remote vLLM server on the model step."""
        page = self.pages["variant"]
        assert isinstance(page, VariantPage)
        return page.uses_remote

    def chosen_label(self) -> str:
        if self.uses_remote:
            page = self.pages["variant"]
            assert isinstance(page, VariantPage)
            return page.remote.remote_summary()
        variant_id = self.chosen_variant()
        return self.catalog.get(variant_id).label if variant_id in self.catalog else variant_id

    async def record(
        self,
        step: str,
        variant: str | None = None,
        *,
        also: tuple[str, ...] = (),
        **settings: Any,
    ) -> None:
        """Mark ``step`` (and the steps in ``also``) finished and save ``settings``,
        in one atomic write."""
        progress = self.progress.with_step(step, variant)
        for other in also:
            progress = progress.with_step(other)
        await self.state.update_settings(**{PROGRESS_KEY: progress.to_saved()}, **settings)
        self.progress = progress
        for done in (step, *also):
            self.steps.item(STEPS.index(done)).setText(self._step_label(done, done=True))

    def _neighbour(self, step: str, direction: int) -> str:
        """The next (``+1``) or previous (``-1``) step; no download for a remote server."""
        index = STEPS.index(step) + direction
        if STEPS[index] == "download" and self.uses_remote:
            index += direction
        return STEPS[index]

    @staticmethod
    def _step_label(step: str, *, done: bool) -> str:
        mark = "✔" if done else str(STEPS.index(step) + 1)
        return f"{mark}   {STEP_TITLES[step]}"

    # -- navigation -------------------------------------------------------------------

    @property
    def current_step(self) -> str:
        page = self.stack.currentWidget()
        assert isinstance(page, WizardPage)
        return page.step

    def page(self, step: str) -> WizardPage:
        return self.pages[step]

    async def run(self) -> bool:
        """Show the first unfinished step and wait until the wizard ends."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def on_finished(ok: bool) -> None:
            if not waiter.done():
                waiter.set_result(ok)

        self.finished.connect(on_finished)
        await self.start()
        return await waiter

    async def start(self) -> None:
        """Open at the first unfinished step (resume after quitting midway)."""
        for step in self.progress.completed:
            self.steps.item(STEPS.index(step)).setText(self._step_label(step, done=True))
        await self.show_step(self.progress.first_unfinished())

    async def show_step(self, step: str) -> None:
        log.info("setup: step %s", step)
        current = self.stack.currentWidget()
        if isinstance(current, WizardPage) and current.step != step:
            current.leave()
        page = self.pages[step]
        self.stack.setCurrentWidget(page)
        self.steps.setCurrentRow(STEPS.index(step))
        self._update_buttons()
        self.step_changed.emit(step)
        await page.enter()
        self._update_buttons()

    def _update_buttons(self) -> None:
        page = self.stack.currentWidget()
        if not isinstance(page, WizardPage):
            return
        index = STEPS.index(page.step)
        self.back_button.setEnabled(index > 0 and not self._busy and page.step != "done")
        self.skip_button.setVisible(page.skippable)
        self.next_button.setText("Start chatting" if page.step == "done" else "Next")
        self.next_button.setEnabled(page.complete and not self._busy)

    async def go_next(self, skip: bool = False) -> None:
        page = self.stack.currentWidget()
        assert isinstance(page, WizardPage)
        if self._busy or not (page.complete or skip):
            return
        self._busy = True
        self._update_buttons()
        try:
            if not skip and not await page.commit():
                return
            if page.step == "done":
                await self.state.update_settings(**{COMPLETE_KEY: True, PROGRESS_KEY: None})
                self._done = True
                self.finished.emit(True)
                self.close()
                return
            if page.step != "variant":  # the variant page records itself with its choice
                await self.record(page.step)
            next_step = self._neighbour(page.step, +1)
        except GemmaDesktopError as exc:
            log.warning("setup step %s failed: %s", page.step, exc.reason)
            return
        finally:
            self._busy = False
            self._update_buttons()
        await self.show_step(next_step)

    async def go_back(self) -> None:
        if STEPS.index(self.current_step) > 0 and not self._busy:
            await self.show_step(self._neighbour(self.current_step, -1))

    def closeEvent(self, event: QCloseEvent) -> None:
        for page in self.pages.values():
            page.leave()
        if not self._done:
            self._done = True
            self.finished.emit(False)
        super().closeEvent(event)
