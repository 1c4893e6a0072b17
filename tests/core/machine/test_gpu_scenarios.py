"""Real cards' figures through the whole GPU path, from the window and from the command line.

For each machine the NVML stand-in (tests/fixtures/nvml.py) reports, the probe's outcome, the
verdict for every variant and the engine configuration must be the same whether they come
from the window (``GemmaDesktopApp`` → ``AppState`` → the assembly) or from the command line
(``gemma-desktop probe --json`` and the chat command's assembly), each given the stand-in
in-process.

The expected verdicts follow from the published sizes (E2B: 9.5 GiB of bf16 weights, 4.4 of
them per-layer embeddings; E4B: 14.8 GiB) and a 131,072-token context: E4B cannot fit a
12 GB or 16 GB card without offload, fits a 24 GB card; E2B needs a little offload on
12 GB, fits 16 GB and up. On an 8 GB card E4B does not fit at any useful context and E2B
runs at 32,768 tokens with its decoder offloaded (test_context_choice.py works it out).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import threading
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from typing import Any

import pytest

from gemma_desktop.commands import chat as chat_command
from gemma_desktop.commands import probe as probe_command
from gemma_desktop.core.engine.assembly import MachineFacts, local_config
from gemma_desktop.core.machine import probe as probe_mod
from gemma_desktop.core.machine.gpu import NvmlReader
from gemma_desktop.core.machine.probe import FitKind, Outcome, ProbeService, decide_startup
from gemma_desktop.core.models.catalog import VariantCatalog
from gemma_desktop.core.settings import load_settings
from tests.fixtures.nvml import (
    RTX_3060,
    RTX_3060_TI,
    RTX_4080,
    RTX_4090,
    RTX_A6000,
    Card,
    FakeNvml,
)

E2B, E4B, BUNDLED = "google/gemma-4-E2B-it", "google/gemma-4-E4B-it", "bundled/gemma-3-270m"
TOKEN = "hf_abcdefghijklmnopqrstuvwxyz012345"
BUSY_3060 = RTX_3060.with_used(9_500)  # a game or a second app holds most of it
UUID_4090 = "GPU-c1f0d9e4-5b7a-4e62-a1d3-9f8e20b1abcd"


@dataclass(frozen=True)
class Scenario:
    cards: list[Card]
    outcome: Outcome
    verdicts: dict[str, FitKind]
    #: NVML index of the GPU the engine gets, and CUDA_VISIBLE_DEVICES it is started with.
    gpu_index: int | None
    visible: str | None
    env: dict[str, str] = field(default_factory=dict)


SCENARIOS = {
    # The default E4B does not fit: skipped; with nothing chosen the window starts E2B-it.
    "rtx3060ti-8gb": Scenario(
        [RTX_3060_TI],
        Outcome.SKIPPED,
        {E2B: FitKind.FITS_WITH_OFFLOAD, E4B: FitKind.DOES_NOT_FIT, BUNDLED: FitKind.CPU},
        0,
        "0",
    ),
    "rtx3060-12gb": Scenario(
        [RTX_3060],
        Outcome.READY,
        {E2B: FitKind.FITS_WITH_OFFLOAD, E4B: FitKind.FITS_WITH_OFFLOAD, BUNDLED: FitKind.CPU},
        0,
        "0",
    ),
    "rtx4080-16gb": Scenario(
        [RTX_4080],
        Outcome.READY,
        {E2B: FitKind.FITS, E4B: FitKind.FITS_WITH_OFFLOAD, BUNDLED: FitKind.CPU},
        0,
        "0",
    ),
    "rtx4090-24gb": Scenario(
        [RTX_4090],
        Outcome.READY,
        {E2B: FitKind.FITS, E4B: FitKind.FITS, BUNDLED: FitKind.CPU},
        0,
        "0",
    ),
    "rtx-a6000-48gb": Scenario(
        [RTX_A6000],
        Outcome.READY,
        {E2B: FitKind.FITS, E4B: FitKind.FITS, BUNDLED: FitKind.CPU},
        0,
        "0",
    ),
    "busy-3060-then-empty-4090": Scenario(
        [BUSY_3060, RTX_4090.at_bus(0x41, UUID_4090)],
        Outcome.READY,
        {E2B: FitKind.FITS, E4B: FitKind.FITS, BUNDLED: FitKind.CPU},
        1,
        "1",
    ),
    # NVML numbering that is not the PCI order: the card is named by its UUID.
    "nvml-order-differs-from-pci": Scenario(
        [RTX_4090.at_bus(0x41, UUID_4090), BUSY_3060],
        Outcome.READY,
        {E2B: FitKind.FITS, E4B: FitKind.FITS, BUNDLED: FitKind.CPU},
        0,
        UUID_4090,
    ),
    # The user's CUDA_VISIBLE_DEVICES wins, even when it names the fuller card.
    "cuda-visible-devices-set": Scenario(
        [BUSY_3060, RTX_4090.at_bus(0x41, UUID_4090)],
        Outcome.SKIPPED,
        {E2B: FitKind.DOES_NOT_FIT, E4B: FitKind.DOES_NOT_FIT, BUNDLED: FitKind.CPU},
        0,
        None,
        {"CUDA_VISIBLE_DEVICES": "0"},
    ),
}


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Scenario:
    scenario: Scenario = SCENARIOS[request.param]
    # As on a GPU machine: the CUDA build; RAM fixed so both paths read the same figure.
    monkeypatch.setattr(probe_mod, "vllm_distribution", lambda: ("cuda", "0.32.0"))
    monkeypatch.setattr(probe_mod, "available_ram_gb", lambda: 48.0)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("ATOMR_INFER_GEMMA_AUTO", "off")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    for name, value in scenario.env.items():
        monkeypatch.setenv(name, value)
    return scenario


def _reader(scenario: Scenario) -> Any:
    return NvmlReader(FakeNvml(scenario.cards)).read


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    """The report without the disk check's free space (other programs write meanwhile)."""
    checks = [c for c in data["checks"] if c["id"] != "disk"]
    return {**data, "checks": checks}


@pytest.mark.parametrize("machine", list(SCENARIOS), indirect=True)
def test_window_and_command_line_see_the_same_machine(
    machine: Scenario, make_app: Any, arun: Any
) -> None:
    catalog = VariantCatalog()
    # The window: the app's AppState runs the probe; the assembly builds from its report.
    app = make_app(gpu_reader=_reader(machine))
    window_report = arun(app.state.refresh())
    window_settings = app.state.settings

    # The command line: `gemma-desktop probe --json` and the chat command's assembly.
    out = io.StringIO()
    with redirect_stdout(out):
        code = probe_command.run(
            argparse.Namespace(json=True, variant=None), ProbeService(gpu_reader=_reader(machine))
        )
    cli_json = json.loads(out.getvalue())
    cli_settings = load_settings()
    cli_report, chosen, cli_machine = chat_command.choose_machine(
        cli_settings, None, ProbeService(gpu_reader=_reader(machine))
    )

    assert window_report.outcome is machine.outcome, window_report.as_text()
    assert code == (0 if machine.outcome is Outcome.READY else 3)
    assert _comparable(cli_json) == _comparable(window_report.to_json())
    assert window_report.gpu_index == machine.gpu_index == cli_json["gpu_index"]
    for variant in catalog:
        window_verdict = window_report.fit(variant)
        assert window_verdict == cli_report.fit(variant)
        # A base model has its -it sibling's size.
        expected = machine.verdicts.get(variant.id) or machine.verdicts[variant.id + "-it"]
        assert window_verdict.kind is expected, (variant.id, window_verdict.message)

    window_machine = MachineFacts.from_report(window_report)
    assert window_machine == cli_machine
    for variant_id in (E2B, E4B):
        variant = catalog.get(variant_id)
        window_config = local_config(window_settings, variant, window_machine)
        cli_config = local_config(cli_settings, variant, cli_machine)
        assert window_config == cli_config
        _check_config(machine, window_config, window_report.fit(variant).kind)
    # The chat command starts the model the window's start-up rule picks.
    assert chosen == decide_startup(window_settings, window_report).variant_id


def _check_config(machine: Scenario, config: Any, kind: FitKind) -> None:
    env = dict(config.device_env)
    assert env.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID"
    assert env.get("CUDA_VISIBLE_DEVICES") == machine.visible
    assert config.enable_sleep_mode is True
    plan = config.memory_plan
    assert plan is not None and plan.gpu.index == machine.gpu_index
    gpu = plan.gpu
    reserved = math.ceil(gpu.total_bytes * config.gpu_memory_utilization)
    if kind is FitKind.DOES_NOT_FIT:
        assert not plan.fits and plan.problems
        return
    # What the engine is started with holds the estimate and fits in the free memory.
    assert reserved <= gpu.free_bytes
    assert plan.estimate.total_bytes <= reserved
    assert (config.cpu_offload_gb or 0) > 0 if kind is FitKind.FITS_WITH_OFFLOAD else True
    assert config.cpu_offload_gb is None if kind is FitKind.FITS else True


@pytest.mark.parametrize("machine", ["cuda-visible-devices-set"], indirect=True)
def test_the_users_cuda_visible_devices_is_honoured_and_named(machine: Scenario) -> None:
    report = ProbeService(gpu_reader=_reader(machine)).run()
    gpu = report.check("gpu")
    assert gpu is not None and "CUDA_VISIBLE_DEVICES=0" in gpu.reason
    assert "GPU 0" in gpu.reason and "first" in gpu.reason
    assert dict(report.device_env) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}  # theirs is kept
    vram = report.check("vram")
    assert vram is not None and vram.status.value == "fail"


@pytest.mark.parametrize("machine", ["busy-3060-then-empty-4090"], indirect=True)
def test_the_window_names_the_card_the_engine_gets(machine: Scenario) -> None:
    report = ProbeService(gpu_reader=_reader(machine)).run()
    gpu = report.check("gpu")
    assert gpu is not None
    assert "Using GPU 1 (NVIDIA GeForce RTX 4090, PCI 00000000:41:00.0)" in gpu.reason
    assert "CUDA_VISIBLE_DEVICES=1" in gpu.reason
    vram = report.check("vram")
    assert vram is not None and "on GPU 1" in vram.reason and "vLLM may use" in vram.reason


@pytest.mark.parametrize("machine", ["rtx4090-24gb"], indirect=True)
def test_a_users_share_beyond_the_free_memory_is_a_failure_with_the_share_that_fits(
    machine: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATOMR_INFER_GEMMA_GPU_UTIL", "0.99")
    report = ProbeService(gpu_reader=_reader(machine)).run()
    assert report.outcome is Outcome.SKIPPED
    vram = report.check("vram")
    assert vram is not None and "would fail to start" in vram.reason
    gpu = report.chosen_gpu
    assert gpu is not None
    share = float(vram.hint.split("ATOMR_INFER_GEMMA_GPU_UTIL=")[1][:4])
    assert share * gpu.total_bytes <= gpu.free_bytes


@pytest.mark.parametrize("machine", ["rtx4090-24gb"], indirect=True)
def test_an_engine_start_before_the_probe_reported_waits_then_gets_the_gpu_settings(
    machine: Scenario, make_app: Any, qtbot: Any
) -> None:
    """NVML can be slow (a waking card); a start asked for meanwhile must not be built
    with CPU settings: it waits, visibly, for the report."""
    from gemma_desktop.core.engine.protocol import EngineError, EngineState

    release = threading.Event()

    def slow_nvml() -> Any:
        release.wait(30)
        return _reader(machine)()

    app = make_app(gpu_reader=slow_nvml)
    built: list[Any] = []

    async def recording_build(variant_id: str, settings: Any, report: Any, progress: Any) -> Any:
        # What the real assembly would start: its config from this report. No GPU here to
        # start it on, so the start ends with an error the host shows.
        built.append(
            local_config(settings, app.catalog.get(variant_id), MachineFacts.from_report(report))
        )
        raise EngineError("No GPU in this test.", "")

    app.assembly.build = recording_build
    app.host.set_variant(E4B)
    task = asyncio.ensure_future(app.host.start())
    qtbot.waitUntil(lambda: app.host.status.detail == "Waiting for the hardware check")
    assert app.host.status.state is EngineState.STARTING
    assert built == [] and app.state.report is None
    release.set()
    qtbot.waitUntil(task.done, timeout=30_000)
    assert len(built) == 1
    config = built[0]
    assert not config.on_cpu and config.kv_cache_memory_bytes is None
    assert config.memory_plan is not None and config.memory_plan.gpu.name == RTX_4090.name
    assert dict(config.device_env)["CUDA_VISIBLE_DEVICES"] == "0"
    assert app.host.status.state is EngineState.CRASHED


BUSY_3060TI = "busy-3060ti-half-taken"
SCENARIOS[BUSY_3060TI] = Scenario(
    [RTX_3060_TI.with_used(4096)],
    Outcome.SKIPPED,
    {E2B: FitKind.DOES_NOT_FIT, E4B: FitKind.DOES_NOT_FIT, BUNDLED: FitKind.CPU},
    0,
    "0",
)


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        # The default E4B-it does not fit 8 GB; its smaller sibling does, at a shorter
        # context: the seed's E4B -> E2B fallback, without the user setting anything.
        ("rtx3060ti-8gb", E2B),
        ("rtx3060-12gb", E4B),
        ("rtx4090-24gb", E4B),
        # Nothing fits a card other programs half fill: the bundled model, on the CPU.
        (BUSY_3060TI, BUNDLED),
    ],
    indirect=["machine"],
)
def test_with_nothing_chosen_the_app_starts_the_gemma_4_that_fits(
    machine: Scenario, expected: str
) -> None:
    report = ProbeService(gpu_reader=_reader(machine)).run()
    decision = decide_startup(load_settings(), report)
    assert decision.variant_id == expected
    if expected != E4B:  # the user is told why it is not the default
        assert any("cannot run here" in notice for notice in decision.notices)


def test_a_chosen_model_that_does_not_fit_is_not_swapped_for_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(probe_mod, "vllm_distribution", lambda: ("cuda", "0.32.0"))
    monkeypatch.setenv("ATOMR_INFER_GEMMA_MODEL", E4B)
    report = ProbeService(gpu_reader=_reader(SCENARIOS["rtx3060ti-8gb"])).run()
    assert decide_startup(load_settings(), report).variant_id == E4B
