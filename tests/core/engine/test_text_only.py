"""Text-only mode (``ATOMR_INFER_GEMMA_TEXT_ONLY``) in the engine's config and abilities."""

from __future__ import annotations

from pathlib import Path

from gemma_desktop.core.engine.assembly import MachineFacts, local_config
from gemma_desktop.core.engine.config import EngineConfig
from gemma_desktop.core.engine.vllm_local import local_abilities
from gemma_desktop.core.models.catalog import VariantCatalog
from gemma_desktop.core.settings import load_settings

CATALOG = VariantCatalog()


def config_for(variant_id: str, **env: str) -> EngineConfig:
    return local_config(
        load_settings(env=env), CATALOG.get(variant_id), MachineFacts.cpu(), model_path=Path("/m")
    )


def test_text_only_switches_every_modality_off_video_included() -> None:
    on = config_for("google/gemma-4-E4B-it", ATOMR_INFER_GEMMA_TEXT_ONLY="1")
    assert on.limit_mm_per_prompt == {"image": 0, "audio": 0, "video": 0}
    assert on.to_engine_args_kwargs()["limit_mm_per_prompt"] == on.limit_mm_per_prompt
    assert on.text_only
    off = config_for("google/gemma-4-E4B-it")
    assert off.limit_mm_per_prompt is None and not off.text_only
    assert "limit_mm_per_prompt" not in off.to_engine_args_kwargs()


def test_the_bundled_text_model_never_gets_limits() -> None:
    bundled = config_for(CATALOG.bundled.id, ATOMR_INFER_GEMMA_TEXT_ONLY="on")
    assert bundled.limit_mm_per_prompt is None


def test_abilities_follow_the_catalog_and_text_only_mode() -> None:
    full = local_abilities(config_for("google/gemma-4-E2B-it"))
    assert (full.images, full.audio, full.thinking, full.why_not) == (True, True, True, "")
    base = local_abilities(config_for("google/gemma-4-E2B"))
    assert base.images and base.audio and not base.thinking
    text = local_abilities(config_for("google/gemma-4-E2B-it", ATOMR_INFER_GEMMA_TEXT_ONLY="1"))
    assert not text.images and not text.audio and text.thinking
    assert "ATOMR_INFER_GEMMA_TEXT_ONLY" in text.why_not
    bundled = local_abilities(config_for(CATALOG.bundled.id))
    assert not bundled.images and bundled.why_not == "The bundled Gemma 3 270M reads text only."
