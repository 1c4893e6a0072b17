"""The desktop app: the one place that builds services, the event loop and the windows.

Order of construction (:class:`GemmaDesktopApp`):

1. logging: a rotating log file in the state dir, with every token redacted;
2. services: settings store, token store, variant catalog, download manager;
3. the engine host, with a factory that prepares the model and builds a
   :class:`~gemma_desktop.core.vllm_engine.VllmEngine` on demand;
4. the main window, which receives all of the above;
5. start-up: the hardware check runs off the UI thread, then the engine
   starts by itself when ``auto_start`` is on and the chosen model can run.

Unexpected exceptions reach one crash handler (:class:`CrashHandler`): it
logs them (redacted), keeps a faulthandler trace for hard crashes and shows a
dialog that explains what happened and offers to copy diagnostics.

vLLM starts its engine process with the *spawn* method, which imports the
main module again: everything here runs only from :func:`main`.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import logging.handlers
import os
import platform
import signal
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from gemma_desktop import APP_ID, APP_NAME, __version__
from gemma_desktop.core import paths
from gemma_desktop.core.catalog import Variant, VariantCatalog
from gemma_desktop.core.engine import Engine, ProgressListener, StartProgress
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.probe import FitKind, GpuReader, ProbeReport, run_probe, startup_variant
from gemma_desktop.core.settings import ENV_MODEL, Settings, SettingsStore, load_settings
from gemma_desktop.core.tokens import TokenStore, redact

log = logging.getLogger(__name__)

LOG_FILE_NAME = f"{APP_ID}.log"
CRASH_FILE_NAME = "crash.log"
LOG_MAX_BYTES = 2 * 1024 * 1024
LOG_BACKUPS = 3


# --- logging ------------------------------------------------------------------------


class RedactingFilter(logging.Filter):
    """Scrubs tokens from every record: known secrets and anything shaped like ``hf_...``."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()

    def add_secret(self, secret: str | None) -> None:
        if secret and len(secret) >= 8:
            self._secrets.add(secret)

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(self._secrets)

    def redact(self, text: str) -> str:
        return redact(text, *self._secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = self.redact(
                "".join(traceback.format_exception(*record.exc_info)).rstrip()
            )
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def setup_logging(
    state_dir: Path, redactor: RedactingFilter, *, level: int = logging.INFO
) -> logging.Handler:
    """Add the app's rotating log file to the root logger; returns the handler."""
    state_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        state_dir / LOG_FILE_NAME,
        maxBytes=LOG_MAX_BYTES,
        backupCount=LOG_BACKUPS,
        encoding="utf-8",
    )
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    handler.addFilter(redactor)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > level or root.level == logging.NOTSET:
        root.setLevel(level)
    return handler


# --- crash handler -----------------------------------------------------------------------


class CrashHandler:
    """``sys.excepthook``, the loop's exception handler and faulthandler, in one place.

    An unexpected exception is logged (redacted) and explained in a dialog with
    a Copy diagnostics button; the traceback is in the dialog's details, never
    the only explanation.
    """

    def __init__(
        self,
        redactor: RedactingFilter,
        diagnostics: Callable[[str], str],
        crash_file: Path,
        *,
        show_dialog: bool = True,
    ) -> None:
        self._redactor = redactor
        self._diagnostics = diagnostics
        self._crash_file = crash_file
        self._fault_stream: IO[str] | None = None
        self._previous_hook = sys.excepthook
        self._loop: asyncio.AbstractEventLoop | None = None
        self.show_dialog = show_dialog
        self.dialog: Any = None
        self.count = 0

    def install(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._crash_file.parent.mkdir(parents=True, exist_ok=True)
        self._fault_stream = open(self._crash_file, "a", encoding="utf-8")  # noqa: SIM115
        faulthandler.enable(self._fault_stream)
        sys.excepthook = self.excepthook
        self._loop = loop
        if loop is not None:
            loop.set_exception_handler(self.loop_exception)

    def uninstall(self) -> None:
        sys.excepthook = self._previous_hook
        if self._loop is not None:
            self._loop.set_exception_handler(None)
            self._loop = None
        if self._fault_stream is not None:
            faulthandler.disable()
            self._fault_stream.close()
            self._fault_stream = None

    def excepthook(
        self,
        exc_type: type[BaseException],
        exc: BaseException,
        tb: TracebackType | None,
    ) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            self._previous_hook(exc_type, exc, tb)
            return
        self.report(exc, "".join(traceback.format_exception(exc_type, exc, tb)))

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if exc is None or isinstance(exc, asyncio.CancelledError):
            log.warning("event loop: %s", context.get("message", "unknown problem"))
            return
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.report(exc, f"{context.get('message', '')}\n{text}")

    def report(self, exc: BaseException, trace: str) -> None:
        self.count += 1
        trace = self._redactor.redact(trace)
        log.critical("Unexpected error: %s\n%s", type(exc).__name__, trace)
        if isinstance(exc, GemmaDesktopError):
            summary = f"{exc.reason} {exc.hint}".strip()
        else:
            summary = f"{type(exc).__name__}: {exc}"
        summary = self._redactor.redact(summary)
        if self.show_dialog:
            self._show(summary, trace)

    def _show(self, summary: str, trace: str) -> None:
        from PySide6.QtGui import QGuiApplication
        from PySide6.QtWidgets import QApplication, QMessageBox

        if QApplication.instance() is None or (self.dialog is not None and self.dialog.isVisible()):
            return
        box = QMessageBox(QApplication.activeWindow())
        box.setObjectName("crashDialog")
        box.setIcon(QMessageBox.Icon.Critical)
        box.setWindowTitle(f"{APP_NAME}: unexpected problem")
        box.setText(
            "Something went wrong inside Gemma Desktop. Your conversation is still here and "
            "the app keeps running, but the last action may not have finished."
        )
        box.setInformativeText(
            f"{summary}\n\nIf it happens again, copy the diagnostics into a bug report. "
            "They contain no token."
        )
        box.setDetailedText(trace)
        copy = box.addButton("Copy diagnostics", QMessageBox.ButtonRole.ActionRole)
        box.addButton(QMessageBox.StandardButton.Close)
        copy.clicked.connect(lambda: QGuiApplication.clipboard().setText(self._diagnostics(trace)))
        self.dialog = box
        box.open()


# --- the engine factory ------------------------------------------------------------------


def can_autostart(variant: Variant, report: ProbeReport) -> tuple[bool, str]:
    """Whether ``variant`` can start by itself here, and why not."""
    verdict = report.fit(variant)
    if verdict.kind is FitKind.DOES_NOT_FIT:
        return False, verdict.message
    if variant.is_bundled:
        return True, ""
    if report.vllm_build != "cuda":
        return False, f"{variant.label} needs vLLM's CUDA build and an NVIDIA GPU."
    if not report.cached(variant.id):
        return False, f"{variant.label} is not downloaded yet."
    return True, ""


def is_cached(catalog: VariantCatalog, variant_id: str) -> bool:
    """Whether ``variant_id`` is on disk (pure file-system reads)."""
    from gemma_desktop.core import bundled
    from gemma_desktop.core.probe import cached_snapshot

    if catalog.get(variant_id).is_bundled:
        return bundled.is_provisioned()
    return cached_snapshot(variant_id) is not None


EngineFactory = Callable[[str, ProgressListener], Any]


def vllm_engine_factory(
    catalog: VariantCatalog, report: Callable[[], ProbeReport | None]
) -> EngineFactory:
    """Builds a :class:`VllmEngine` for a variant, converting the bundled model first."""

    async def factory(variant_id: str, progress: ProgressListener) -> Engine:
        from gemma_desktop.core.bundled import provision_bundled_model_async
        from gemma_desktop.core.engine_config import EngineConfig
        from gemma_desktop.core.vllm_engine import VllmEngine, preload_vllm

        preload_vllm()
        variant = catalog.get(variant_id)
        loop = asyncio.get_running_loop()
        settings = await loop.run_in_executor(None, load_settings)
        model_path = None
        if variant.is_bundled:
            progress(StartProgress("Preparing the bundled model", None))
            model_path = await provision_bundled_model_async(
                lambda step: progress(StartProgress(step.message, step.fraction))
            )
        probe = report()
        total_vram = None
        if probe is not None and probe.vllm_build == "cuda" and probe.best_gpu is not None:
            total_vram = probe.best_gpu.total_vram_gb
        config = EngineConfig.build(
            settings, variant, total_vram_gb=total_vram, model_path=model_path
        )
        return VllmEngine(config)

    return factory


def engine_choice_factory(
    local: EngineFactory,
    store: SettingsStore,
    session_keys: Mapping[str, str],
) -> EngineFactory:
    """Builds the engine the user chose on the Connections page (saved ``engine``).

    ``"remote"`` with a saved server builds a :class:`RemoteEngine` (its key from
    this session's keys, else the keyring); anything else calls ``local``.
    """

    async def factory(variant_id: str, progress: ProgressListener) -> Engine:
        from gemma_desktop.core.remote_engine import ApiKeyStore, RemoteEngine, RemoteTarget
        from gemma_desktop.core.tokens import KeyringUnavailableError

        loop = asyncio.get_running_loop()
        try:
            saved = await loop.run_in_executor(None, store.load)
        except GemmaDesktopError:
            saved = {}
        if saved.get("engine") != "remote":
            engine: Engine = await local(variant_id, progress)
            return engine
        target = RemoteTarget.from_saved(saved)
        if target is None:
            raise GemmaDesktopError(
                "The remote vLLM server is chosen but no address is saved.",
                "Enter the server's address on the Connections page, or choose this computer.",
            )
        key = session_keys.get(target.base_url)
        if key is None:
            try:
                key = await loop.run_in_executor(None, ApiKeyStore(target.base_url).get)
            except KeyringUnavailableError:
                key = None
        return RemoteEngine(target.base_url, target.model, key)

    return factory


def local_api_for(deployment_name: str) -> Callable[[Engine], Any]:
    """The local API factory: an endpoint over a :class:`VllmEngine`, ``None`` for others."""

    def make(engine: Engine) -> Any:
        from gemma_desktop.core.local_api import LocalApiServer
        from gemma_desktop.core.vllm_engine import VllmEngine

        if not isinstance(engine, VllmEngine):
            return None
        return LocalApiServer.for_engine(engine, deployment_name)

    return make


# --- the app ---------------------------------------------------------------------------------


class GemmaDesktopApp:
    """Services, the engine host and the main window of one run.

    ``engine_factory``, ``gpu_reader`` and ``token_validator`` replace the real
    ones (screenshots inject GPU readings; tests pass the session's engine).
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
    ) -> None:
        from gemma_desktop.ui.engine_host import EngineHost
        from gemma_desktop.ui.main_window import MainWindow, WindowServices

        self.env = env
        self.redactor = RedactingFilter()
        self.state_dir = paths.state_dir()
        self.log_handler = setup_logging(self.state_dir, self.redactor)
        self.log_path = self.state_dir / LOG_FILE_NAME
        self.crash = CrashHandler(
            self.redactor,
            self.diagnostics,
            self.state_dir / CRASH_FILE_NAME,
            show_dialog=crash_dialogs,
        )
        self.crash.install(loop)
        log.info("%s %s starting (Python %s)", APP_NAME, __version__, platform.python_version())

        self.settings_store = SettingsStore()
        self.settings = self._load_settings()
        self.token_store = TokenStore(env=env)
        self.catalog = VariantCatalog()
        self.gpu_reader = gpu_reader
        self.report: ProbeReport | None = None
        self.wizard: Any = None
        self._token_task: asyncio.Future[Any] | None = None
        self.download_manager = self._download_manager()
        self.history = self._open_history()
        self.remote_session_keys: dict[str, str] = {}
        factory = engine_choice_factory(
            engine_factory or vllm_engine_factory(self.catalog, lambda: self.report),
            self.settings_store,
            self.remote_session_keys,
        )
        self.host = EngineHost(factory, self.settings.model_id.value)
        self.window = MainWindow(
            WindowServices(
                host=self.host,
                catalog=self.catalog,
                settings_store=self.settings_store,
                token_store=self.token_store,
                probe=self.run_probe,
                is_cached=lambda variant_id: is_cached(self.catalog, variant_id),
                selected_variant=self.settings.model_id.value,
                token_validator=token_validator,
                on_secret=self.redactor.add_secret,
                download_panel_factory=self._download_panel if self.download_manager else None,
                log_path=self.log_path,
                diagnostics=lambda: self.diagnostics(""),
                history=self.history,
                local_api_factory=local_api_for(self.settings.deployment_name.value),
                remote_session_keys=self.remote_session_keys,
            )
        )
        self.window.probe_panel.report_changed.connect(self._remember_report)

    # --- services -----------------------------------------------------------------------

    def _load_settings(self) -> Settings:
        try:
            return load_settings(self.env, self.settings_store)
        except GemmaDesktopError as exc:
            # Unreadable settings or a bad ATOMR_INFER_GEMMA_MODEL: the probe
            # panel shows the same problem with its hint.
            log.warning("settings: %s", exc)
            env = dict(self.env if self.env is not None else os.environ)
            env.pop(ENV_MODEL, None)
            return load_settings(env, SettingsStore(self.state_dir / "no-saved-settings.json"))

    def _open_history(self) -> Any:
        from gemma_desktop.core.history import AsyncHistory, HistoryError, HistoryStore

        try:
            return AsyncHistory(HistoryStore())
        except HistoryError as exc:
            # A damaged file or a newer schema: chat still works, unrecorded.
            log.error("history unavailable: %s", exc)
            return None

    def _download_manager(self) -> Any:
        try:
            from gemma_desktop.core.downloads import DownloadManager
        except ImportError:  # the downloads area is not installed
            return None
        return DownloadManager(
            catalog=self.catalog, token_provider=lambda: self.token_store.locate().token
        )

    def _download_panel(self, variant_id: str) -> Any:
        from gemma_desktop.ui.download_panel import DownloadPanel

        return DownloadPanel(self.download_manager, variant_id)

    def run_probe(self) -> ProbeReport:
        """The hardware check (blocking: the probe panel runs it in the executor)."""
        try:
            settings = load_settings(self.env, self.settings_store)
        except GemmaDesktopError:
            settings = None
        return run_probe(
            settings, gpu_reader=self.gpu_reader, token_store=self.token_store, env=self.env
        )

    def _remember_report(self, report: ProbeReport) -> None:
        self.report = report

    # --- start-up ----------------------------------------------------------------------------

    async def startup(self) -> None:
        """Check the machine, pick the model to run and start it if allowed."""
        self._token_task = asyncio.ensure_future(self.window.token_panel.refresh())
        report = await self.window.probe_panel.run_probe()
        if report is None:
            return
        settings = report.settings or self.settings
        variant_id = startup_variant(settings, report)
        self.host.set_variant(variant_id)
        self.window.picker.set_selected(variant_id)
        variant = self.catalog.get(variant_id)
        if variant_id != settings.model_id.value:
            self.window.notify(
                f"{self.catalog.get(settings.model_id.value).label} cannot run here: "
                f"using {variant.label}. See Hardware check for why."
            )
        if not settings.auto_start.value:
            return
        allowed, why = can_autostart(variant, report)
        if not allowed:
            if not settings.quiet.value:
                self.window.notify(f"Not starting the engine automatically: {why}")
            return
        if not settings.quiet.value:
            self.window.notify(
                f"Starting {variant.label} automatically "
                "(set ATOMR_INFER_GEMMA_AUTO=off to turn this off)."
            )
        await self.host.start()

    async def quiet_startup(self) -> None:
        """While the setup wizard runs: fill the panels, start nothing."""
        self._token_task = asyncio.ensure_future(self.window.token_panel.refresh())
        await self.window.probe_panel.run_probe()

    async def after_setup(self) -> None:
        """The wizard finished: take over the model it chose (its engine may already run)."""
        self.settings = self._load_settings()
        self.window.picker.set_selected(self.settings.model_id.value)
        if self.host.status.state.value == "not started":
            self.host.set_variant(self.settings.model_id.value)
        await self.window.probe_panel.run_probe()

    # --- diagnostics ----------------------------------------------------------------------------

    def diagnostics(self, trace: str = "") -> str:
        """Plain-text facts for a bug report; every token is redacted."""
        from PySide6 import __version__ as pyside_version
        from PySide6.QtCore import qVersion

        status = self.host.status
        lines = [
            f"{APP_NAME} {__version__}",
            f"Python {platform.python_version()} on {platform.platform()}",
            f"Qt {qVersion()}, PySide6 {pyside_version}",
            f"Engine: {status.state.value} ({status.model_id}) {status.detail}".rstrip(),
            f"Log file: {self.log_path}",
            "",
        ]
        if self.report is not None:
            lines += [self.report.as_text(), ""]
        if trace:
            lines += ["Error:", trace, ""]
        lines += ["Last log lines:", *_tail(self.log_path, 60)]
        return self.redactor.redact("\n".join(lines))

    # --- shutdown -------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        await self.window.connections.shutdown()
        await self.host.shutdown()
        if self.history is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.history.close)

    def close(self) -> None:
        """Detach logging and the crash handler (the window is closed separately)."""
        self.crash.uninstall()
        logging.getLogger().removeHandler(self.log_handler)
        self.log_handler.close()


def _tail(path: Path, count: int) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()[-20000:].splitlines()[-count:]
    except OSError:
        return ["(no log yet)"]


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
    """Run the desktop app until its window closes; returns the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_app(no_auto_start=args.no_auto_start)


def run_app(*, no_auto_start: bool = False) -> int:

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from gemma_desktop.ui import theme
    from gemma_desktop.ui.loop import create_loop
    from gemma_desktop.ui.single_instance import SingleInstance, raise_window
    from gemma_desktop.ui.tray import Tray
    from gemma_desktop.ui.wizard import SetupWizard, needs_wizard

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
    app = GemmaDesktopApp(loop=loop)
    # The tray keeps the app (and its engine) alive with the window closed;
    # without a tray host it makes closing the window quit. Either way, quitting
    # goes through Tray.quit, which shuts the engine down first.
    tray = Tray(
        app.window,
        app.host,
        store=app.settings_store,
        is_streaming=lambda: (t := app.window.chat.answer_task) is not None and not t.done(),
    ).install()
    tray.new_chat_requested.connect(app.window.chat.new_chat)
    app.window.quit_requested.connect(tray.request_quit)
    instance.activated.connect(lambda: raise_window(app.window))
    quitting = asyncio.Event()
    app.window.shutdown_finished.connect(quitting.set)
    qapp.aboutToQuit.connect(quitting.set)

    # Let Ctrl+C in a terminal quit cleanly (Python only sees signals while it
    # runs, hence the idle timer).
    signal.signal(signal.SIGINT, lambda *_: tray.request_quit())
    heartbeat = QTimer()
    heartbeat.start(250)
    heartbeat.timeout.connect(lambda: None)

    tasks: set[asyncio.Future[Any]] = set()

    def open_wizard() -> None:
        wizard = SetupWizard(
            host=app.host,
            store=app.settings_store,
            token_store=app.token_store,
            download_manager=app.download_manager,
            catalog=app.catalog,
            session_keys=app.remote_session_keys,
            probe=lambda settings, variant_id: run_probe(
                settings,
                variant_id=variant_id,
                gpu_reader=app.gpu_reader,
                token_store=app.token_store,
            ),
        )

        def done(completed: bool) -> None:
            if completed:
                app.window.show()
                task = asyncio.ensure_future(app.after_setup(), loop=loop)
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif not app.window.isVisible():
                tray.request_quit()

        wizard.finished.connect(done)
        wizard.show()
        app.wizard = wizard

    def rerun_setup() -> None:
        app.settings_store.update(setup_wizard=None)
        open_wizard()

    app.window.setup_requested.connect(rerun_setup)
    if needs_wizard(app.settings):
        open_wizard()
        startup: asyncio.Future[None] = asyncio.ensure_future(app.quiet_startup(), loop=loop)
    else:
        app.window.show()
        startup = asyncio.ensure_future(app.startup(), loop=loop)
    try:
        with loop:
            loop.run_until_complete(quitting.wait())
            if not startup.done():
                startup.cancel()
            loop.run_until_complete(app.shutdown())
    finally:
        instance.release()
        log.info("%s stopped", APP_NAME)
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
