"""Look and feel: light and dark palettes that follow the system, fonts, icons.

The palette follows the desktop's colour scheme (Qt 6.5+ reports it through
``QStyleHints.colorScheme``) and changes with it while the app runs. Widgets
that draw their own colours (the chat transcript's HTML) read them from
:func:`colors`, which always matches the palette in use.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFont, QFontDatabase, QGuiApplication, QIcon, QPalette
from PySide6.QtWidgets import QApplication

from gemma_desktop.core.paths import ICONS_DIR


@dataclass(frozen=True)
class Colors:
    """The colours of one scheme, shared by the palette and the transcript's HTML."""

    dark: bool
    window: str
    base: str
    alt_base: str
    text: str
    muted: str
    accent: str
    accent_text: str
    border: str
    code_bg: str
    code_header: str
    user_bg: str
    error: str
    ok: str
    warn: str


LIGHT = Colors(
    dark=False,
    window="#f4f5f7",
    base="#ffffff",
    alt_base="#f7f8fa",
    text="#1d2026",
    muted="#5f6673",
    accent="#3b6fe0",
    accent_text="#ffffff",
    border="#d5d9e0",
    code_bg="#f2f4f7",
    code_header="#e4e8ee",
    user_bg="#eaf1ff",
    error="#b3261e",
    ok="#1e7d4c",
    warn="#8a5a00",
)

DARK = Colors(
    dark=True,
    window="#1e2025",
    base="#25282e",
    alt_base="#2b2e35",
    text="#e6e8ec",
    muted="#9aa1ad",
    accent="#6d9bff",
    accent_text="#0d1117",
    border="#3a3f48",
    code_bg="#1a1c20",
    code_header="#30343c",
    user_bg="#2a3550",
    error="#ff8a80",
    ok="#6fd39b",
    warn="#f2c35b",
)

_current: Colors = LIGHT


def colors() -> Colors:
    """The colours of the scheme in use."""
    return _current


@cache
def icon(name: str) -> QIcon:
    """An icon from ``resources/icons/<name>.svg`` (an empty icon if it is missing)."""
    path = ICONS_DIR / f"{name}.svg"
    return QIcon(str(path)) if path.is_file() else QIcon()


def system_prefers_dark() -> bool:
    hints = QGuiApplication.styleHints()
    scheme = getattr(hints, "colorScheme", None)
    if scheme is not None:
        value = scheme()
        if value == Qt.ColorScheme.Dark:
            return True
        if value == Qt.ColorScheme.Light:
            return False
    # Unknown: guess from the platform palette's window colour.
    return QGuiApplication.palette().color(QPalette.ColorRole.Window).lightness() < 128


def palette_for(scheme: Colors) -> QPalette:
    pal = QPalette()
    role = QPalette.ColorRole
    pairs = {
        role.Window: scheme.window,
        role.WindowText: scheme.text,
        role.Base: scheme.base,
        role.AlternateBase: scheme.alt_base,
        role.Text: scheme.text,
        role.Button: scheme.alt_base,
        role.ButtonText: scheme.text,
        role.ToolTipBase: scheme.base,
        role.ToolTipText: scheme.text,
        role.PlaceholderText: scheme.muted,
        role.Highlight: scheme.accent,
        role.HighlightedText: scheme.accent_text,
        role.Link: scheme.accent,
        role.LinkVisited: scheme.accent,
        role.Mid: scheme.border,
        role.Midlight: scheme.border,
    }
    for r, value in pairs.items():
        pal.setColor(r, QColor(value))
    disabled = QColor(scheme.muted)
    for r in (role.WindowText, role.Text, role.ButtonText):
        pal.setColor(QPalette.ColorGroup.Disabled, r, disabled)
    return pal


def stylesheet(scheme: Colors) -> str:
    """Spacing and a few accents on top of the Fusion style."""
    return f"""
    QWidget#navigation {{ background: {scheme.base}; border-right: 1px solid {scheme.border}; }}
    QListWidget#navigation {{ padding-top: 8px; }}
    QListWidget#navigation::item {{ padding-left: 10px; border-radius: 6px; margin: 1px 6px; }}
    QListWidget#navigation::item:selected {{ background: {scheme.accent};
                                             color: {scheme.accent_text}; }}
    QLabel[role="title"] {{ font-size: 17px; font-weight: 600; }}
    QLabel[role="muted"] {{ color: {scheme.muted}; }}
    QLabel[role="error"] {{ color: {scheme.error}; }}
    QLabel[role="ok"] {{ color: {scheme.ok}; }}
    QFrame[role="card"] {{ background: {scheme.base}; border: 1px solid {scheme.border};
                          border-radius: 8px; }}
    QFrame[role="banner-ready"] {{ background: {scheme.base}; border: 1px solid {scheme.ok};
                                  border-left: 5px solid {scheme.ok}; border-radius: 6px; }}
    QFrame[role="banner-skipped"] {{ background: {scheme.base}; border: 1px solid {scheme.warn};
                                    border-left: 5px solid {scheme.warn}; border-radius: 6px; }}
    QFrame[role="banner-error"] {{ background: {scheme.base}; border: 1px solid {scheme.error};
                                  border-left: 5px solid {scheme.error}; border-radius: 6px; }}
    QPushButton {{ padding: 5px 12px; }}
    QPushButton[role="primary"] {{ background: {scheme.accent}; color: {scheme.accent_text};
                                   border: none; border-radius: 5px; padding: 6px 16px; }}
    QPushButton[role="primary"]:disabled {{ background: {scheme.border}; color: {scheme.muted}; }}
    QPlainTextEdit#composer {{ border: 1px solid {scheme.border}; border-radius: 8px;
                               padding: 6px; background: {scheme.base}; }}
    QTextBrowser#transcript {{ border: none; background: {scheme.base}; }}
    QStatusBar QLabel {{ padding: 0 6px; }}
    """


def apply_theme(app: QApplication, scheme: Colors | None = None) -> Colors:
    """Apply the light or dark scheme (the system's when ``scheme`` is ``None``)."""
    global _current
    _current = scheme or (DARK if system_prefers_dark() else LIGHT)
    app.setStyle("Fusion")
    app.setPalette(palette_for(_current))
    app.setStyleSheet(stylesheet(_current))
    return _current


def follow_system(app: QApplication) -> None:
    """Re-apply the theme whenever the desktop switches between light and dark."""
    hints = QGuiApplication.styleHints()
    signal = getattr(hints, "colorSchemeChanged", None)
    if signal is not None:
        signal.connect(lambda *_: apply_theme(app))


def monospace_font() -> QFont:
    font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
    font.setPointSizeF(max(9.0, font.pointSizeF()))
    return font
