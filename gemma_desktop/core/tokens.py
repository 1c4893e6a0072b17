"""The Hugging Face token: where it is, and keeping it in the OS keyring.

Order of precedence matches huggingface_hub's own: ``HF_TOKEN`` in the
environment, then (the app's addition) the OS keyring, then Hugging Face's
plaintext token file. The token's value is never logged or written to the
settings; :func:`redact` scrubs it from any text that might be.

Every method here may block (D-Bus, file system, network): call them off the
UI thread.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gemma_desktop.core import paths
from gemma_desktop.core.errors import GemmaDesktopError

#: The keyring entry: service ``gemma-desktop``, user ``huggingface``.
KEYRING_SERVICE = "gemma-desktop"
KEYRING_USER = "huggingface"

TokenSource = Literal["env", "keyring", "file", "session"]
_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{8,}")


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


def redact(text: str, *secrets: str | None) -> str:
    """Replace each secret, and anything shaped like an HF token, with ``hf_***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "hf_***")
    return _TOKEN_RE.sub("hf_***", text)


def looks_like_token(value: str) -> bool:
    """Cheap shape check before a network round trip: ``hf_`` and at least 8 more characters."""
    return bool(_TOKEN_RE.fullmatch(value.strip()))


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

    @property
    def env(self) -> Mapping[str, str]:
        return os.environ if self._env is None else self._env

    def keyring_get(self) -> str | None:
        """The token in the keyring; raises :class:`KeyringUnavailableError`."""
        import keyring
        import keyring.errors

        try:
            return keyring.get_password(self.service, self.user)
        except keyring.errors.KeyringError as exc:
            raise KeyringUnavailableError(
                _keyring_problem(exc),
                "Keep the token for this session only, or save it in Hugging Face's "
                "own token file (plaintext).",
            ) from exc

    def save(self, token: str) -> None:
        """Store ``token`` in the keyring; raises :class:`KeyringUnavailableError`."""
        import keyring
        import keyring.errors

        token = token.strip()
        if not token:
            raise GemmaDesktopError("The token is empty.", "Paste a token from your HF settings.")
        try:
            keyring.set_password(self.service, self.user, token)
        except keyring.errors.KeyringError as exc:
            raise KeyringUnavailableError(
                _keyring_problem(exc),
                "Keep the token for this session only, or save it in Hugging Face's "
                "own token file (plaintext).",
            ) from exc

    def delete(self) -> bool:
        """Remove the token from the keyring (and the session); ``True`` if one was there."""
        import keyring
        import keyring.errors

        self.session_token = None
        try:
            keyring.delete_password(self.service, self.user)
        except keyring.errors.PasswordDeleteError:
            return False
        except keyring.errors.KeyringError as exc:
            raise KeyringUnavailableError(_keyring_problem(exc), "") from exc
        return True

    def token_file(self) -> Path:
        return paths.hf_token_file(dict(self.env))

    def write_token_file(self, token: str) -> Path:
        """Write Hugging Face's plaintext token file (only when the user chose it)."""
        path = self.token_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(token.strip())
        return path

    def delete_token_file(self) -> bool:
        path = self.token_file()
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def locate(self) -> TokenLocation:
        """The active token and its source: env, keyring, token file, session."""
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
