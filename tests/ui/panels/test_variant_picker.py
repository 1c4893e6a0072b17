"""The variant picker: every catalog entry, fit verdicts from a real probe report,
and a choice that persists only when confirmed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from PySide6.QtCore import Qt

from gemma_desktop.core.machine.gpu import NvmlReader
from gemma_desktop.core.machine.probe import ProbeService, run_probe
from gemma_desktop.core.models.catalog import BUNDLED_MODEL_ID, VARIANTS, VariantCatalog
from gemma_desktop.core.models.hub_cache import is_on_disk
from gemma_desktop.core.settings import SettingsStore, load_settings
from gemma_desktop.ui.app_state import AppState
from gemma_desktop.ui.panels.variant_picker import VariantPicker
from tests.fixtures.nvml import RTX_3060, RTX_3060_TI, RTX_4090, Card, FakeNvml

SMALL = Card("NVIDIA T400", 4096, 300, (7, 5), 0x01, "GPU-00000000-0000-4000-8000-0000000t400")


def reader(card: Card) -> Any:
    return NvmlReader(FakeNvml([card])).read


def make_picker(qtbot: Any, confirm: Any = None) -> VariantPicker:
    catalog = VariantCatalog()
    picker = VariantPicker(
        catalog,
        AppState(SettingsStore(), ProbeService()),
        selected=load_settings().model_id.value,
        confirm=confirm,
    )
    qtbot.addWidget(picker)
    picker.show()
    return picker


def rows(picker: VariantPicker) -> dict[str, list[str]]:
    out = {}
    for i in range(picker.tree.topLevelItemCount()):
        item = picker.tree.topLevelItem(i)
        assert item is not None
        out[item.data(0, Qt.ItemDataRole.UserRole)] = [item.text(c) for c in range(5)]
    return out


def test_every_variant_with_size_vram_and_download_state(qtbot: Any) -> None:
    picker = make_picker(qtbot)
    table = rows(picker)
    assert list(table) == [v.id for v in VARIANTS]
    # The published download (15,992,595,884 bytes) and an estimate above the bf16 weights
    # alone (7.94 billion parameters, 14.8 GiB), not the seed's 4.5 GB floor.
    assert table["google/gemma-4-E4B-it"][1] == "14.9 GB"
    assert float(table["google/gemma-4-E4B-it"][2].removesuffix(" GB")) > 14.8
    assert table["google/gemma-4-E4B-it"][3] == "No"
    assert table[BUNDLED_MODEL_ID][2] == "none (CPU)"
    # Provisioned once into build/models by the engine fixtures or `make run`.
    expected = "Yes" if is_on_disk(BUNDLED_MODEL_ID) else "No"
    assert table[BUNDLED_MODEL_ID][3] == expected
    assert all(r[4] == "Checking…" for r in table.values())


def test_fit_verdicts_follow_the_probe(qtbot: Any) -> None:
    picker = make_picker(qtbot)
    picker.set_report(run_probe(gpu_reader=reader(RTX_4090)))
    table = rows(picker)
    assert table["google/gemma-4-E4B-it"][4] == "Fits"
    assert table["google/gemma-4-E2B-it"][4] == "Fits"
    assert table[BUNDLED_MODEL_ID][4] == "Runs on the CPU"
    picker.select("google/gemma-4-E4B-it")
    detail = picker.detail_label.text()
    assert "GPU 0, NVIDIA GeForce RTX 4090" in detail  # which card
    assert "Memory: weights" in detail and "vLLM may use" in detail and ": fits" in detail

    picker.set_report(run_probe(gpu_reader=reader(RTX_3060)))
    table = rows(picker)
    assert table["google/gemma-4-E4B-it"][4] == "Fits with CPU offload"
    picker.select("google/gemma-4-E2B-it")
    assert "For full speed:" in picker.detail_label.text()

    picker.set_report(run_probe(gpu_reader=reader(SMALL)))
    table = rows(picker)
    # E2B's per-layer embeddings alone (4.4 GiB) stay on the GPU: not on a 4 GB card either.
    assert table["google/gemma-4-E2B-it"][4] == "Does not fit → try Gemma 3 270M (bundled)"
    assert table["google/gemma-4-E4B-it"][4] == "Does not fit → try Gemma 3 270M (bundled)"
    picker.select("google/gemma-4-E4B-it")
    assert "Suggested instead: Gemma 3 270M (bundled)" in picker.detail_label.text()
    assert picker.download_button.isVisible()


def test_choice_persists(qtbot: Any, arun: Any) -> None:
    picker = make_picker(qtbot)
    picker.select(BUNDLED_MODEL_ID)
    with qtbot.waitSignal(picker.variant_chosen) as chosen:
        assert arun(picker.choose(BUNDLED_MODEL_ID)) is True
    assert chosen.args == [BUNDLED_MODEL_ID]
    saved = json.loads(SettingsStore().path.read_text())
    assert saved["model_id"] == BUNDLED_MODEL_ID
    assert load_settings().model_id.value == BUNDLED_MODEL_ID
    assert "(selected)" in rows(picker)[BUNDLED_MODEL_ID][0]
    assert not picker.use_button.isEnabled()
    assert not picker.download_button.isVisible()


@pytest.mark.parametrize("answer", [False, True])
def test_confirmation_decides(qtbot: Any, arun: Any, answer: bool) -> None:
    asked: list[str] = []

    async def confirm(variant_id: str) -> bool:
        asked.append(variant_id)
        return answer

    picker = make_picker(qtbot, confirm)
    assert arun(picker.choose("google/gemma-4-E2B-it")) is answer
    assert asked == ["google/gemma-4-E2B-it"]
    assert SettingsStore().path.exists() is answer
    assert (picker.selected == "google/gemma-4-E2B-it") is answer


def test_the_models_page_on_an_8gb_card_names_the_context_and_the_fallback(
    make_app: Any, arun: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window's Models page, fed by the window's own probe: E2B fits an 8 GB card at
    32,768 tokens (worked out in tests/core/machine/test_context_choice.py), E4B does
    not, and its row and details point at E2B and that context."""
    from gemma_desktop.core.machine import probe as probe_mod

    monkeypatch.setattr(probe_mod, "vllm_distribution", lambda: ("cuda", "0.32.0"))
    app = make_app(gpu_reader=reader(RTX_3060_TI))
    arun(app.state.refresh())
    app.window.show_page(2)
    picker = app.window.picker
    table = rows(picker)
    assert table["google/gemma-4-E2B-it"][4] == "Fits with CPU offload at 32,768 tokens"
    assert table["google/gemma-4-E4B-it"][4] == "Does not fit → try Gemma 4 E2B-it"
    picker.select("google/gemma-4-E2B-it")
    detail = picker.detail_label.text()
    assert "at 32,768 tokens of context, the longest that fits this card" in detail
    assert "the model&#x27;s full context (131,072 tokens) needs 11.6 GB" in detail
    assert "For a longer context: text-only mode" in detail
    picker.select("google/gemma-4-E4B-it")
    detail = picker.detail_label.text()
    assert "google/gemma-4-E2B-it, which fits at 32,768 tokens of context" in detail
    assert "No Gemma 4 fits" not in detail
