"""NVIDIA GPUs as NVML reports them (through NVIDIA's ``nvidia-ml-py``).

:class:`NvmlReader` takes the ``pynvml`` module as a parameter so tests can
hand it a stand-in with other readings (a 16 GB card, two GPUs...) while the
default path runs the real library, which on a machine without a driver
raises its real ``NVMLError_LibraryNotFound``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from gemma_desktop.core.errors import GemmaDesktopError

GIB = 1024**3
#: vLLM's own floor: Volta (7.0) and newer.
MIN_COMPUTE_CAPABILITY = (7, 0)
#: bf16 needs Ampere (8.0); older cards run Gemma in fp16.
BF16_COMPUTE_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class GpuInfo:
    """One NVIDIA GPU: memory in GB (GiB, as NVML counts), versions, compute capability."""

    index: int
    name: str
    total_vram_gb: float
    free_vram_gb: float
    driver_version: str
    cuda_driver_version: str
    compute_capability: tuple[int, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "total_vram_gb": round(self.total_vram_gb, 2),
            "free_vram_gb": round(self.free_vram_gb, 2),
            "driver_version": self.driver_version,
            "cuda_driver_version": self.cuda_driver_version,
            "compute_capability": f"{self.compute_capability[0]}.{self.compute_capability[1]}",
        }


class GpuUnavailableError(GemmaDesktopError):
    """NVML could not be used: no driver, no permission, or no GPU."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cuda_version(raw: int) -> str:
    # NVML encodes CUDA 12.4 as 12040.
    return f"{raw // 1000}.{(raw % 1000) // 10}"


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
                        total_vram_gb=memory.total / GIB,
                        free_vram_gb=memory.free / GIB,
                        driver_version=driver,
                        cuda_driver_version=cuda,
                        compute_capability=(int(major), int(minor)),
                    )
                )
            return gpus
        except nvml.NVMLError as exc:
            raise self._explain(nvml, exc) from None
        finally:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlShutdown()

    @staticmethod
    def _explain(nvml: Any, exc: Exception) -> GpuUnavailableError:
        hint = (
            "Gemma 4 needs an NVIDIA GPU with a working driver. Install the NVIDIA "
            "driver, or use the bundled model (CPU) or a remote vLLM server."
        )
        if isinstance(exc, getattr(nvml, "NVMLError_LibraryNotFound", ())):
            return GpuUnavailableError(
                "No NVIDIA driver found (the NVML library is not installed).", hint
            )
        if isinstance(exc, getattr(nvml, "NVMLError_DriverNotLoaded", ())):
            return GpuUnavailableError(
                "The NVIDIA driver is installed but not loaded.",
                "Reboot, or load the kernel module (`sudo modprobe nvidia`).",
            )
        if isinstance(exc, getattr(nvml, "NVMLError_NoPermission", ())):
            return GpuUnavailableError(
                "No permission to query the NVIDIA GPU.",
                "Add your user to the group that owns /dev/nvidia* (often `video`).",
            )
        return GpuUnavailableError(f"NVML failed: {exc}", hint)
