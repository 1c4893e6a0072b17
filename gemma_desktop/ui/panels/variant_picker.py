"""The variant picker: every catalog entry with its download size, its memory need on a
GPU (the estimate at the settings' context), whether it is downloaded, and whether it
fits this machine (from the probe report: at which context, where the app chose a
shorter one than the model's own to make it fit), with the estimate's breakdown, the
changes that would make a model fit and those that give it a longer context.

Choosing a variant persists it (``AppState.update_settings(model_id=...)``).
When the engine is running, ``confirm`` is awaited first (the main window asks
before restarting the engine). The setup wizard shows the same table with
``choosing=False``: no title, no Use or Download buttons (its Next button saves
the choice, its next step downloads). Whether a model is downloaded comes from
:mod:`gemma_desktop.core.models.hub_cache`, like everywhere else.

For a downloaded model, Delete… (asks, shows what it frees; refused while the model
runs or downloads), Verify (hashes against the Hub's, else the cache's) and Open folder
call :mod:`gemma_desktop.core.models.local_models` off the UI thread.

Signals:
    variant_chosen(str): the user chose (and confirmed) a variant; it is saved.
    download_requested(str): the user asked to download a variant.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Awaitable, Callable

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.machine.memory import gib
from gemma_desktop.core.machine.probe import FitKind, FitVerdict, ProbeReport, vram_need_bytes
from gemma_desktop.core.models.catalog import Variant, VariantCatalog
from gemma_desktop.core.models.hub_cache import is_on_disk, local_model_path
from gemma_desktop.ui import dialogs, theme
from gemma_desktop.ui.app_state import AppState
from gemma_desktop.ui.tasks import run_blocking, spawn

log = logging.getLogger(__name__)

Confirm = Callable[[str], Awaitable[bool]]

FIT_TEXT = {
    FitKind.FITS: "Fits",
    FitKind.FITS_WITH_OFFLOAD: "Fits with CPU offload",
    FitKind.DOES_NOT_FIT: "Does not fit",
    FitKind.CPU: "Runs on the CPU",
}
FIT_ICON = {
    FitKind.FITS: "status-ok",
    FitKind.FITS_WITH_OFFLOAD: "status-warn",
    FitKind.DOES_NOT_FIT: "status-fail",
    FitKind.CPU: "status-ok",
}
COLUMNS = ("Model", "Download", "VRAM need", "Downloaded", "On this machine")


class VariantPicker(QWidget):
    """A table of variants; Use this model persists the choice."""

    variant_chosen = Signal(str)
    download_requested = Signal(str)

    def __init__(
        self,
        catalog: VariantCatalog,
        state: AppState,
        *,
        selected: str,
        confirm: Confirm | None = None,
        choosing: bool = True,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._catalog = catalog
        self._state = state
        self._confirm = confirm
        self._selected = selected
        self.report: ProbeReport | None = state.report

        title = QLabel("Model")
        title.setProperty("role", "title")
        self.tree = QTreeWidget()
        self.tree.setObjectName("variants")
        self.tree.setAccessibleName("Models")
        self.tree.setColumnCount(len(COLUMNS))
        self.tree.setHeaderLabels(list(COLUMNS))
        self.tree.setRootIsDecorated(False)
        self.tree.setUniformRowHeights(True)
        self.tree.setAlternatingRowColors(True)
        header = self.tree.header()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        for col in (1, 2, 3):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)

        self.detail_label = QLabel("")
        self.detail_label.setObjectName("variantDetail")
        self.detail_label.setAccessibleName("Model details")
        self.detail_label.setWordWrap(True)
        self.detail_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.use_button = QPushButton("Use this model")
        self.use_button.setProperty("role", "primary")
        self.use_button.setAccessibleName("Use selected model")
        self.download_button = QPushButton(theme.icon("download"), "Download…")
        self.download_button.setAccessibleName("Download selected model")
        self.verify_button = QPushButton("Verify")
        self.verify_button.setAccessibleName("Verify selected model's files")
        self.delete_button = QPushButton("Delete…")
        self.delete_button.setAccessibleName("Delete selected model")
        self.open_folder_button = QPushButton("Open folder")
        self.open_folder_button.setAccessibleName("Open selected model's folder")
        self.status_label = QLabel("")
        self.status_label.setObjectName("pickerStatus")
        self.status_label.setAccessibleName("Model choice status")
        self.status_label.setProperty("role", "muted")
        self.status_label.setWordWrap(True)

        buttons = QHBoxLayout()
        buttons.addWidget(self.status_label, 1)
        buttons.addWidget(self.open_folder_button)
        buttons.addWidget(self.verify_button)
        buttons.addWidget(self.delete_button)
        buttons.addWidget(self.download_button)
        buttons.addWidget(self.use_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12)
        layout.addWidget(title)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.detail_label)
        layout.addLayout(buttons)

        if not choosing:
            for widget in (
                title,
                self.use_button,
                self.download_button,
                self.verify_button,
                self.delete_button,
                self.open_folder_button,
            ):
                widget.hide()
            layout.setContentsMargins(0, 0, 0, 0)
        self._choosing = choosing
        state.report_changed.connect(self.set_report)
        self.tree.currentItemChanged.connect(lambda *_: self._show_detail())
        self.tree.itemActivated.connect(lambda *_: self.choose_current())
        self.use_button.clicked.connect(self.choose_current)
        self.download_button.clicked.connect(
            lambda: self.download_requested.emit(self.current_id() or "")
        )
        self.delete_button.clicked.connect(
            lambda: spawn(self.delete(self.current_id() or ""), "Deleting a model")
        )
        self.verify_button.clicked.connect(
            lambda: spawn(self.verify(self.current_id() or ""), "Verifying a model")
        )
        self.open_folder_button.clicked.connect(self.open_folder)
        self.populate()

    # --- content -----------------------------------------------------------------

    @property
    def selected(self) -> str:
        """The saved choice."""
        return self._selected

    def set_selected(self, variant_id: str) -> None:
        """Show ``variant_id`` as the model in use (without saving it)."""
        self._selected = variant_id
        self.populate()
        self.select(variant_id)

    def set_report(self, report: ProbeReport) -> None:
        self.report = report
        self.populate()

    def verdict(self, variant: Variant) -> FitVerdict | None:
        return self.report.fit(variant) if self.report is not None else None

    def populate(self) -> None:
        current = self.current_id() or self._selected
        self.tree.clear()
        for variant in self._catalog:
            item = QTreeWidgetItem()
            label = variant.label + ("  (selected)" if variant.id == self._selected else "")
            item.setText(0, label)
            item.setData(0, Qt.ItemDataRole.UserRole, variant.id)
            item.setToolTip(0, f"{variant.id}\n{variant.description}")
            item.setText(1, f"{variant.download_gb:.1f} GB")
            need = self._vram_need(variant)
            item.setText(2, gib(need) if need is not None else "none (CPU)")
            if need is not None:
                item.setToolTip(
                    2,
                    "Weights, KV cache for one full context, encoders and vLLM's working "
                    f"memory; the seed's minimum is {variant.min_vram_gb:g} GB.",
                )
            cached = self._cached(variant.id)
            item.setText(3, "Yes" if cached else "No")
            verdict = self.verdict(variant)
            if verdict is None:
                item.setText(4, "Checking…")
            else:
                text = FIT_TEXT[verdict.kind]
                if verdict.plan is not None and verdict.plan.context.shortened:
                    text += f" at {verdict.plan.context.tokens:,} tokens"
                if verdict.kind is FitKind.DOES_NOT_FIT and verdict.suggestion:
                    text += f" → try {self._label(verdict.suggestion)}"
                item.setText(4, text)
                item.setIcon(4, theme.icon(FIT_ICON[verdict.kind]))
                item.setToolTip(4, verdict.message)
            if variant.id == self._selected:
                font = item.font(0)
                font.setBold(True)
                item.setFont(0, font)
            self.tree.addTopLevelItem(item)
            if variant.id == current:
                self.tree.setCurrentItem(item)
        self._show_detail()

    def _vram_need(self, variant: Variant) -> int | None:
        if self.report is not None:
            return self.report.vram_need_bytes(variant)
        return vram_need_bytes(variant, self._state.settings)

    def _cached(self, variant_id: str) -> bool:
        try:
            return is_on_disk(variant_id, self._state.settings.hf_hub_cache.value)
        except OSError:
            return False

    def _label(self, variant_id: str) -> str:
        try:
            return self._catalog.get(variant_id).label
        except GemmaDesktopError:
            return variant_id

    def current_id(self) -> str | None:
        item = self.tree.currentItem() if hasattr(self, "tree") else None
        return None if item is None else str(item.data(0, Qt.ItemDataRole.UserRole))

    def select(self, variant_id: str) -> None:
        """Move the table's cursor to ``variant_id`` (does not choose it)."""
        for index in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(index)
            if item is not None and item.data(0, Qt.ItemDataRole.UserRole) == variant_id:
                self.tree.setCurrentItem(item)
                return

    def _show_detail(self) -> None:
        variant_id = self.current_id()
        if variant_id is None:
            self.detail_label.clear()
            self.download_button.setVisible(False)
            return
        variant = self._catalog.get(variant_id)
        lines = [f"<b>{html.escape(variant.label)}</b> — {html.escape(variant.description)}"]
        verdict = self.verdict(variant)
        if verdict is not None:
            lines.append(html.escape(verdict.message))
            if verdict.breakdown:
                lines.append(f"Memory: {html.escape(verdict.breakdown)}.")
            if verdict.fixes:
                fit = verdict.kind is FitKind.DOES_NOT_FIT
                lead = "To make it fit" if fit else "For full speed"
                lines.append(f"{lead}: " + html.escape("; or ".join(verdict.fixes)) + ".")
            else:
                if verdict.hint:
                    lines.append(html.escape(verdict.hint))
                if verdict.suggestion and verdict.kind is not FitKind.FITS:
                    suggested = html.escape(self._label(verdict.suggestion))
                    lines.append(f"Suggested instead: {suggested}.")
            if verdict.longer:
                lines.append(
                    "For a longer context: " + html.escape("; or ".join(verdict.longer)) + "."
                )
        if variant.gated:
            lines.append("Gated on Hugging Face: accept the license and save a token first.")
        self.detail_label.setText("<br/>".join(lines))
        needs_download = not variant.is_bundled and not self._cached(variant.id)
        self.download_button.setVisible(needs_download and self._choosing)
        on_disk = self._choosing and not needs_download
        self.open_folder_button.setVisible(on_disk)
        self.verify_button.setVisible(on_disk and not variant.is_bundled)
        self.delete_button.setVisible(on_disk and not variant.is_bundled)
        self.use_button.setEnabled(variant_id != self._selected)

    # --- choosing -----------------------------------------------------------------------

    def choose_current(self) -> None:
        variant_id = self.current_id()
        if self._choosing and variant_id is not None and variant_id != self._selected:
            spawn(self.choose(variant_id), "Choosing a model")

    async def choose(self, variant_id: str) -> bool:
        """Confirm (if needed), persist and announce ``variant_id``; ``False`` if declined."""
        if self._confirm is not None and not await self._confirm(variant_id):
            self.status_label.setText("Kept the current model.")
            self.select(self._selected)
            return False
        try:
            await self._state.update_settings(model_id=variant_id)
        except GemmaDesktopError as exc:
            self.status_label.setText(f"Could not save the choice: {exc.reason} {exc.hint}")
            return False
        self._selected = variant_id
        self.status_label.setText(f"Using {self._label(variant_id)}.")
        self.populate()
        self.variant_chosen.emit(variant_id)
        return True

    # --- the model's files: delete, verify, open folder ------------------------------------

    async def delete(self, variant_id: str) -> bool:
        """Ask, then delete ``variant_id`` from the Hugging Face cache; ``False`` if declined
        or refused (the status line says why: it runs, or it is being downloaded)."""
        from gemma_desktop.core.models import local_models
        from gemma_desktop.core.models.downloads import format_bytes

        hub_cache = self._state.settings.hf_hub_cache.value
        label = self._label(variant_id)
        self.delete_button.setEnabled(False)
        try:
            try:
                model = await run_blocking(
                    local_models.get_model, variant_id, hub_cache, self._catalog
                )
                # Refuse before asking: a running model is not deleted whatever the answer.
                await run_blocking(_check_not_in_use, variant_id)
            except GemmaDesktopError as exc:
                self.status_label.setText(f"{exc.reason} {exc.hint}")
                return False
            where = f" in {model.path}" if model.path is not None else ""
            if not await dialogs.ask(
                self,
                "Delete model",
                f"Delete {label} from this computer?",
                informative=f"It frees {format_bytes(model.size_on_disk)}{where}. "
                "Downloading it again takes the same time as the first download.",
                yes_text="Delete",
            ):
                return False
            try:
                result = await run_blocking(
                    local_models.delete_model, variant_id, hub_cache, self._catalog
                )
            except (GemmaDesktopError, OSError) as exc:
                reason = (
                    f"{exc.reason} {exc.hint}"
                    if isinstance(exc, GemmaDesktopError)
                    else f"Could not delete {label}: {exc}"
                )
                self.status_label.setText(reason)
                return False
        finally:
            self.delete_button.setEnabled(True)
        self.status_label.setText(f"Deleted {label}: {format_bytes(result.freed_bytes)} freed.")
        self.populate()
        return True

    async def verify(self, variant_id: str) -> bool:
        """Hash the model's files (the Hub's hashes, else the cache's); ``True`` when all match."""
        from gemma_desktop.core.models.downloads import DownloadManager
        from gemma_desktop.core.models.local_models import verify_model

        label = self._label(variant_id)
        manager = DownloadManager(
            catalog=self._catalog, cache_dir=self._state.settings.hf_hub_cache.value
        )
        self.verify_button.setEnabled(False)
        self.status_label.setText(f"Checking the files of {label}…")
        try:
            report = await run_blocking(lambda: verify_model(variant_id, manager=manager))
        except GemmaDesktopError as exc:
            self.status_label.setText(f"{exc.reason} {exc.hint}")
            return False
        finally:
            self.verify_button.setEnabled(True)
        against = "the Hub's hashes" if report.against == "hub" else "the cache's own hashes"
        note = f" {report.note}" if report.note else ""
        if report.ok:
            self.status_label.setText(
                f"All {len(report.files)} files of {label} match {against}.{note}"
            )
        else:
            names = ", ".join(f.path for f in report.failed)
            self.status_label.setText(
                f"{len(report.failed)} file(s) of {label} do not match {against}: {names}. "
                f"Delete the model and download it again.{note}"
            )
        return report.ok

    def model_folder(self, variant_id: str) -> str | None:
        """The folder the engine loads ``variant_id`` from, if it is downloaded."""
        path = local_model_path(variant_id, self._state.settings.hf_hub_cache.value)
        return str(path) if path is not None else None

    def open_folder(self) -> None:
        variant_id = self.current_id()
        folder = self.model_folder(variant_id) if variant_id is not None else None
        if folder is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(folder))


def _check_not_in_use(variant_id: str) -> None:
    """Raise the refusal while ``variant_id`` runs or downloads (on a worker thread)."""
    from gemma_desktop.core.models.model_use import exclusive_use

    with exclusive_use(variant_id):
        pass
