"""Expected failures, each with a plain-language reason and an actionable hint."""

from __future__ import annotations


class GemmaDesktopError(Exception):
    """A failure the user can understand and act on.

    ``reason`` says what happened, ``hint`` what to do about it; they mirror the
    seed's ``Skipped { reason, hint }`` pair so the UI and CLI can show both.
    """

    def __init__(self, reason: str, hint: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.reason} ({self.hint})" if self.hint else self.reason


class UnsupportedVariantError(GemmaDesktopError, ValueError):
    """A model id that is not in the variant catalog."""


class SettingsError(GemmaDesktopError):
    """Saved settings that cannot be read or written."""
