"""A minimal app around :class:`SingleInstance`, for the two-process tests.

``python -m tests.e2e.instance_app DIR`` prints ``primary`` or
``secondary``. The primary prints ``activated <n>`` for every activation and
exits after ``EXIT_AFTER`` activations (default 2) or 60 s.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QWidget

from gemma_desktop.ui.single_instance import SingleInstance, raise_window


def main(argv: list[str]) -> int:
    app = QApplication([sys.argv[0]])
    instance = SingleInstance(Path(argv[0]))
    if not instance.acquire():
        print("secondary", flush=True)
        return 0
    print("primary", flush=True)
    window = QWidget()
    window.setWindowTitle("instance test")
    count = 0
    limit = int(os.environ.get("EXIT_AFTER", "2"))

    def on_activated() -> None:
        nonlocal count
        count += 1
        raise_window(window)
        print(f"activated {count} visible={window.isVisible()}", flush=True)
        if count >= limit:
            QTimer.singleShot(0, app.quit)

    instance.activated.connect(on_activated)
    QTimer.singleShot(60_000, app.quit)
    app.exec()
    instance.release()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
