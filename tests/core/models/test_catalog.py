"""The seed module's tests, ported, plus the catalog's own rules."""

from __future__ import annotations

import pytest

from gemma_desktop.core.errors import UnsupportedVariantError
from gemma_desktop.core.models import catalog
from gemma_desktop.core.models.catalog import (
    BUNDLED_MODEL_ID,
    SUPPORTED_VARIANTS,
    VariantCatalog,
    fallback_variant,
    min_disk_gb,
    min_vram_gb,
    validate_variant,
)
from gemma_desktop.core.settings import load_settings


def test_defaults_pick_e4b_it() -> None:
    settings = load_settings(env={})
    assert settings.model_id.value == "google/gemma-4-E4B-it"
    assert settings.deployment_name.value == "gemma-local"
    assert settings.gpu_memory_utilization.value == 0.5
    assert settings.auto_start.value is True


def test_validate_variant_accepts_all_four() -> None:
    assert SUPPORTED_VARIANTS == (
        "google/gemma-4-E2B",
        "google/gemma-4-E2B-it",
        "google/gemma-4-E4B",
        "google/gemma-4-E4B-it",
    )
    for variant in SUPPORTED_VARIANTS:
        assert validate_variant(variant).id == variant


def test_validate_variant_rejects_unknown_with_the_supported_list() -> None:
    with pytest.raises(UnsupportedVariantError) as info:
        validate_variant("google/some-other-model")
    message = str(info.value)
    assert "google/some-other-model" in message
    for variant in SUPPORTED_VARIANTS:
        assert variant in message


def test_fallback_e4b_to_e2b() -> None:
    assert fallback_variant("google/gemma-4-E4B-it") == "google/gemma-4-E2B-it"
    assert fallback_variant("google/gemma-4-E4B") == "google/gemma-4-E2B"
    # E2B has no smaller supported variant.
    assert fallback_variant("google/gemma-4-E2B-it") is None
    assert fallback_variant("google/gemma-4-E2B") is None
    assert fallback_variant(BUNDLED_MODEL_ID) is None


def test_vram_floors_match_table() -> None:
    assert min_vram_gb("google/gemma-4-E2B-it") == 2.5
    assert min_vram_gb("google/gemma-4-E2B") == 2.5
    assert min_vram_gb("google/gemma-4-E4B-it") == 4.5
    assert min_vram_gb("google/gemma-4-E4B") == 4.5
    assert min_vram_gb("unknown") is None


def test_disk_floors_match_table() -> None:
    assert min_disk_gb("google/gemma-4-E2B-it") == 4.0
    assert min_disk_gb("google/gemma-4-E4B-it") == 7.0
    assert min_disk_gb("unknown") is None


def test_bundled_model_is_separate_and_cpu_capable() -> None:
    bundled = VariantCatalog().bundled
    assert bundled.id not in SUPPORTED_VARIANTS
    assert not bundled.needs_gpu and not bundled.gated and bundled.is_bundled
    assert bundled.hub_url is None


def test_every_fallback_is_in_the_catalog_and_smaller() -> None:
    cat = VariantCatalog()
    for variant in cat:
        if variant.fallback is not None:
            smaller = cat.get(variant.fallback)
            assert (smaller.min_vram_gb or 0) < (variant.min_vram_gb or 0)
            assert smaller.instruction_tuned == variant.instruction_tuned


def test_catalog_is_one_table() -> None:
    cat = VariantCatalog()
    assert len(cat) == len(catalog.VARIANTS)
    assert [v.id for v in cat] == [v.id for v in catalog.VARIANTS]
    assert cat.default.id == "google/gemma-4-E4B-it"
    with pytest.raises(UnsupportedVariantError):
        cat.get("google/gemma-4-E9B")
