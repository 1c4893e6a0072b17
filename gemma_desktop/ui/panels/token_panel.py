"""The Hugging Face token: enter, verify, save in the OS keyring, replace, remove.

Every keyring, file and network call runs in the loop's executor. Where no
keyring works, the panel says so and lets the user choose between keeping
the token for this session only and writing Hugging Face's own token file
(plaintext). It never falls back to plaintext on its own.

The token's value is never logged, written to the settings or shown in
full; the field is masked unless the user presses Show.

Signals:
    token_changed(): the active token (or its source) changed.
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Callable
from typing import TypeVar

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.logs import looks_like_token
from gemma_desktop.core.secrets import (
    KEYRING_SERVICE,
    KEYRING_USER,
    KeyringUnavailableError,
    TokenLocation,
    TokenStore,
    TokenUnverifiedError,
    TokenValidationError,
    validate_token,
)
from gemma_desktop.ui import theme
from gemma_desktop.ui.tasks import spawn

log = logging.getLogger(__name__)
T = TypeVar("T")

Validator = Callable[[str], str]
SecretSink = Callable[[str], None]


class TokenPanel(QWidget):
    """Masked token field with Show/Hide, Verify, Save, Remove and the active source."""

    token_changed = Signal()

    def __init__(
        self,
        store: TokenStore,
        *,
        validator: Validator = validate_token,
        on_secret: SecretSink | None = None,
        show_title: bool = True,
        parent: QWidget | None = None,
    ) -> None:
        """``show_title=False`` leaves out the page title and margins (the wizard has its own)."""
        super().__init__(parent)
        self._store = store
        self._validator = validator
        self._on_secret = on_secret
        self.location: TokenLocation | None = None
        self._busy = 0

        title = QLabel("Hugging Face token")
        title.setProperty("role", "title")
        intro = QLabel(
            "Gemma 4 models are gated on Hugging Face: accept the license on the model's "
            "page, then paste a token with read access from "
            '<a href="https://huggingface.co/settings/tokens">huggingface.co/settings/tokens</a>. '
            f"It is stored in your OS keyring (service “{KEYRING_SERVICE}”, "
            f"user “{KEYRING_USER}”), never in the app's settings or logs."
        )
        intro.setWordWrap(True)
        intro.setOpenExternalLinks(True)
        intro.setProperty("role", "muted")

        self.source_label = QLabel("Looking for a saved token…")
        self.source_label.setObjectName("tokenSource")
        self.source_label.setAccessibleName("Active token source")
        self.source_label.setWordWrap(True)

        self.field = QLineEdit()
        self.field.setObjectName("tokenField")
        self.field.setEchoMode(QLineEdit.EchoMode.Password)
        self.field.setPlaceholderText("hf_…")
        self.field.setAccessibleName("Hugging Face token")
        self.field.setClearButtonEnabled(True)
        self.show_button = QPushButton(theme.icon("eye"), "Show")
        self.show_button.setCheckable(True)
        self.show_button.setAccessibleName("Show token")
        self.show_button.toggled.connect(self._toggle_visible)

        self.verify_button = QPushButton("Verify")
        self.verify_button.setAccessibleName("Verify token")
        self.save_button = QPushButton(theme.icon("key"), "Save")
        self.save_button.setProperty("role", "primary")
        self.save_button.setAccessibleName("Save token")
        self.remove_button = QPushButton("Remove")
        self.remove_button.setAccessibleName("Remove saved token")
        self.remove_button.setEnabled(False)

        self.result_label = QLabel("")
        self.result_label.setObjectName("tokenResult")
        self.result_label.setAccessibleName("Token status")
        self.result_label.setWordWrap(True)

        # Shown only when no keyring works: the user's explicit choice.
        self.fallback_box = QFrame()
        self.fallback_box.setObjectName("keyringFallback")
        self.fallback_box.setProperty("role", "banner-skipped")
        self.fallback_label = QLabel("")
        self.fallback_label.setWordWrap(True)
        self.session_button = QPushButton("Keep for this session only")
        self.session_button.setAccessibleName("Keep token for this session only")
        self.file_button = QPushButton("Save to Hugging Face token file (plaintext)")
        self.file_button.setAccessibleName("Save token to Hugging Face token file, plaintext")
        fallback_buttons = QHBoxLayout()
        fallback_buttons.addWidget(self.session_button)
        fallback_buttons.addWidget(self.file_button)
        fallback_buttons.addStretch(1)
        fallback_layout = QVBoxLayout(self.fallback_box)
        fallback_layout.setContentsMargins(12, 10, 12, 10)
        fallback_layout.addWidget(self.fallback_label)
        fallback_layout.addLayout(fallback_buttons)
        self.fallback_box.setVisible(False)

        row = QHBoxLayout()
        row.addWidget(self.field, 1)
        row.addWidget(self.show_button)
        row.addWidget(self.verify_button)
        row.addWidget(self.save_button)
        row.addWidget(self.remove_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12) if show_title else layout.setContentsMargins(
            0, 0, 0, 0
        )
        layout.setSpacing(10)
        if show_title:
            layout.addWidget(title)
        layout.addWidget(intro)
        layout.addWidget(self.source_label)
        layout.addLayout(row)
        layout.addWidget(self.result_label)
        layout.addWidget(self.fallback_box)
        layout.addStretch(1)

        self.verify_button.clicked.connect(lambda: spawn(self.verify(), "The token page"))
        self.save_button.clicked.connect(lambda: spawn(self.save(), "The token page"))
        self.field.returnPressed.connect(lambda: spawn(self.save(), "The token page"))
        self.remove_button.clicked.connect(lambda: spawn(self.remove(), "The token page"))
        self.session_button.clicked.connect(
            lambda: spawn(self.keep_for_session(), "The token page")
        )
        self.file_button.clicked.connect(lambda: spawn(self.save_to_file(), "The token page"))
        self.field.textChanged.connect(self._on_text_changed)
        self._update_buttons()

    # --- helpers -----------------------------------------------------------------

    async def _blocking(self, func: Callable[..., T], *args: object) -> T:
        self._busy += 1
        self._update_buttons()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, func, *args)
        finally:
            self._busy -= 1
            self._update_buttons()

    def _entered(self) -> str:
        return self.field.text().strip()

    def _on_text_changed(self, _text: str) -> None:
        self.fallback_box.setVisible(False)
        self._update_buttons()

    def _update_buttons(self) -> None:
        has_text = bool(self._entered())
        idle = self._busy == 0
        self.verify_button.setEnabled(idle and has_text)
        self.save_button.setEnabled(idle and has_text)
        removable = self.location is not None and self.location.source in (
            "keyring",
            "file",
            "session",
        )
        self.remove_button.setEnabled(idle and removable)
        self.session_button.setEnabled(idle)
        self.file_button.setEnabled(idle)

    def _show_result(self, text: str, role: str = "muted") -> None:
        self.result_label.setText(text)
        self.result_label.setProperty("role", role)
        self.result_label.style().unpolish(self.result_label)
        self.result_label.style().polish(self.result_label)

    def _toggle_visible(self, visible: bool) -> None:
        self.field.setEchoMode(
            QLineEdit.EchoMode.Normal if visible else QLineEdit.EchoMode.Password
        )
        self.show_button.setIcon(theme.icon("eye-off" if visible else "eye"))
        self.show_button.setText("Hide" if visible else "Show")
        self.show_button.setAccessibleName("Hide token" if visible else "Show token")

    def _remember_secret(self, token: str) -> None:
        if self._on_secret is not None and token:
            self._on_secret(token)

    # --- actions ---------------------------------------------------------------------

    async def refresh(self) -> TokenLocation:
        """Find the active token and show its source."""
        location = await self._blocking(self._store.locate)
        self.location = location
        if location.token:
            self._remember_secret(location.token)
        self._show_location(location)
        self._update_buttons()
        return location

    def _show_location(self, location: TokenLocation) -> None:
        if location.source == "env":
            text = (
                "<b>Active token:</b> the HF_TOKEN environment variable. It overrides any "
                "saved token; unset it to use the one saved here."
            )
        elif location.source == "keyring":
            text = "<b>Active token:</b> saved in the OS keyring."
        elif location.source == "file":
            text = (
                "<b>Active token:</b> Hugging Face's token file (plaintext) at "
                f"{html.escape(str(self._store.token_file()))}."
            )
        elif location.source == "session":
            text = "<b>Active token:</b> kept for this session only (not saved)."
        else:
            text = "<b>No token yet.</b> Gated Gemma 4 downloads need one."
        if location.keyring_problem:
            text += (
                f"<br/><span>{html.escape(location.keyring_problem)} Tokens cannot be saved "
                "in the keyring on this system.</span>"
            )
        self.source_label.setText(text)

    async def verify(self) -> bool | None:
        """Check the entered token with the Hub: ``True`` valid, ``False`` rejected,
        ``None`` could not verify."""
        token = self._entered()
        if not token:
            return None
        self._remember_secret(token)
        if not looks_like_token(token):
            self._show_result(
                "This does not look like a Hugging Face token (they start with “hf_”).", "error"
            )
            return False
        self._show_result("Verifying with Hugging Face…")
        try:
            user = await self._blocking(self._validator, token)
        except TokenValidationError as exc:
            self._show_result(f"{exc.reason} {exc.hint}", "error")
            return False
        except TokenUnverifiedError as exc:
            self._show_result(f"Could not verify: {exc.reason} {exc.hint}", "muted")
            return None
        self._show_result(f"Valid token for {html.escape(user)}.", "ok")
        return True

    async def save(self) -> bool:
        """Verify, then store the entered token in the keyring; ``True`` when saved."""
        token = self._entered()
        if not token:
            return False
        verdict = await self.verify()
        if verdict is False:
            return False
        note = self.result_label.text()
        try:
            await self._blocking(self._store.save, token)
        except KeyringUnavailableError as exc:
            self._offer_fallback(exc)
            return False
        except GemmaDesktopError as exc:
            self._show_result(f"{exc.reason} {exc.hint}", "error")
            return False
        self.field.clear()
        self._show_result(f"{note} Saved in the OS keyring.".strip(), "ok")
        await self.refresh()
        self.token_changed.emit()
        return True

    def _offer_fallback(self, exc: KeyringUnavailableError) -> None:
        self.fallback_label.setText(
            f"<b>The token was not saved.</b> {html.escape(exc.reason)}<br/>"
            "Choose where it should go: keep it in memory for this session only, or write "
            "Hugging Face's own token file, which stores it as <b>plaintext</b> at "
            f"{html.escape(str(self._store.token_file()))}."
        )
        self.fallback_box.setVisible(True)
        self._show_result("No OS keyring is available.", "error")

    async def keep_for_session(self) -> None:
        token = self._entered()
        if not token:
            return
        self._remember_secret(token)
        self._store.session_token = token
        self.field.clear()
        self.fallback_box.setVisible(False)
        self._show_result("Kept for this session only; it is forgotten when the app quits.")
        await self.refresh()
        self.token_changed.emit()

    async def save_to_file(self) -> None:
        token = self._entered()
        if not token:
            return
        self._remember_secret(token)
        try:
            path = await self._blocking(self._store.write_token_file, token)
        except OSError as exc:
            self._show_result(f"Could not write the token file: {exc.strerror}", "error")
            return
        self.field.clear()
        self.fallback_box.setVisible(False)
        self._show_result(f"Saved as plaintext in {html.escape(str(path))}.", "ok")
        await self.refresh()
        self.token_changed.emit()

    async def remove(self) -> None:
        """Remove the active saved token (keyring, token file or session)."""
        location = self.location
        if location is None or location.source not in ("keyring", "file", "session"):
            return
        try:
            if location.source == "keyring":
                await self._blocking(self._store.delete)
            elif location.source == "file":
                await self._blocking(self._store.delete_token_file)
            else:
                self._store.session_token = None
        except KeyringUnavailableError as exc:
            self._show_result(f"Could not remove the token: {exc.reason}", "error")
            return
        self._show_result(f"Removed the token from the {location.describe()}.")
        await self.refresh()
        self.token_changed.emit()
