"""The desktop app: wiring only. Services are built here, in this order, and nowhere else.

:class:`GemmaDesktopApp` builds, in order:

1. the log file and the crash handler (:mod:`gemma_desktop.crash`);
2. the services: settings store, token store, variant catalog, the probe,
   the app's state (settings + probe report, :class:`~gemma_desktop.ui.app_state.AppState`),
   the download manager, the history, the engine assembly;
3. the engine host (its factory waits for the probe's report, then asks the
   assembly) and the local API host;
4. the main window, which receives all of the above;
5. the quitter, with each service's shutdown step in the order they must run:
   the answer, downloads, the local API, the engine, the history.

:func:`run_app` adds the Qt application, the event loop, the single-instance
guard, the claim on the local engine (:mod:`gemma_desktop.core.engine_owner`: no
engine beside ``gemma-desktop serve``), the tray and the setup wizard, and runs
until the quitter finishes.

vLLM starts its engine process with the *spawn* method, which imports the
main module again: everything here runs only from :func:`main`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import signal
import sys
from collections.abc import Callable, Mapping, Sequence

from PySide6.QtWidgets import QWidget

from gemma_desktop import APP_ID, APP_NAME, __version__
from gemma_desktop.core import paths
from gemma_desktop.core.audio_capture import AudioDevices
from gemma_desktop.core.chat.history import AsyncHistory, HistoryError, HistoryStore
from gemma_desktop.core.engine.assembly import EngineAssembly
from gemma_desktop.core.engine.processes import EngineRegistry
from gemma_desktop.core.engine.protocol import Engine, ProgressListener, StartProgress
from gemma_desktop.core.engine_owner import EngineOwner
from gemma_desktop.core.logs import RedactingFilter
from gemma_desktop.core.machine.probe import GpuReader, ProbeService, decide_startup
from gemma_desktop.core.models.catalog import VariantCatalog
from gemma_desktop.core.models.downloads import DownloadManager
from gemma_desktop.core.secrets import TokenStore
from gemma_desktop.core.settings import SettingsStore
from gemma_desktop.crash import CRASH_FILE_NAME, LOG_FILE_NAME, CrashHandler, diagnostics_text
from gemma_desktop.crash import setup_logging as setup_log_file
from gemma_desktop.ui.app_state import AppState
from gemma_desktop.ui.engine_host import EngineFactory, EngineHost
from gemma_desktop.ui.local_api_host import SETTING as LOCAL_API_SETTING
from gemma_desktop.ui.local_api_host import LocalApiHost
from gemma_desktop.ui.main_window import MainWindow, WindowServices
from gemma_desktop.ui.quit import Quitter
from gemma_desktop.ui.tasks import run_blocking, spawn

log = logging.getLogger(__name__)


class GemmaDesktopApp:
    """Services, the engine host and the main window of one run (see the module docstring).

    ``engine_factory``, ``gpu_reader`` and ``token_validator`` replace the real
    ones (screenshots inject GPU readings; tests pass the session's engine).
    ``engine_owner`` is this process's claim on the local engine (:func:`run_app`
    takes it): without it held, the assembly refuses to build a local engine.
    """

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        engine_factory: EngineFactory | None = None,
        gpu_reader: GpuReader | None = None,
        token_validator: Callable[[str], str] | None = None,
        crash_dialogs: bool = True,
        loop: asyncio.AbstractEventLoop | None = None,
        engine_owner: EngineOwner | None = None,
    ) -> None:
        # 1. logging and the crash handler
        self.redactor = RedactingFilter()
        self.state_dir = paths.state_dir()
        self.log_handler = setup_log_file(self.state_dir, self.redactor.redactor)
        self.log_path = self.state_dir / LOG_FILE_NAME
        self.crash = CrashHandler(
            self.redactor,
            self.diagnostics,
            self.state_dir / CRASH_FILE_NAME,
            show_dialog=crash_dialogs,
        )
        self.crash.install(loop)
        log.info("%s %s starting (Python %s)", APP_NAME, __version__, platform.python_version())

        # 2. services
        self.settings_store = SettingsStore()
        self.token_store = TokenStore(env=env)
        self.catalog = VariantCatalog()
        self.probe = ProbeService(gpu_reader=gpu_reader, token_store=self.token_store, env=env)
        self.state = AppState(self.settings_store, self.probe, env=env)
        self.download_manager = DownloadManager(
            catalog=self.catalog, token_provider=lambda: self.token_store.locate().token
        )
        self.history = _open_history()
        self.audio = AudioDevices()  # opens no device until the user records or plays
        self.remote_session_keys: dict[str, str] = {}
        self.engine_registry = EngineRegistry()
        self.assembly = EngineAssembly(
            self.catalog,
            session_keys=self.remote_session_keys,
            registry=self.engine_registry,
            owner=engine_owner,
        )

        # 3. the engine and the local API
        settings = self.state.settings
        self.host = EngineHost(engine_factory or self.build_engine, settings.model_id.value)
        self.local_api = LocalApiHost(
            self.host,
            self.settings_store,
            settings.deployment_name.value,
            enabled=settings.saved.get(LOCAL_API_SETTING) is True,
        )

        # 4. the window
        self.window = MainWindow(
            WindowServices(
                host=self.host,
                state=self.state,
                catalog=self.catalog,
                token_store=self.token_store,
                download_manager=self.download_manager,
                token_validator=token_validator,
                on_secret=self.redactor.add_secret,
                log_path=self.log_path,
                diagnostics=lambda: self.diagnostics(""),
                history=self.history,
                audio=self.audio,
                local_api=self.local_api,
                remote_session_keys=self.remote_session_keys,
            )
        )

        # 5. the one way out, and what it stops, in order
        self.quitter = Quitter()
        self.quitter.add_step("the answer", self.window.chat.shutdown)
        self.quitter.add_step("the sound", self._stop_sound)
        self.quitter.add_step("downloads", self._cancel_downloads)
        self.quitter.add_step("the local API", self.local_api.shutdown)
        self.quitter.add_step("the engine", self.host.shutdown)
        self.quitter.add_step("the history", self._close_history)
        #: The setup wizard while it is open (``run_app`` shows it on first run).
        self.wizard: QWidget | None = None
        self.quitter.shutting_down.connect(self.window.shutting_down)
        self.quitter.finished.connect(self.window.close_for_good)
        self.window.quit_requested.connect(self.quitter.request)

    # --- the engine ---------------------------------------------------------------------

    async def build_engine(self, variant_id: str, progress: ProgressListener) -> Engine:
        """The host's factory: the engine is never built before the probe has reported."""
        if self.state.report is None:
            progress(StartProgress("Waiting for the hardware check", None))
        report = await self.state.report_ready()
        settings = await self.state.reload_settings()  # the Connections page may have saved
        return await self.assembly.build(variant_id, settings, report, progress)

    # --- start-up ----------------------------------------------------------------------------

    async def end_leftovers(self) -> None:
        """End engine processes an earlier run left behind (killed, crashed), and say so."""
        ended = await run_blocking(self.engine_registry.end_leftovers)
        if ended:
            self.window.notify(
                f"Ended {len(ended)} engine process{'es' if len(ended) > 1 else ''} left running "
                "by an earlier run of Gemma Desktop that did not quit cleanly."
            )

    async def startup(self) -> None:
        """Check the machine, pick the model to run and start it if allowed."""
        spawn(self.window.token_panel.refresh(), "Reading the token")
        await self.end_leftovers()
        report = await self.state.refresh()
        if report is None:
            return
        decision = decide_startup(self.state.settings, report)
        self.host.set_variant(decision.variant_id)
        self.window.picker.set_selected(decision.variant_id)
        for notice in decision.notices:
            self.window.notify(notice)
        if decision.start:
            await self.host.start()

    async def quiet_startup(self) -> None:
        """While the setup wizard runs: fill the panels, start nothing."""
        spawn(self.window.token_panel.refresh(), "Reading the token")
        await self.end_leftovers()
        await self.state.refresh()

    async def after_setup(self) -> None:
        """The wizard finished: take over the model it chose (its engine may already run)."""
        settings = await self.state.reload_settings()
        self.window.picker.set_selected(settings.model_id.value)
        if self.host.status.state.value == "not started":
            self.host.set_variant(settings.model_id.value)
        await self.state.refresh(reload_settings=False)  # just reloaded

    # --- diagnostics ----------------------------------------------------------------------------

    def diagnostics(self, trace: str = "") -> str:
        """Plain-text facts for a bug report; every secret is redacted."""
        status, report = self.host.status, self.state.report
        return diagnostics_text(
            self.redactor,
            engine_line=f"Engine: {status.state.value} ({status.model_id}) {status.detail}".strip(),
            report_text=report.as_text() if report is not None else None,
            log_path=self.log_path,
            trace=trace,
        )

    # --- shutdown -------------------------------------------------------------------------------

    async def _stop_sound(self) -> None:
        if self.window.chat.recorder_bar.recording:
            self.window.chat.recorder_bar.cancel()  # the microphone is closed, nothing attached
        if self.audio.playing is not None:
            self.audio.stop_playback()

    async def _cancel_downloads(self) -> None:
        self.download_manager.cancel_all()

    async def _close_history(self) -> None:
        if self.history is not None:
            await run_blocking(self.history.close)

    def close(self) -> None:
        """Detach logging and the crash handler (after the loop has ended)."""
        self.crash.uninstall()
        logging.getLogger().removeHandler(self.log_handler)
        self.log_handler.close()


def _open_history() -> AsyncHistory | None:
    try:
        return AsyncHistory(HistoryStore())
    except HistoryError as exc:
        # A damaged file or a newer schema: chat still works, unrecorded.
        log.error("history unavailable: %s", exc)
        return None


# --- entry point -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"{APP_ID}-gui", description=f"Start {APP_NAME}.")
    add_arguments(parser)
    return parser.parse_args(argv)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-auto-start",
        action="store_true",
        help="do not start the engine at launch (like ATOMR_INFER_GEMMA_AUTO=off)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the desktop app until it quits; returns the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_app(no_auto_start=args.no_auto_start)


def install_tray(app: GemmaDesktopApp) -> object:
    """The tray icon and the window's close policy, wired to the app's quitter."""
    from gemma_desktop.ui.tray import Tray

    tray = Tray(
        app.window,
        app.host,
        store=app.settings_store,
        is_streaming=lambda: app.window.chat.streaming,
        quit_app=app.quitter.request,
    ).install()
    tray.new_chat_requested.connect(app.window.chat.new_chat)
    app.quitter.shutting_down.connect(tray.shutting_down)
    return tray


def run_app(*, no_auto_start: bool = False) -> int:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from gemma_desktop.ui import theme
    from gemma_desktop.ui.loop import create_loop
    from gemma_desktop.ui.setup.wizard import SetupWizard, needs_wizard
    from gemma_desktop.ui.single_instance import SingleInstance, raise_window

    if no_auto_start:
        os.environ["ATOMR_INFER_GEMMA_AUTO"] = "off"
    QApplication.setApplicationName(APP_NAME)
    QApplication.setApplicationVersion(__version__)
    QApplication.setDesktopFileName(APP_ID)
    qapp = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(qapp, QApplication)
    qapp.setWindowIcon(theme.icon("app"))
    theme.apply_theme(qapp)
    theme.follow_system(qapp)
    loop = create_loop(qapp)
    # A second launch raises the running window and exits: never two engines.
    instance = SingleInstance()
    if not instance.acquire():
        log.info("%s is already running; asked it to come to the front", APP_NAME)
        return 0
    # Nor an engine beside `gemma-desktop serve`: the window opens, its engine start
    # says who runs the model (and takes the claim once serve has stopped).
    owner = EngineOwner("window")
    if not owner.acquire():
        log.info("the local engine is taken: %s", owner.holder())
    app = GemmaDesktopApp(loop=loop, engine_owner=owner)
    tray = install_tray(app)
    instance.activated.connect(lambda: raise_window(app.window))
    quitting = asyncio.Event()
    app.quitter.finished.connect(quitting.set)
    qapp.aboutToQuit.connect(app.quitter.request)

    # Ctrl+C in a terminal (and SIGTERM from a logout) quit cleanly. Python
    # only sees signals while it runs, hence the idle timer.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: app.quitter.request())
    heartbeat = QTimer()
    heartbeat.start(250)
    heartbeat.timeout.connect(lambda: None)

    def open_wizard() -> None:
        wizard = SetupWizard(
            host=app.host,
            state=app.state,
            token_store=app.token_store,
            download_manager=app.download_manager,
            catalog=app.catalog,
            session_keys=app.remote_session_keys,
        )

        def done(completed: bool) -> None:
            if completed:
                app.window.show()
                spawn(app.after_setup(), "Finishing setup")
            elif not app.window.isVisible():
                app.quitter.request()

        wizard.finished.connect(done)
        wizard.show()
        # Resume at the first unfinished step (quitting midway keeps what was done).
        spawn(wizard.start(), "Setup")
        app.wizard = wizard

    def rerun_setup() -> None:
        spawn(_rerun_setup(), "Setup")

    async def _rerun_setup() -> None:
        await app.state.update_settings(setup_wizard=None)
        open_wizard()

    app.window.setup_requested.connect(rerun_setup)
    if needs_wizard(app.state.settings):
        open_wizard()
        startup = spawn(app.quiet_startup(), "Start-up")
    else:
        app.window.show()
        startup = spawn(app.startup(), "Start-up")
    try:
        with loop:
            loop.run_until_complete(quitting.wait())
            if not startup.done():
                startup.cancel()
    finally:
        del tray
        owner.release()
        instance.release()
        log.info("%s stopped", APP_NAME)
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
