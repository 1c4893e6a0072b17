"""Render the desktop icon set from ``resources/icons/app.svg``.

``python packaging/make_icons.py`` writes ``packaging/icons/hicolor/``:
``scalable/apps/gemma-desktop.svg`` and ``NxN/apps/gemma-desktop.png`` for
the sizes desktops ask for. Run it again after changing the SVG.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "resources" / "icons" / "app.svg"
TARGET = HERE / "icons" / "hicolor"
SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
NAME = "gemma-desktop"


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    app = QGuiApplication(sys.argv[:1])
    renderer = QSvgRenderer(str(SOURCE))
    if not renderer.isValid():
        print(f"cannot read {SOURCE}", file=sys.stderr)
        return 1
    scalable = TARGET / "scalable" / "apps"
    scalable.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SOURCE, scalable / f"{NAME}.svg")
    for size in SIZES:
        image = QImage(size, size, QImage.Format.Format_ARGB32)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        folder = TARGET / f"{size}x{size}" / "apps"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(str(folder / f"{NAME}.png"))
    del app
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
