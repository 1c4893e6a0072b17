"""Render the setup wizard's pages and the tray menu to PNG files.

    xvfb-run -a -s "-screen 0 1400x900x24" \
        .venv/bin/python tools/screenshots_lifecycle.py build/screenshots

Writes ``wizard-1-welcome.png`` ... ``wizard-7-done.png`` and ``tray-menu.png``.
The wizard runs the real probe on this machine; the download page shows the
bundled model (prepared, so skipped) and the engine page an engine that is
starting. The tray menu needs a tray host: ``trayer`` is started on the X
display when none runs. Everything happens in throw-away config/data/state
directories.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def isolate(root: Path) -> None:
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        path = root / var.lower()
        path.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(path)
    os.environ["HF_HOME"] = str(root / "hf")
    os.environ.setdefault("GEMMA_DESKTOP_MODELS_DIR", str(REPO / "build" / "models"))
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    for name in ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        os.environ.pop(name, None)


def start_tray_host() -> subprocess.Popen[bytes] | None:
    tree = subprocess.run(
        ["xwininfo", "-root", "-tree"], capture_output=True, text=True, check=False
    ).stdout
    if '("panel" "trayer")' in tree or shutil.which("trayer") is None:
        return None
    proc = subprocess.Popen(
        ["trayer", "--edge", "top", "--align", "right", "--widthtype", "request", "--height", "24"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tree = subprocess.run(
            ["xwininfo", "-root", "-tree"], capture_output=True, text=True, check=False
        ).stdout
        if '("panel" "trayer")' in tree:
            break
        time.sleep(0.1)
    return proc


async def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("screenshot state not reached")
        await asyncio.sleep(0.05)


async def settle(seconds: float = 0.4) -> None:
    await asyncio.sleep(seconds)


async def shoot(out: Path) -> None:
    from PySide6.QtCore import QPoint, QRect
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QLabel, QMainWindow

    from gemma_desktop.core.engine.protocol import EngineError, StartProgress
    from gemma_desktop.core.machine.probe import ProbeService
    from gemma_desktop.core.models.catalog import BUNDLED_MODEL_ID, VariantCatalog
    from gemma_desktop.core.models.downloads import DownloadManager
    from gemma_desktop.core.secrets import TokenStore
    from gemma_desktop.core.settings import SettingsStore
    from gemma_desktop.ui.app_state import AppState
    from gemma_desktop.ui.engine_host import EngineHost
    from gemma_desktop.ui.setup.wizard import SetupWizard
    from gemma_desktop.ui.tray import Tray

    never = asyncio.Event()

    async def slow_factory(variant_id: str, progress: Any) -> Any:
        progress(StartProgress(f"Loading {variant_id}", 0.35))
        await never.wait()  # stays "starting" for the picture
        raise EngineError("The screenshot run ends here.", "")

    host = EngineHost(slow_factory, BUNDLED_MODEL_ID)
    wizard = SetupWizard(
        host=host,
        state=AppState(SettingsStore(), ProbeService()),
        token_store=TokenStore(),
        download_manager=DownloadManager(),
        catalog=VariantCatalog(),
        session_keys={},
    )
    wizard.move(60, 60)
    wizard.show()

    async def grab(name: str) -> None:
        await settle()
        wizard.grab().save(str(out / name))
        print(f"wrote {out / name}")

    await wizard.start()
    await grab("wizard-1-welcome.png")
    wizard.next_button.click()
    await wait_for(lambda: wizard.current_step == "hardware")
    await wait_for(wizard.next_button.isEnabled)
    await grab("wizard-2-hardware.png")
    wizard.next_button.click()
    await wait_for(lambda: wizard.current_step == "token")
    token: Any = wizard.page("token")
    await wait_for(lambda: "No token" in token.panel.source_label.text())
    await grab("wizard-3-token.png")
    wizard.skip_button.click()
    await wait_for(lambda: wizard.current_step == "variant")
    await wait_for(wizard.next_button.isEnabled)
    await grab("wizard-4-variant.png")
    wizard.next_button.click()
    await wait_for(lambda: wizard.current_step == "download")
    await wait_for(wizard.next_button.isEnabled, timeout=300)
    await grab("wizard-5-download.png")
    wizard.next_button.click()
    await wait_for(lambda: wizard.current_step == "engine")
    engine_page: Any = wizard.page("engine")
    await wait_for(lambda: "Loading" in engine_page.status.text())
    await grab("wizard-6-engine.png")
    # The done page as it looks after a start (the engine itself is not needed for it).
    await wizard.show_step("done")
    await grab("wizard-7-done.png")
    wizard.hide()

    never.set()
    screen = QGuiApplication.primaryScreen()
    desk = screen.geometry()
    # A plain desktop behind the menu (bare Xvfb has a black root window).
    backdrop = QLabel()
    backdrop.setStyleSheet(
        "background: qlineargradient(x1:0, y1:0, x2:1, y2:1, stop:0 #dfe7f5, stop:1 #c9d6ee);"
    )
    backdrop.setGeometry(0, 24, desk.width(), desk.height() - 24)
    backdrop.show()
    window = QMainWindow()
    window.setWindowTitle("Gemma Desktop")
    window.setCentralWidget(QLabel("main window"))
    window.resize(400, 200)
    window.move(200, 300)
    window.show()
    tray = Tray(
        window, EngineHost(None, BUNDLED_MODEL_ID), store=SettingsStore(), quit_app=lambda: None
    ).install()
    if not tray.available:
        print("no system tray on this display: skipping tray-menu.png", file=sys.stderr)
        return
    await wait_for(lambda: tray.icon.geometry().width() > 0, timeout=20)
    tray.refresh()
    icon = tray.icon.geometry()
    width = tray.menu.sizeHint().width()
    tray.menu.popup(QPoint(desk.right() - width - 4, icon.bottom() + 4))
    await settle(0.8)
    menu = tray.menu.geometry()
    area = QRect(menu.left() - 40, 0, desk.right() - menu.left() + 41, menu.bottom() + 40)
    screen.grabWindow(0, area.x(), area.y(), area.width(), area.height()).save(
        str(out / "tray-menu.png")
    )
    print(f"wrote {out / 'tray-menu.png'}")
    tray.menu.hide()
    await settle(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=REPO / "build" / "screenshots")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gd-shots-") as tmp:
        isolate(Path(tmp))
        from PySide6.QtWidgets import QApplication

        from gemma_desktop.ui.loop import create_loop

        try:
            from gemma_desktop.ui import theme

            has_theme = True
        except ImportError:
            has_theme = False
        tray_host = start_tray_host()
        app = QApplication(sys.argv[:1])
        app.setApplicationName("Gemma Desktop")
        if has_theme:
            theme.apply_theme(app)
        loop = create_loop(app)
        try:
            with loop:
                loop.run_until_complete(shoot(args.out.resolve()))
        finally:
            if tray_host is not None:
                tray_host.terminate()
                tray_host.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
