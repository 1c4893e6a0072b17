"""The run's settings and the probe's latest report, in one object with change signals.

Built once by ``app.py`` and handed to every widget that shows or uses them
(the hardware check, the model page, the wizard, the engine host's factory),
so no widget loads settings or runs the probe itself and all of them agree.
The probe runs off the UI thread (it reads NVML, the keyring and the disk);
only its finished report reaches the widgets, through :attr:`report_changed`.

Signals:
    report_changed(ProbeReport): a probe run finished.
    probing_changed(bool): a probe run started (``True``) or ended (``False``).
    probe_failed(str): the probe itself broke (a bug: the crash handler has it too).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from PySide6.QtCore import QObject, Signal

from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.machine.probe import ProbeReport, ProbeService
from gemma_desktop.core.settings import Settings, SettingsStore, load_settings
from gemma_desktop.ui.tasks import run_blocking, spawn

log = logging.getLogger(__name__)


class AppState(QObject):
    """Settings and probe report of this run (see the module docstring)."""

    report_changed = Signal(object)
    probing_changed = Signal(bool)
    probe_failed = Signal(str)

    def __init__(
        self,
        store: SettingsStore,
        probe: ProbeService,
        *,
        env: Mapping[str, str] | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.store = store
        self.probe = probe
        self.env = env
        # Read once before the window appears (a tiny file); never raises:
        # a bad value or a broken file becomes a warning the probe shows.
        self._settings = load_settings(env, store, strict=False)
        for warning in self._settings.warnings:
            log.warning("settings: %s", warning.message)
        self._report: ProbeReport | None = None
        self._first_report: asyncio.Future[ProbeReport] | None = None
        self._running: asyncio.Future[ProbeReport | None] | None = None

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def report(self) -> ProbeReport | None:
        """The latest probe report (``None`` until the first run finishes)."""
        return self._report

    @property
    def probing(self) -> bool:
        return self._running is not None and not self._running.done()

    # --- settings -----------------------------------------------------------------------

    async def reload_settings(self) -> Settings:
        """Read the settings again (after the wizard or a panel saved something)."""
        self._settings = await run_blocking(
            lambda: load_settings(self.env, self.store, strict=False)
        )
        return self._settings

    async def update_settings(self, **changes: Any) -> Settings:
        """Save ``changes`` (``None`` removes a key) and reload."""
        await run_blocking(lambda: self.store.update(**changes))
        return await self.reload_settings()

    # --- the probe ----------------------------------------------------------------------

    async def refresh(self, *, reload_settings: bool = True) -> ProbeReport | None:
        """Run the probe (joining a run already under way); ``None`` if it broke."""
        if not self.probing:
            self._running = asyncio.ensure_future(self._run(reload_settings))
        assert self._running is not None
        return await asyncio.shield(self._running)

    async def _run(self, reload_settings: bool) -> ProbeReport | None:
        self.probing_changed.emit(True)
        report: ProbeReport | None = None
        failure: Exception | None = None
        try:
            if reload_settings:
                await self.reload_settings()
            report = await run_blocking(self.probe.run, self._settings, None)
        except Exception as exc:  # the probe reports problems; an exception is a bug
            log.exception("the hardware check failed")
            failure = exc
        self.probing_changed.emit(False)
        if report is None:
            name = type(failure).__name__
            self.probe_failed.emit(f"The check failed: {name}")
            waiting, self._first_report = self._first_report, None
            if waiting is not None and not waiting.done():
                waiting.set_exception(
                    GemmaDesktopError(
                        f"The hardware check failed ({name}).",
                        "Re-run it on the Hardware check page; the log has the details.",
                    )
                )
            return None
        self._report = report
        if self._first_report is not None and not self._first_report.done():
            self._first_report.set_result(report)
        self.report_changed.emit(report)
        return report

    async def report_ready(self) -> ProbeReport:
        """The probe's report, waiting for the first run if it has not finished yet."""
        if self._report is not None:
            return self._report
        if self._first_report is None:
            self._first_report = asyncio.get_running_loop().create_future()
        waiting = self._first_report
        if not self.probing:
            spawn(self.refresh(reload_settings=False), "The hardware check")
        return await asyncio.shield(waiting)
