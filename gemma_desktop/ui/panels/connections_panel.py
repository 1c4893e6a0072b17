"""The Connections page: which engine answers, and the opt-in local API.

* **Engine**: "This computer (vLLM)" or "Remote vLLM server". For a remote
  server the user enters its base URL and API key, presses Connect (the model
  list comes from ``/v1/models``) and picks a model. Apply saves the choice
  (``engine``, ``remote_base_url``, ``remote_model``; never the key, which goes
  to the keyring or, when no keyring works and the user agrees, stays in memory
  for this session) and restarts the engine through the host, after asking when
  one is running. The chat and history do not change.
* **Local API**: "Serve an OpenAI-compatible API on this computer" (saved as
  ``local_api_enabled``, off by default). The box tells the app's
  :class:`~gemma_desktop.ui.local_api_host.LocalApiHost`, which runs the
  endpoint while the local vLLM engine is ready; the page shows its address,
  token and where the token is kept.

The panel receives its services (engine host, the app's state, the local API
host); it builds none of them.

Signals:
    engine_choice_applied(str): ``"local"`` or ``"remote"`` after Apply saved it.
    remote_model_changed(str): the model picked in the remote form changed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from gemma_desktop.core.engine.local_api import LocalApiServer
from gemma_desktop.core.engine.protocol import EngineState
from gemma_desktop.core.engine.remote import (
    ApiKeyStore,
    RemoteTarget,
    fetch_models,
    normalize_base_url,
)
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.logs import REDACTOR
from gemma_desktop.core.secrets import KeyringUnavailableError
from gemma_desktop.ui import dialogs, theme
from gemma_desktop.ui.app_state import AppState
from gemma_desktop.ui.engine_host import RUNNING_STATES, EngineHost
from gemma_desktop.ui.local_api_host import LocalApiHost
from gemma_desktop.ui.tasks import spawn

log = logging.getLogger(__name__)

ENGINE_LOCAL = "local"
ENGINE_REMOTE = "remote"

#: An endpoint over a running engine, or ``None`` when that engine cannot be served
#: (only the in-process vLLM engine can).


def _error_text(exc: GemmaDesktopError) -> str:
    return f"{exc.reason}\n{exc.hint}" if exc.hint else exc.reason


class ConnectionsPanel(QWidget):
    """Engine choice (local or remote vLLM) and the opt-in local OpenAI-compatible API."""

    engine_choice_applied = Signal(str)
    remote_model_changed = Signal(str)

    def __init__(
        self,
        host: EngineHost,
        state: AppState,
        *,
        session_keys: dict[str, str] | None = None,
        local_api: LocalApiHost | None = None,
        ask: dialogs.AskFunction = dialogs.ask,
        remote_only: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        """``remote_only`` shows just the remote server form (the setup wizard's use):
        no engine choice, no Apply, no local API; :meth:`remote_changes` saves nothing
        by itself."""
        super().__init__(parent)
        self.remote_only = remote_only
        self.host = host
        self.state = state
        #: API keys kept for this session only (base URL -> key), read by the engine factory.
        self.session_keys = session_keys if session_keys is not None else {}
        self.local_api = local_api
        self._ask = ask
        saved = dict(state.settings.saved)

        # --- engine choice ---------------------------------------------------------------
        self.local_choice = QRadioButton("This computer (vLLM)")
        self.local_choice.setObjectName("engineLocal")
        self.remote_choice = QRadioButton("Remote vLLM server")
        self.remote_choice.setObjectName("engineRemote")
        self.choice_group = QButtonGroup(self)
        self.choice_group.addButton(self.local_choice)
        self.choice_group.addButton(self.remote_choice)

        self.url_field = QLineEdit()
        self.url_field.setObjectName("remoteUrl")
        self.url_field.setAccessibleName("Server address")
        self.url_field.setPlaceholderText("http://gpu-server:8000")
        self.key_field = QLineEdit()
        self.key_field.setObjectName("remoteKey")
        self.key_field.setAccessibleName("API key")
        self.key_field.setEchoMode(QLineEdit.EchoMode.Password)
        self.key_field.setPlaceholderText("Leave empty when the server has no --api-key")
        self.connect_button = QPushButton("Connect")
        self.connect_button.setObjectName("remoteConnect")
        self.model_combo = QComboBox()
        self.model_combo.setObjectName("remoteModel")
        self.model_combo.setAccessibleName("Remote model")
        self.remote_status = QLabel("")
        self.remote_status.setObjectName("remoteStatus")
        self.remote_status.setWordWrap(True)
        self.remote_status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.apply_button = QPushButton("Apply")
        self.apply_button.setObjectName("engineApply")

        remote_box = QWidget()
        remote_form = QFormLayout(remote_box)
        remote_form.setContentsMargins(24, 0, 0, 0)
        url_row = QHBoxLayout()
        url_row.addWidget(self.url_field, 1)
        url_row.addWidget(self.connect_button)
        remote_form.addRow("Server address", url_row)
        remote_form.addRow("API key", self.key_field)
        remote_form.addRow("Model", self.model_combo)
        remote_form.addRow(self.remote_status)
        self.remote_box = remote_box

        engine_card = self._card("Remote vLLM server" if remote_only else "Engine")
        self.engine_card = engine_card
        engine_layout = engine_card.layout()
        assert isinstance(engine_layout, QVBoxLayout)
        engine_layout.addWidget(self.local_choice)
        engine_layout.addWidget(self.remote_choice)
        engine_layout.addWidget(remote_box)
        apply_row = QHBoxLayout()
        apply_row.addStretch(1)
        apply_row.addWidget(self.apply_button)
        engine_layout.addLayout(apply_row)

        # --- local API ----------------------------------------------------------------------
        self.api_checkbox = QCheckBox("Serve an OpenAI-compatible API on this computer")
        self.api_checkbox.setObjectName("localApiEnabled")
        self.api_note = QLabel("")
        self.api_note.setObjectName("localApiNote")
        self.api_note.setWordWrap(True)
        self.api_note.setProperty("role", "muted")
        self.api_address = QLineEdit()
        self.api_address.setObjectName("localApiAddress")
        self.api_address.setAccessibleName("Local API address")
        self.api_address.setReadOnly(True)
        self.api_token = QLineEdit()
        self.api_token.setObjectName("localApiToken")
        self.api_token.setAccessibleName("Local API token")
        self.api_token.setReadOnly(True)
        self.api_token.setEchoMode(QLineEdit.EchoMode.Password)
        self.show_token_button = QPushButton(theme.icon("eye"), "")
        self.show_token_button.setObjectName("localApiShowToken")
        self.show_token_button.setAccessibleName("Show token")
        self.show_token_button.setToolTip("Show or hide the token")
        self.show_token_button.setCheckable(True)
        self.copy_token_button = QPushButton(theme.icon("copy"), "")
        self.copy_token_button.setObjectName("localApiCopyToken")
        self.copy_token_button.setAccessibleName("Copy token")
        self.copy_token_button.setToolTip("Copy the token to the clipboard")
        self.api_storage = QLabel("")
        self.api_storage.setObjectName("localApiStorage")
        self.api_storage.setProperty("role", "muted")
        self.api_error = QLabel("")
        self.api_error.setObjectName("localApiError")
        self.api_error.setWordWrap(True)
        self.api_error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        api_card = self._card("Local API")
        self.api_card = api_card
        api_layout = api_card.layout()
        assert isinstance(api_layout, QVBoxLayout)
        api_layout.addWidget(self.api_checkbox)
        api_layout.addWidget(self.api_note)
        api_form = QFormLayout()
        api_form.addRow("Address", self.api_address)
        token_row = QHBoxLayout()
        token_row.addWidget(self.api_token, 1)
        token_row.addWidget(self.show_token_button)
        token_row.addWidget(self.copy_token_button)
        api_form.addRow("Token", token_row)
        api_form.addRow("Stored in", self.api_storage)
        api_layout.addLayout(api_form)
        api_layout.addWidget(self.api_error)

        content = QWidget()
        layout = QVBoxLayout(content)
        layout.setContentsMargins(16, 16, 16, 16)
        layout.setSpacing(12)
        layout.addWidget(engine_card)
        layout.addWidget(api_card)
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

        # --- saved values and wiring -------------------------------------------------------
        target = self._saved_target(saved)
        if target is not None:
            self.url_field.setText(target.base_url)
            if target.model:
                self.model_combo.addItem(target.model)
        remote = saved.get("engine") == ENGINE_REMOTE or remote_only
        (self.remote_choice if remote else self.local_choice).setChecked(True)
        if remote_only:
            for widget in (self.local_choice, self.remote_choice, self.apply_button, api_card):
                widget.hide()
            remote_form.setContentsMargins(0, 0, 0, 0)
        self.api_checkbox.setChecked(saved.get("local_api_enabled") is True)

        self.remote_choice.toggled.connect(self._update_remote_enabled)
        self.connect_button.clicked.connect(
            lambda: spawn(self.connect_remote(), "The Connections page")
        )
        self.url_field.returnPressed.connect(
            lambda: spawn(self.connect_remote(), "The Connections page")
        )
        self.apply_button.clicked.connect(lambda: spawn(self.apply(), "The Connections page"))
        self.api_checkbox.toggled.connect(self._on_api_toggled)
        self.show_token_button.toggled.connect(self._show_token)
        self.copy_token_button.clicked.connect(self.copy_token)
        self.model_combo.currentTextChanged.connect(self.remote_model_changed.emit)
        if local_api is not None:
            local_api.changed.connect(self._update_api_controls)
            local_api.failed.connect(self.api_error.setText)
        self._update_remote_enabled()
        self._update_api_controls()

    # --- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _card(title: str) -> QFrame:
        card = QFrame()
        card.setProperty("role", "card")
        layout = QVBoxLayout(card)
        heading = QLabel(f"<b>{title}</b>")
        layout.addWidget(heading)
        return card

    @staticmethod
    def _saved_target(saved: dict[str, Any]) -> RemoteTarget | None:
        try:
            return RemoteTarget.from_saved(saved)
        except GemmaDesktopError:
            return None

    def _update_remote_enabled(self) -> None:
        self.remote_box.setEnabled(self.remote_choice.isChecked())

    def _set_remote_status(self, text: str, *, error: bool = False) -> None:
        self.remote_status.setText(text)
        self.remote_status.setProperty("role", "error" if error else "muted")
        self.remote_status.style().unpolish(self.remote_status)
        self.remote_status.style().polish(self.remote_status)

    def remote_model(self) -> str:
        """The model picked in the remote form (empty before Connect)."""
        return self.model_combo.currentText().strip()

    def remote_summary(self) -> str:
        """ "<model> on <server>", for the setup wizard's summary."""
        return f"{self.remote_model()} on {self.url_field.text().strip()}"

    def show_remote_error(self, exc: GemmaDesktopError) -> None:
        self._set_remote_status(_error_text(exc), error=True)

    def forget_typed_key(self) -> None:
        """Clear the key field once the key is stored (it never lingers on screen)."""
        self.key_field.clear()

    @property
    def chosen_engine(self) -> str:
        return ENGINE_REMOTE if self.remote_choice.isChecked() else ENGINE_LOCAL

    # --- remote server -----------------------------------------------------------------------

    async def _api_key(self, base_url: str) -> str | None:
        """The key typed in the field, else this session's, else the keyring's."""
        typed = self.key_field.text().strip()
        if typed:
            REDACTOR.add_secret(typed)  # from here on it may reach a log line or a crash report
            return typed
        if base_url in self.session_keys:
            return self.session_keys[base_url]
        store = ApiKeyStore(base_url)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, store.get)
        except KeyringUnavailableError:
            return None

    async def connect_remote(self) -> bool:
        """List the server's models into the model combo; ``True`` on success."""
        self.connect_button.setEnabled(False)
        self._set_remote_status("Connecting…")
        try:
            base_url = normalize_base_url(self.url_field.text())
            key = await self._api_key(base_url)
            models = await fetch_models(base_url, key)
        except GemmaDesktopError as exc:
            self._set_remote_status(_error_text(exc), error=True)
            return False
        finally:
            self.connect_button.setEnabled(True)
        current = self.model_combo.currentText()
        self.model_combo.clear()
        for model in models:
            self.model_combo.addItem(model.id)
        index = self.model_combo.findText(current)
        if index >= 0:
            self.model_combo.setCurrentIndex(index)
        count = len(models)
        self._set_remote_status(
            f"Connected to {base_url}: {count} model{'s' if count != 1 else ''}."
            if count
            else f"{base_url} serves no model."
        )
        return True

    async def _store_key(self, base_url: str, key: str) -> bool:
        """Save ``key`` for ``base_url``; ``False`` when the user cancelled."""
        store = ApiKeyStore(base_url)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, store.save, key)
        except KeyringUnavailableError as exc:
            keep = await self._ask(
                self,
                "No keyring",
                "The API key cannot be saved in the system keyring.",
                informative=f"{exc.reason} {exc.hint}".strip()
                + " The key can be kept for this session only; you will enter it again "
                "after restarting the app.",
                yes_text="Keep for this session",
                no_text="Cancel",
            )
            if not keep:
                return False
            self.session_keys[base_url] = key
            return True
        self.session_keys.pop(base_url, None)
        return True

    async def apply(self) -> bool:
        """Save the engine choice and restart the engine with it; ``True`` when applied."""
        self.apply_button.setEnabled(False)
        try:
            return await self._apply()
        except GemmaDesktopError as exc:
            self._set_remote_status(_error_text(exc), error=True)
            return False
        finally:
            self.apply_button.setEnabled(True)

    async def remote_changes(self) -> dict[str, Any] | None:
        """The settings that choose the server and model in the form, its typed key
        stored (keyring, or this session when the user agrees); ``None`` when the user
        cancelled. Raises :class:`GemmaDesktopError` for an address that is not one."""
        base_url = normalize_base_url(self.url_field.text())
        model = self.model_combo.currentText().strip() or None
        changes: dict[str, Any] = {
            "engine": ENGINE_REMOTE,
            **RemoteTarget(base_url, model).to_saved(),
        }
        key = self.key_field.text().strip()
        if key and not await self._store_key(base_url, key):
            return None
        return changes

    async def _apply(self) -> bool:
        choice = self.chosen_engine
        changes: dict[str, Any] = {"engine": choice}
        if choice == ENGINE_REMOTE:
            remote = await self.remote_changes()
            if remote is None:
                return False
            changes = remote
        if not await self._confirm_restart(choice):
            return False
        await self.state.update_settings(**changes)
        self.key_field.clear()
        self.engine_choice_applied.emit(choice)
        if choice == ENGINE_REMOTE:
            self._set_remote_status("Saved: the remote server answers from the next start.")
        host = self.host
        if host.engine is not None or host.status.state == EngineState.STARTING:
            if host.is_running or host.status.state == EngineState.STARTING:
                await host.switch(host.variant_id)
            else:
                await host.stop()
        return True

    async def _confirm_restart(self, choice: str) -> bool:
        state = self.host.status.state
        if state not in RUNNING_STATES and state != EngineState.STARTING:
            return True
        where = "the remote vLLM server" if choice == ENGINE_REMOTE else "this computer"
        return await self._ask(
            self,
            "Switch engine",
            f"Restart the engine on {where}?",
            informative="The running engine stops"
            + (
                " and the answer being written is cut off."
                if state == EngineState.GENERATING
                else "."
            )
            + " The chat and its history stay as they are.",
            yes_text="Restart the engine",
            no_text="Keep the current engine",
        )

    # --- local API ---------------------------------------------------------------------------

    @property
    def server(self) -> LocalApiServer | None:
        """The running local API server (the host's), if any."""
        return self.local_api.server if self.local_api is not None else None

    @property
    def local_api_available(self) -> bool:
        return self.local_api is not None and self.local_api.local_engine() is not None

    def _update_api_controls(self) -> None:
        api = self.local_api
        available = self.local_api_available
        self.api_checkbox.setEnabled(available or self.api_checkbox.isChecked())
        running = api is not None and api.running
        engine = self.host.engine
        if api is None:
            note = "The local API is not available in this installation (it needs vLLM)."
            self.api_checkbox.setEnabled(False)
        elif engine is not None and not api.can_serve(engine):
            note = "Available only with the engine on this computer, not with a remote server."
            self.api_checkbox.setEnabled(self.api_checkbox.isChecked())
        elif running:
            note = "Editors and scripts on this computer can use the model (127.0.0.1 only)."
        elif not available:
            note = "Available while the engine on this computer runs: start it first." + (
                " The API starts with it." if self.api_checkbox.isChecked() else ""
            )
        else:
            note = "Off. Tick the box to let editors and scripts on this computer use the model."
        self.api_note.setText(note)
        server = self.server if running else None
        token = server.token if server is not None else None
        self.api_address.setText((server.address or "") if server is not None else "")
        self.api_token.setText(token.value if token is not None else "")
        self.api_storage.setText(token.describe() if token is not None else "")
        self.show_token_button.setEnabled(token is not None)
        self.copy_token_button.setEnabled(token is not None)

    def _on_api_toggled(self, checked: bool) -> None:
        if self.local_api is not None:
            spawn(self.local_api.set_enabled(checked), "The local API switch")
        self._update_api_controls()

    def _show_token(self, shown: bool) -> None:
        self.api_token.setEchoMode(
            QLineEdit.EchoMode.Normal if shown else QLineEdit.EchoMode.Password
        )
        self.show_token_button.setIcon(theme.icon("eye-off" if shown else "eye"))

    def copy_token(self) -> None:
        server = self.server
        token = server.token if server is not None else None
        if token is not None:
            QGuiApplication.clipboard().setText(token.value)
