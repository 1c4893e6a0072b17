"""NVIDIA GPUs as NVML reports them (through NVIDIA's ``nvidia-ml-py``), and which of
them the engine gets.

:class:`NvmlReader` takes the ``pynvml`` module as a parameter so tests can
hand it a stand-in with other readings (``tests/fixtures/nvml.py``: a 12 GB
card, two GPUs...) while the default path runs the real library, which on a
machine without a driver raises its real ``NVMLError_LibraryNotFound``.

Memory is kept in exact bytes, as NVML reports it: an RTX 4090 has
24564 MiB, which is 23.99 GiB, and every decision is taken on the bytes
(the GiB figures are for display only).

NVML numbers its devices in PCI bus order and ignores ``CUDA_VISIBLE_DEVICES``;
CUDA numbers them fastest first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``. The
engine is therefore always started with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and
``CUDA_VISIBLE_DEVICES`` naming the chosen card by its CUDA ordinal in that
order (:func:`cuda_ordinals`), unless the user set ``CUDA_VISIBLE_DEVICES``:
then :func:`visible_gpus` keeps only those devices, in that order, and the
engine uses the first of them, as vLLM does.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from gemma_desktop.core.errors import GemmaDesktopError

GIB = 1024**3
MIB = 1024**2
#: vLLM's own floor: Volta (7.0) and newer.
MIN_COMPUTE_CAPABILITY = (7, 0)
#: bf16 needs Ampere (8.0); older cards run Gemma in fp16.
BF16_COMPUTE_CAPABILITY = (8, 0)
#: The environment variables that decide which devices CUDA shows a process.
ENV_VISIBLE = "CUDA_VISIBLE_DEVICES"
ENV_ORDER = "CUDA_DEVICE_ORDER"


@dataclass(frozen=True)
class GpuInfo:
    """One NVIDIA GPU as NVML reports it.

    ``index`` is NVML's (and ``nvidia-smi``'s) number; ``total_bytes`` and
    ``free_bytes`` are exact; ``pci_bus_id`` is NVML's ``00000000:01:00.0``
    form; ``uuid`` NVML's ``GPU-…`` id; ``cuda_ordinal`` the device's number
    for CUDA under ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (``None`` until mapped).
    """

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    driver_version: str
    cuda_driver_version: str
    compute_capability: tuple[int, int]
    pci_bus_id: str = ""
    uuid: str = ""
    cuda_ordinal: int | None = None

    @property
    def total_vram_gb(self) -> float:
        """Total memory in GiB (display only)."""
        return self.total_bytes / GIB

    @property
    def free_vram_gb(self) -> float:
        """Free memory in GiB (display only)."""
        return self.free_bytes / GIB

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "total_bytes": self.total_bytes,
            "free_bytes": self.free_bytes,
            "total_vram_gb": round(self.total_vram_gb, 2),
            "free_vram_gb": round(self.free_vram_gb, 2),
            "driver_version": self.driver_version,
            "cuda_driver_version": self.cuda_driver_version,
            "compute_capability": f"{self.compute_capability[0]}.{self.compute_capability[1]}",
            "pci_bus_id": self.pci_bus_id,
            "uuid": self.uuid,
            "cuda_ordinal": self.cuda_ordinal,
        }


class GpuUnavailableError(GemmaDesktopError):
    """NVML could not be used: no driver, no permission, or no GPU."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cuda_version(raw: int) -> str:
    # NVML encodes CUDA 12.4 as 12040.
    return f"{raw // 1000}.{(raw % 1000) // 10}"


_BUS_ID = re.compile(r"^(?:([0-9A-Fa-f]{1,8}):)?([0-9A-Fa-f]{1,2}):([0-9A-Fa-f]{1,2})\.([0-7])$")


def pci_key(bus_id: str) -> tuple[int, int, int, int]:
    """``(domain, bus, device, function)`` of a PCI bus id in NVML's (8-digit domain) or
    CUDA's (4-digit) spelling, for comparing them as numbers rather than strings."""
    match = _BUS_ID.match(bus_id.strip())
    if match is None:
        return (1 << 32, 0, 0, 0)  # unknown ids sort last
    domain, bus, device, function = match.groups()
    return (int(domain or "0", 16), int(bus, 16), int(device, 16), int(function, 16))


def cuda_ordinals(gpus: Sequence[GpuInfo]) -> list[GpuInfo]:
    """``gpus`` with ``cuda_ordinal`` set: their rank by PCI bus id, which is CUDA's order
    under ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (NVML's index order may differ)."""
    ranked = sorted(gpus, key=lambda g: (pci_key(g.pci_bus_id), g.index))
    ordinal = {g.index: rank for rank, g in enumerate(ranked)}
    return [_replace_ordinal(g, ordinal[g.index]) for g in gpus]


def _replace_ordinal(gpu: GpuInfo, ordinal: int) -> GpuInfo:
    from dataclasses import replace

    return replace(gpu, cuda_ordinal=ordinal)


@dataclass(frozen=True)
class Visibility:
    """What the user's ``CUDA_VISIBLE_DEVICES`` leaves visible, in its order.

    ``value`` is ``None`` when the variable is unset (every GPU is visible and
    the app chooses); ``unknown`` lists entries that match no GPU.
    """

    value: str | None
    gpus: tuple[GpuInfo, ...]
    unknown: tuple[str, ...] = ()

    @property
    def user_set(self) -> bool:
        return self.value is not None


def visible_gpus(gpus: Sequence[GpuInfo], env: Mapping[str, str]) -> Visibility:
    """The GPUs a CUDA process started with ``env`` can see, in CUDA's order for it.

    Entries are NVML indices (as vLLM reads them: ``int(entry)`` is the physical
    device) or ``GPU-``/``MIG-`` UUIDs, where CUDA accepts a unique prefix. As in
    CUDA, the list ends at the first entry that names no device.
    """
    raw = env.get(ENV_VISIBLE)
    if raw is None:
        return Visibility(None, tuple(gpus))
    seen: list[GpuInfo] = []
    unknown: list[str] = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        match: GpuInfo | None = None
        if re.fullmatch(r"\d+", entry):
            match = next((g for g in gpus if g.index == int(entry)), None)
        elif entry.upper().startswith(("GPU-", "MIG-")):
            found = [g for g in gpus if g.uuid and g.uuid.lower().startswith(entry.lower())]
            match = found[0] if len(found) == 1 else None
        if match is None:
            unknown.append(entry)
            break
        if match not in seen:
            seen.append(match)
    return Visibility(raw, tuple(seen), tuple(unknown))


_applied_lock = threading.Lock()
#: The device variables the app itself has put in ``os.environ`` (while an engine starts).
_applied: dict[str, str] = {}


@contextlib.contextmanager
def device_environment(pairs: Sequence[tuple[str, str]]) -> Iterator[None]:
    """Set ``pairs`` in this process's environment while the engine's processes are
    started (they inherit it before CUDA starts in them), then restore it, so the
    app's own later probes still see only what the user set."""
    with _applied_lock:
        saved = {name: os.environ.get(name) for name, _ in pairs}
        for name, value in pairs:
            os.environ[name] = value
            _applied[name] = value
    try:
        yield
    finally:
        with _applied_lock:
            for name, old in saved.items():
                if old is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = old
                _applied.pop(name, None)


def user_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without the device variables the app set itself for an engine start."""
    with _applied_lock:
        applied = dict(_applied)
    return {k: v for k, v in env.items() if applied.get(k) != v}


class NvmlReader:
    """Reads every GPU through NVML; raises :class:`GpuUnavailableError` with a hint."""

    def __init__(self, nvml: ModuleType | Any | None = None) -> None:
        self._nvml = nvml

    def _module(self) -> Any:
        if self._nvml is None:
            try:
                import pynvml
            except ImportError as exc:
                raise GpuUnavailableError(
                    "The NVML bindings (nvidia-ml-py) are not installed.",
                    "Reinstall the app: `make run` installs them.",
                ) from exc
            self._nvml = pynvml
        return self._nvml

    def read(self) -> list[GpuInfo]:
        """Every GPU, in NVML's order, with its CUDA ordinal (PCI bus order)."""
        nvml = self._module()
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise self._explain(nvml, exc) from None
        try:
            driver = _text(nvml.nvmlSystemGetDriverVersion())
            cuda = _cuda_version(int(nvml.nvmlSystemGetCudaDriverVersion()))
            gpus = []
            for index in range(int(nvml.nvmlDeviceGetCount())):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                gpus.append(
                    GpuInfo(
                        index=index,
                        name=_text(nvml.nvmlDeviceGetName(handle)),
                        total_bytes=int(memory.total),
                        free_bytes=int(memory.free),
                        driver_version=driver,
                        cuda_driver_version=cuda,
                        compute_capability=(int(major), int(minor)),
                        pci_bus_id=_text(nvml.nvmlDeviceGetPciInfo(handle).busId),
                        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    )
                )
            return cuda_ordinals(gpus)
        except nvml.NVMLError as exc:
            raise self._explain(nvml, exc) from None
        finally:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlShutdown()

    @staticmethod
    def _explain(nvml: Any, exc: Exception) -> GpuUnavailableError:
        hint = (
            "Gemma 4 needs an NVIDIA GPU with a working driver for good speed. Install the "
            "NVIDIA driver, or use the CPU build, the bundled model or a remote vLLM server."
        )

        def _is(name: str) -> bool:
            cls = getattr(nvml, name, None)
            return isinstance(cls, type) and isinstance(exc, cls)

        if _is("NVMLError_LibraryNotFound"):
            return GpuUnavailableError(
                "No NVIDIA driver found (the NVML library is not installed).", hint
            )
        if _is("NVMLError_DriverNotLoaded"):
            return GpuUnavailableError(
                "The NVIDIA driver is installed but not loaded.",
                "Reboot, or load the kernel module (`sudo modprobe nvidia`).",
            )
        if _is("NVMLError_NoPermission"):
            return GpuUnavailableError(
                "No permission to query the NVIDIA GPU.",
                "Add your user to the group that owns /dev/nvidia* (often `video`).",
            )
        if _is("NVMLError_LibRmVersionMismatch"):
            return GpuUnavailableError(
                "The NVIDIA driver and its NVML library have different versions "
                f"({exc}), usually after a driver update.",
                "Reboot so the updated driver is loaded.",
            )
        if _is("NVMLError_GpuIsLost"):
            return GpuUnavailableError(
                "The NVIDIA GPU stopped responding (NVML: GPU is lost).",
                "Reboot; if it happens again, check the card's power and cooling.",
            )
        return GpuUnavailableError(f"NVML failed: {exc}", hint)
