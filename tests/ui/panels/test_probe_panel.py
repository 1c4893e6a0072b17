"""The hardware check panel with the real probe (GPU readings injected where needed)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from PySide6.QtGui import QGuiApplication

from gemma_desktop.core.machine.gpu import GpuInfo, GpuUnavailableError, NvmlReader
from gemma_desktop.core.machine.probe import (
    CheckStatus,
    Outcome,
    ProbeReport,
    ProbeService,
    run_probe,
)
from gemma_desktop.core.settings import SettingsStore
from gemma_desktop.ui.app_state import AppState
from gemma_desktop.ui.panels.probe_panel import ProbePanel
from tests.fixtures.nvml import RTX_4090 as RTX_4090_CARD
from tests.fixtures.nvml import FakeNvml

RTX_4090 = NvmlReader(FakeNvml([RTX_4090_CARD])).read()[0]


def no_gpu() -> list[GpuInfo]:
    raise GpuUnavailableError(
        "No NVIDIA driver found (the NVML library is not installed).",
        "Install the NVIDIA driver.",
    )


class RecordingProbe(ProbeService):
    """The real probe, noting which thread ran it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs
        self.threads: list[threading.Thread] = []

    def run(self, settings: Any = None, variant_id: str | None = None) -> ProbeReport:
        self.threads.append(threading.current_thread())
        return run_probe(**self.kwargs)


class BrokenProbe(ProbeService):
    def run(self, settings: Any = None, variant_id: str | None = None) -> ProbeReport:
        raise RuntimeError("boom")


def state_with(probe: ProbeService) -> AppState:
    return AppState(SettingsStore(), probe)


def test_skipped_report_shows_reason_hint_and_checks(qtbot: Any, arun: Any) -> None:
    probe = RecordingProbe(gpu_reader=no_gpu)
    panel = ProbePanel(state_with(probe))
    qtbot.addWidget(panel)
    panel.show()
    with qtbot.waitSignal(panel.report_changed, timeout=30_000) as changed:
        report = arun(panel.rerun())
    assert changed.args == [report]
    assert probe.threads and probe.threads[0] is not threading.main_thread()
    assert report.outcome is Outcome.SKIPPED
    assert "Cannot run here" in panel.outcome_label.text()
    assert "No NVIDIA driver" in panel.outcome_label.text()
    assert "bundled" in panel.hint_label.text()
    rows = {row.check.id: row for row in panel.rows()}
    assert set(rows) == {c.id for c in report.checks}
    assert rows["gpu"].check.status is CheckStatus.FAIL
    assert rows["gpu"].accessibleName() == "NVIDIA GPU: Failed"
    assert rows["gpu"].hint.text()


def test_ready_with_injected_gpu_and_rerun(qtbot: Any, arun: Any, monkeypatch: Any) -> None:
    from gemma_desktop.core.machine import probe as probe_module

    monkeypatch.setattr(probe_module, "vllm_distribution", lambda: ("cuda", "0.11.0"))
    monkeypatch.setenv("HF_TOKEN", "hf_panelTestToken123456")
    panel = ProbePanel(
        state_with(
            RecordingProbe(gpu_reader=lambda: [RTX_4090], variant_id="google/gemma-4-E2B-it")
        )
    )
    qtbot.addWidget(panel)
    report = arun(panel.rerun())
    assert report.outcome is Outcome.READY, report.as_text()
    assert panel.outcome_label.text().startswith("<b>Ready</b>")
    first_rows = panel.rows()
    report2 = arun(panel.rerun())
    assert report2 is not report and panel.report is report2
    assert panel.rows() != first_rows and len(panel.rows()) == len(first_rows)

    panel.copy_button.click()
    copied = QGuiApplication.clipboard().text()
    assert copied == report2.as_text()
    assert "RTX 4090" in copied
    assert "hf_panelTestToken123456" not in copied


def test_probe_bug_is_reported_not_raised(qtbot: Any, arun: Any) -> None:
    panel = ProbePanel(state_with(BrokenProbe()))
    qtbot.addWidget(panel)
    assert arun(panel.rerun()) is None
    assert "failed" in panel.status_label.text()
    assert panel.rerun_button.isEnabled()


@pytest.mark.parametrize("name", ["rerun_button", "copy_button"])
def test_buttons_are_named(qtbot: Any, name: str) -> None:
    panel = ProbePanel(state_with(ProbeService(gpu_reader=no_gpu)))
    qtbot.addWidget(panel)
    assert getattr(panel, name).accessibleName()
