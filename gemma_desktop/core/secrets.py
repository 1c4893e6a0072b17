"""The Hugging Face token: where it is, and keeping it in the OS keyring.

Order of precedence matches huggingface_hub's own: ``HF_TOKEN`` in the
environment, then (the app's addition) the OS keyring, then Hugging Face's
plaintext token file. The token's value is never logged or written to the
settings: every secret that passes through this module (and the other stores
built on :class:`KeyringEntry`) is handed to :data:`gemma_desktop.core.logs.REDACTOR`,
which scrubs it from every log.

Every method here may block (D-Bus, file system, network): call them off the
UI thread.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gemma_desktop.core import paths
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.fsutil import atomic_write
from gemma_desktop.core.logs import REDACTOR

#: The keyring entry: service ``gemma-desktop``, user ``huggingface``.
KEYRING_SERVICE = "gemma-desktop"
KEYRING_USER = "huggingface"

#: What to do when no keyring works (the token and API key panels offer both).
KEYRING_FALLBACK_HINT = (
    "Keep the token for this session only, or save it in Hugging Face's own token file (plaintext)."
)

TokenSource = Literal["env", "keyring", "file", "session"]


class KeyringUnavailableError(GemmaDesktopError):
    """No usable OS keyring: none installed, locked, or the unlock was dismissed."""


class TokenValidationError(GemmaDesktopError):
    """The Hub rejected the token (401)."""


class TokenUnverifiedError(GemmaDesktopError):
    """The Hub could not be reached, so the token could not be checked."""


@dataclass(frozen=True)
class TokenLocation:
    """The active token and its source; ``keyring_problem`` explains a failed keyring lookup."""

    source: TokenSource | None
    token: str | None
    keyring_problem: str | None = None

    @property
    def present(self) -> bool:
        return self.token is not None

    def describe(self) -> str:
        return {
            "env": "HF_TOKEN environment variable",
            "keyring": "OS keyring",
            "file": "Hugging Face token file (plaintext)",
            "session": "this session only (not saved)",
            None: "none",
        }[self.source]


class KeyringEntry:
    """One OS keyring entry (``service``, ``user``); every keyring error becomes
    :class:`KeyringUnavailableError` with the reason in plain words and ``hint``."""

    def __init__(self, service: str, user: str, hint: str = KEYRING_FALLBACK_HINT) -> None:
        self.service = service
        self.user = user
        self.hint = hint

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        import keyring.errors

        try:
            yield
        except keyring.errors.PasswordDeleteError:
            raise
        except keyring.errors.KeyringError as exc:
            raise KeyringUnavailableError(_keyring_problem(exc), self.hint) from exc

    def get(self) -> str | None:
        import keyring

        with self._errors():
            value = keyring.get_password(self.service, self.user)
        REDACTOR.add_secret(value)
        return value

    def set(self, value: str) -> None:
        import keyring

        REDACTOR.add_secret(value)
        with self._errors():
            keyring.set_password(self.service, self.user, value)

    def delete(self) -> bool:
        """Remove the entry; ``True`` if there was one."""
        import keyring
        import keyring.errors

        try:
            with self._errors():
                keyring.delete_password(self.service, self.user)
        except keyring.errors.PasswordDeleteError:
            return False
        return True


def _keyring_problem(exc: Exception) -> str:
    import keyring.errors

    if isinstance(exc, keyring.errors.NoKeyringError):
        return "No OS keyring is available (no Secret Service running)."
    if isinstance(exc, keyring.errors.InitError):
        return "The OS keyring is locked and could not be unlocked."
    return f"The OS keyring refused the request ({type(exc).__name__})."


class TokenStore:
    """The HF token in the OS keyring, plus read access to the other sources.

    ``session_token`` holds a token the user chose to keep for this session
    only (when no keyring works); it lives in memory and nowhere else.
    """

    def __init__(
        self,
        service: str = KEYRING_SERVICE,
        user: str = KEYRING_USER,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.service = service
        self.user = user
        self._env = env
        self.session_token: str | None = None
        self._entry = KeyringEntry(service, user)

    @property
    def env(self) -> Mapping[str, str]:
        return os.environ if self._env is None else self._env

    def keyring_get(self) -> str | None:
        """The token in the keyring; raises :class:`KeyringUnavailableError`."""
        return self._entry.get()

    def save(self, token: str) -> None:
        """Store ``token`` in the keyring; raises :class:`KeyringUnavailableError`."""
        token = token.strip()
        if not token:
            raise GemmaDesktopError("The token is empty.", "Paste a token from your HF settings.")
        self._entry.set(token)  # registers it with the redactor

    def delete(self) -> bool:
        """Remove the token from the keyring (and the session); ``True`` if one was there."""
        self.session_token = None
        entry = KeyringEntry(self.service, self.user, hint="")
        return entry.delete()

    def token_file(self) -> Path:
        return paths.hf_token_file(dict(self.env))

    def write_token_file(self, token: str) -> Path:
        """Write Hugging Face's plaintext token file (only when the user chose it)."""
        path = self.token_file()
        REDACTOR.add_secret(token.strip())
        atomic_write(path, token.strip(), mode=0o600)
        return path

    def delete_token_file(self) -> bool:
        path = self.token_file()
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def locate(self) -> TokenLocation:
        """The active token and its source: env, keyring, token file, session.

        Whatever it finds is handed to the logs' redactor first.
        """
        location = self._locate()
        REDACTOR.add_secret(location.token)
        return location

    def _locate(self) -> TokenLocation:
        env_token = (self.env.get("HF_TOKEN") or "").strip()
        if env_token:
            return TokenLocation("env", env_token)
        problem: str | None = None
        try:
            stored = self.keyring_get()
        except KeyringUnavailableError as exc:
            stored, problem = None, exc.reason
        if stored:
            return TokenLocation("keyring", stored)
        try:
            file_token = self.token_file().read_text(encoding="utf-8").strip()
        except OSError:
            file_token = ""
        if file_token:
            return TokenLocation("file", file_token, problem)
        if self.session_token:
            return TokenLocation("session", self.session_token, problem)
        return TokenLocation(None, None, problem)


def validate_token(token: str, endpoint: str | None = None) -> str:
    """Ask the Hub who owns ``token``; returns the user name.

    Raises :class:`TokenValidationError` for a rejected token and
    :class:`TokenUnverifiedError` when the Hub cannot be reached (the token may
    still be saved).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    try:
        info = HfApi(endpoint=endpoint).whoami(token=token.strip())
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise TokenValidationError(
                "Hugging Face rejected this token (401 Unauthorized).",
                "Create a new token at https://huggingface.co/settings/tokens "
                "(read access is enough) and paste it here.",
            ) from None
        raise TokenUnverifiedError(
            f"Hugging Face answered {status}; the token could not be verified.",
            "You can still save it; it will be checked when a download starts.",
        ) from None
    except Exception as exc:  # network down, DNS, TLS, offline mode
        raise TokenUnverifiedError(
            f"Could not reach Hugging Face to verify the token ({type(exc).__name__}).",
            "You can still save it; it will be checked when a download starts.",
        ) from None
    return str(info.get("name", "unknown"))
