"""Palettes, and the icons every panel uses."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from PySide6.QtGui import QPalette

from gemma_desktop.ui import theme

UI = Path(theme.__file__).resolve().parent


def test_every_icon_the_ui_names_exists_and_renders(qapp: Any) -> None:
    source = "\n".join(p.read_text() for p in UI.rglob("*.py"))
    names = set(re.findall(r'icon\("([a-z-]+)"\)', source))
    names |= set(re.findall(r'"(status-[a-z]+)"', source))
    names |= {"app", "chat", "hardware", "model", "key", "eye-off", "play", "stop", "send"}
    assert len(names) >= 15
    for name in sorted(names):
        assert (theme.ICONS_DIR / f"{name}.svg").is_file(), name
        assert not theme.icon(name).pixmap(24, 24).isNull(), name


def test_light_and_dark_palettes(qapp: Any) -> None:
    try:
        dark = theme.apply_theme(qapp, theme.DARK)
        assert dark.dark and theme.colors() is theme.DARK
        window = qapp.palette().color(QPalette.ColorRole.Window)
        text = qapp.palette().color(QPalette.ColorRole.WindowText)
        assert window.lightness() < 80 < text.lightness()
        light = theme.apply_theme(qapp, theme.LIGHT)
        assert not light.dark
        assert qapp.palette().color(QPalette.ColorRole.Window).lightness() > 200
        followed = theme.apply_theme(qapp)
        assert followed is (theme.DARK if theme.system_prefers_dark() else theme.LIGHT)
    finally:
        theme.apply_theme(qapp, theme.LIGHT)
