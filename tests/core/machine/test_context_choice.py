"""The context each model gets on real cards: the longest that fits, a shorter one before CPU
offload, and a fallback that names the context at which the smaller model fits.

The cards are the NVML stand-in's (tests/fixtures/nvml.py) with the totals ``nvidia-smi``
reports (an 8 GB RTX 3060 Ti 8192 MiB with 7600 MiB free under a desktop session, RTX 3060
12288 MiB, RTX 4080 16376 MiB, RTX 4090 24564 MiB), and each of them with half its memory
taken by another program.

The expected contexts were worked out by hand from those figures and the published ones
(catalog: E2B's per-layer embeddings and token embeddings, 2,765,227,776 bf16 parameters,
5.15 GiB, stay on the GPU; its decoder and encoders, 4.36 GiB, can be offloaded). E2B on
the 8 GB card, the case the issue is about:

* vLLM may use 0.86 × 8192 MiB = 6.88 GiB: (7600 − 512 MiB for the CUDA context) / 8192
  is 0.865, rounded down to whole hundredths;
* with every layer it can offloaded, what stays is 5.15 GiB + the KV cache + 1.31 GiB of
  working memory (images and audio on); E2B's three full-attention layers that own a
  cache keep 3 × 2 × 512 × 2 bytes = 6 KiB per token, so 65,536 tokens need 0.44 GiB
  of KV (with the sliding-window layers) and 32,768 need 0.25 GiB;
* 5.15 + 0.44 + 1.31 = 6.90 GiB > 6.88 at 65,536 tokens; 5.15 + 0.25 + 1.31 = 6.72 ≤
  6.88 at 32,768: the engine gets 32,768 tokens, its full 131,072 need 11.6 GB.

The whole table is also derived here (:func:`_expected`) from the cards' MiB, the
published figures through the memory estimate (itself checked against vLLM's own KV
planning in test_memory.py) and the rule as the README states it, not from the planner.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from gemma_desktop import cli
from gemma_desktop.core.engine.config import EngineConfig
from gemma_desktop.core.machine import probe as probe_mod
from gemma_desktop.core.machine.gpu import GIB, MIB, GpuInfo, NvmlReader
from gemma_desktop.core.machine.memory import ModelFigures, estimate, figures_for
from gemma_desktop.core.machine.probe import CheckStatus, FitKind, Outcome, run_probe
from gemma_desktop.core.models.catalog import BUNDLED_MODEL_ID, VariantCatalog
from gemma_desktop.core.secrets import TokenStore
from gemma_desktop.core.settings import SettingsStore, load_settings
from tests.fixtures.nvml import RTX_3060, RTX_3060_TI, RTX_4080, RTX_4090, Card, FakeNvml

E2B, E4B = "google/gemma-4-E2B-it", "google/gemma-4-E4B-it"
TOKEN = "hf_abcdefghijklmnopqrstuvwxyz012345"
CATALOG = VariantCatalog()

CARDS = {
    "8gb": RTX_3060_TI,
    "12gb": RTX_3060,
    "16gb": RTX_4080,
    "24gb": RTX_4090,
    "8gb-half-taken": RTX_3060_TI.with_used(4096),
    "12gb-half-taken": RTX_3060.with_used(6144),
    "16gb-half-taken": RTX_4080.with_used(8188),
    "24gb-half-taken": RTX_4090.with_used(12282),
}

#: (card, variant, text-only) → (context the engine gets, whether it offloads); ``None``:
#: it does not fit at any useful length (8,192 tokens or more).
EXPECTED: dict[tuple[str, str, bool], tuple[int | None, bool]] = {
    ("8gb", E2B, False): (32_768, True),
    ("8gb", E4B, False): (None, False),
    ("12gb", E2B, False): (131_072, True),
    ("12gb", E4B, False): (131_072, True),
    ("16gb", E2B, False): (131_072, False),
    ("16gb", E4B, False): (131_072, True),
    ("24gb", E2B, False): (131_072, False),
    ("24gb", E4B, False): (131_072, False),
    ("8gb-half-taken", E2B, False): (None, False),
    ("8gb-half-taken", E4B, False): (None, False),
    ("12gb-half-taken", E2B, False): (None, False),
    ("12gb-half-taken", E4B, False): (None, False),
    ("16gb-half-taken", E2B, False): (131_072, True),
    ("16gb-half-taken", E4B, False): (None, False),
    # The full context would need 1 GB offloaded; 65,536 tokens run without.
    ("24gb-half-taken", E2B, False): (65_536, False),
    ("24gb-half-taken", E4B, False): (131_072, True),
    # Text-only mode: no encoders (0.9 GB) and less working memory.
    ("8gb", E2B, True): (131_072, True),
    ("8gb", E4B, True): (None, False),
    ("12gb", E2B, True): (131_072, False),
    ("12gb", E4B, True): (131_072, True),
    ("16gb", E2B, True): (131_072, False),
    ("16gb", E4B, True): (131_072, True),
    ("24gb", E2B, True): (131_072, False),
    ("24gb", E4B, True): (131_072, False),
    ("8gb-half-taken", E2B, True): (None, False),
    ("8gb-half-taken", E4B, True): (None, False),
    ("12gb-half-taken", E2B, True): (None, False),
    ("12gb-half-taken", E4B, True): (None, False),
    ("16gb-half-taken", E2B, True): (131_072, True),
    ("16gb-half-taken", E4B, True): (None, False),
    ("24gb-half-taken", E2B, True): (131_072, False),
    ("24gb-half-taken", E4B, True): (131_072, True),
}


def _gpu(card: Card) -> GpuInfo:
    return NvmlReader(FakeNvml([card])).read()[0]


def _figures(variant_id: str) -> ModelFigures:
    figures = figures_for(CATALOG.get(variant_id))
    assert figures is not None
    return figures


def _expected(card: Card, variant_id: str, text_only: bool) -> tuple[int | None, bool]:
    """The README's rule on the card's own figures: the full context if it fits without
    offload, else the longest power of two (down to 8,192) that does, else the longest
    that fits with every layer that can move offloaded; never below the seed's floor."""
    variant = CATALOG.get(variant_id)
    figures = _figures(variant_id)
    if card.free_bytes < (variant.min_vram_gb or 0) * GIB:
        return None, False
    total = card.total_mib * MIB
    share = min(0.9, math.floor((card.free_bytes - 512 * MIB) / total * 100) / 100)
    budget = math.ceil(total * share)
    movable = figures.decoder_bytes + (0 if text_only else figures.encoder_bytes)
    contexts = (131_072, 65_536, 32_768, 16_384, 8_192)
    need = {c: estimate(figures, c, text_only=text_only).total_bytes for c in contexts}
    without_offload = [c for c in contexts if need[c] <= budget]
    with_offload = [c for c in contexts if need[c] - movable <= budget]
    if without_offload:
        return without_offload[0], False
    if with_offload:
        return with_offload[0], True
    return None, False


@pytest.mark.parametrize("text_only", [False, True], ids=["multimodal", "text-only"])
@pytest.mark.parametrize("variant_id", [E2B, E4B])
@pytest.mark.parametrize("card_name", list(CARDS))
def test_the_context_each_variant_gets_by_default(
    card_name: str, variant_id: str, text_only: bool
) -> None:
    card = CARDS[card_name]
    expected = EXPECTED[card_name, variant_id, text_only]
    assert _expected(card, variant_id, text_only) == expected  # the table, derived again
    env = {"ATOMR_INFER_GEMMA_TEXT_ONLY": "on"} if text_only else {}
    config = EngineConfig.build(load_settings(env=env), CATALOG.get(variant_id), gpu=_gpu(card))
    plan = config.memory_plan
    assert plan is not None
    tokens, offloads = expected
    if tokens is None:
        assert not plan.fits
        return
    assert plan.fits, plan.summary()
    # What the estimate counted is what vLLM receives (unset: the model's own 131,072).
    vllm_gets = config.to_engine_args_kwargs().get(
        "max_model_len", _figures(variant_id).max_context
    )
    assert plan.estimate.context == vllm_gets == tokens
    assert bool(config.cpu_offload_gb) is offloads
    shortened = tokens < 131_072
    assert plan.context.shortened is shortened
    assert (config.context_note != "") is shortened


@pytest.fixture
def cuda_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a GPU machine, where ``make run`` installs the CUDA build."""
    monkeypatch.setattr(probe_mod, "vllm_distribution", lambda: ("cuda", "0.32.0"))


def _probe(card: Card, variant_id: str, env: dict[str, str] | None = None) -> Any:
    env = {"HF_TOKEN": TOKEN, **(env or {})}
    settings = load_settings(env, SettingsStore(Path("/nonexistent/settings.json")))
    return run_probe(
        settings,
        variant_id=variant_id,
        gpu_reader=NvmlReader(FakeNvml([card])).read,
        token_store=TokenStore(env=env),
        env=env,
    )


@pytest.mark.usefixtures("cuda_vllm")
def test_e2b_on_an_8gb_card_runs_at_the_longest_context_that_fits_and_says_so() -> None:
    report = _probe(RTX_3060_TI, E2B)
    assert report.outcome is Outcome.READY, report.as_text()
    verdict = report.fit(CATALOG.get(E2B))
    assert verdict.kind is FitKind.FITS_WITH_OFFLOAD
    # The full context's need: the estimate at 131,072 tokens (README: 11.6 GB).
    full = estimate(_figures(E2B), 131_072).total_bytes / GIB
    assert f"{full:.1f} GB" == "11.6 GB"
    assert (
        "at 32,768 tokens of context, the longest that fits this card; the model's full "
        "context (131,072 tokens) needs 11.6 GB" in verdict.message
    )
    vram = report.check("vram")
    assert vram is not None and vram.status is CheckStatus.OK
    assert "the longest that fits this card" in vram.reason
    assert vram.details["max_model_len"] == 32_768 and vram.details["context"] == "fits"
    # The verdict's plan is the engine's: one estimate, one rule.
    engine = EngineConfig.build(report.settings, CATALOG.get(E2B), gpu=report.chosen_gpu)
    assert verdict.plan == engine.memory_plan
    assert engine.max_model_len == 32_768


@pytest.mark.usefixtures("cuda_vllm")
def test_e4b_on_an_8gb_card_names_e2b_and_the_context_it_fits_at() -> None:
    report = _probe(RTX_3060_TI, E4B)
    assert report.outcome is Outcome.SKIPPED
    verdict = report.fit(CATALOG.get(E4B))
    assert verdict.kind is FitKind.DOES_NOT_FIT and verdict.suggestion == E2B
    assert "even at 8,192 tokens of context" in verdict.message
    assert "No Gemma 4 fits" not in report.hint
    assert f"the smaller {E2B}, which fits at 32,768 tokens of context" in report.hint
    assert f"ATOMR_INFER_GEMMA_MODEL={E2B}" in report.hint


@pytest.mark.usefixtures("cuda_vllm")
@pytest.mark.parametrize("variant_id", [E2B, E4B])
def test_nothing_fits_at_a_useful_length_says_so_with_the_figures(variant_id: str) -> None:
    card = CARDS["8gb-half-taken"]
    report = _probe(card, variant_id)
    assert report.outcome is Outcome.SKIPPED
    verdict = report.fit(CATALOG.get(variant_id))
    assert verdict.kind is FitKind.DOES_NOT_FIT and verdict.suggestion == BUNDLED_MODEL_ID
    # E2B at 8,192 tokens without offload, and the share of the card vLLM may use:
    # (4096 − 512 MiB) / 8192 MiB = 0.4375, so 0.43 × 8 GiB = 3.44 GiB.
    need = estimate(_figures(E2B), 8_192).total_bytes / GIB
    may_use = math.ceil(8192 * MIB * 0.43) / GIB
    assert report.hint.startswith(
        "No Gemma 4 fits this GPU at a useful context (8,192 tokens or more). The smallest, "
        "Gemma 4 E2B-it, at 8,192 tokens of context: "
        f"needs {need:.1f} GB and vLLM may use {may_use:.1f} GB"
    ), report.hint
    assert BUNDLED_MODEL_ID in report.hint


@pytest.mark.usefixtures("cuda_vllm")
def test_a_length_the_user_set_is_used_as_given_and_refused_with_the_one_that_fits() -> None:
    too_long = {"ATOMR_INFER_GEMMA_MAX_LEN": "131072"}
    report = _probe(RTX_3060_TI, E2B, too_long)
    assert report.outcome is Outcome.SKIPPED
    vram = report.check("vram")
    assert vram is not None and vram.status is CheckStatus.FAIL
    assert vram.details["max_model_len"] == 131_072 and vram.details["context"] == "user"
    assert "ATOMR_INFER_GEMMA_MAX_LEN=32768, the longest that fits this card" in vram.hint
    config = EngineConfig.build(report.settings, CATALOG.get(E2B), gpu=report.chosen_gpu)
    assert config.max_model_len == 131_072  # not shortened behind the user's back
    # E4B: the smaller model, with the length that fits it.
    e4b = _probe(RTX_3060_TI, E4B, too_long)
    assert f"ATOMR_INFER_GEMMA_MODEL={E2B} and ATOMR_INFER_GEMMA_MAX_LEN=32768" in e4b.hint
    # A length that fits is used as given, even where a longer one would.
    fits = _probe(RTX_4090, E2B, {"ATOMR_INFER_GEMMA_MAX_LEN": "8192"})
    assert fits.outcome is Outcome.READY
    vram = fits.check("vram")
    assert vram is not None and vram.details["max_model_len"] == 8_192
    assert vram.details["context"] == "user"


@pytest.mark.usefixtures("cuda_vllm")
def test_text_only_mode_is_offered_where_it_buys_a_longer_context() -> None:
    vram = _probe(RTX_3060_TI, E2B).check("vram")
    assert vram is not None
    assert (
        "For a longer context: text-only mode: ATOMR_INFER_GEMMA_TEXT_ONLY=on gives 131,072 "
        "tokens of context" in vram.hint
    )
    on = _probe(RTX_3060_TI, E2B, {"ATOMR_INFER_GEMMA_TEXT_ONLY": "on"}).check("vram")
    assert on is not None and on.status is CheckStatus.OK
    assert on.details["max_model_len"] == 131_072 and on.details["context"] == "model"
    # Where the full context fits already, text-only mode buys no context: not offered.
    full = _probe(RTX_4090, E2B).check("vram")
    assert full is not None and "text-only" not in full.hint


@pytest.mark.usefixtures("cuda_vllm")
def test_a_shorter_context_comes_before_cpu_offload() -> None:
    report = _probe(CARDS["24gb-half-taken"], E2B)
    verdict = report.fit(CATALOG.get(E2B))
    assert verdict.kind is FitKind.FITS and verdict.plan is not None
    assert verdict.plan.context.reason == "speed" and verdict.plan.offload_gib == 0
    assert "65,536 tokens of context, the longest that fits this card without CPU" in (
        verdict.message
    )
    # The full context stays one setting away, with what it costs.
    assert verdict.longer[0] == (
        "ATOMR_INFER_GEMMA_MAX_LEN=131072 for 131,072 tokens of context, with 1 GB of weights "
        "offloaded to RAM (they cross PCIe for every token: decoding is slower)"
    )


def test_the_engine_status_line_names_a_shortened_context() -> None:
    from gemma_desktop.core.engine.vllm_local import VllmEngine

    settings = load_settings(env={})
    on_8gb = EngineConfig.build(settings, CATALOG.get(E2B), gpu=_gpu(RTX_3060_TI))
    assert on_8gb.context_note == "32,768 tokens of context, the longest that fits this card"
    assert VllmEngine(on_8gb)._ready_detail() == on_8gb.context_note
    on_24gb = EngineConfig.build(settings, CATALOG.get(E2B), gpu=_gpu(RTX_4090))
    assert on_24gb.context_note == "" and VllmEngine(on_24gb)._ready_detail() == ""


@pytest.mark.usefixtures("cuda_vllm")
@pytest.mark.parametrize(
    ("variant_id", "code", "max_model_len"), [(E2B, 0, 32_768), (E4B, 3, 8_192)]
)
def test_the_probe_command_on_an_8gb_card(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variant_id: str,
    code: int,
    max_model_len: int,
) -> None:
    """``gemma-desktop probe --json --variant …`` as a user runs it, with the stand-in
    where the app imports ``pynvml``."""
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([RTX_3060_TI]))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert cli.main(["probe", "--json", "--variant", variant_id]) == code
    data = json.loads(capsys.readouterr().out)
    vram = next(c for c in data["checks"] if c["id"] == "vram")
    assert vram["details"]["max_model_len"] == max_model_len
    if variant_id == E2B:
        assert data["outcome"] == "ready"
        assert "32,768 tokens of context, the longest that fits this card" in vram["reason"]
    else:
        assert data["outcome"] == "skipped"
        assert "No Gemma 4 fits" not in data["hint"]
        assert f"the smaller {E2B}, which fits at 32,768 tokens of context" in data["hint"]
