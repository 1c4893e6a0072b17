"""How an engine is built: the one place that turns settings and the probe's report into one.

The window (through its engine host), ``gemma-desktop chat``, the benchmarks,
the screenshot tool and the tests all call this module, so the same machine
and the same settings always give the same engine:

* :class:`MachineFacts` is what the engine's configuration depends on, taken
  from a :class:`~gemma_desktop.core.machine.probe.ProbeReport` (the vLLM
  build, the GPU vLLM will use);
* :func:`local_config` derives the :class:`~gemma_desktop.core.engine.config.EngineConfig`
  for a variant on that machine, loading the model from its folder on disk;
* :class:`EngineAssembly` builds the engine the user chose: the local vLLM
  engine (preparing the bundled model first, with progress) or a remote
  ``vllm serve`` server (``engine=remote`` in the saved settings). A command
  may choose differently for one run (``chat --remote URL``, ``--local``).
  With an :class:`~gemma_desktop.core.engine_owner.EngineOwner` it refuses to
  build a local engine while another Gemma Desktop process runs one (the
  window beside ``gemma-desktop serve``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from gemma_desktop.core.engine.config import EngineConfig
from gemma_desktop.core.engine.protocol import (
    Engine,
    EngineError,
    ProgressListener,
    StartProgress,
)
from gemma_desktop.core.errors import GemmaDesktopError
from gemma_desktop.core.models.catalog import Variant, VariantCatalog
from gemma_desktop.core.models.hub_cache import local_model_path
from gemma_desktop.core.settings import Settings

if TYPE_CHECKING:
    from gemma_desktop.core.engine.processes import EngineRegistry
    from gemma_desktop.core.engine.remote import RemoteTarget
    from gemma_desktop.core.engine.vllm_local import VllmEngine
    from gemma_desktop.core.engine_owner import EngineOwner
    from gemma_desktop.core.machine.gpu import GpuInfo
    from gemma_desktop.core.machine.probe import ProbeReport, VllmBuild


@dataclass(frozen=True)
class MachineFacts:
    """What the engine's configuration depends on: the vLLM build, the GPU it uses
    (exact bytes, as the probe read it) and the environment that gives it that GPU.

    ``gpu`` is ``None`` without a CUDA GPU (the engine then runs on vLLM's CPU build).
    """

    vllm_build: VllmBuild | None = None
    gpu: GpuInfo | None = None
    #: ``CUDA_DEVICE_ORDER`` / ``CUDA_VISIBLE_DEVICES`` for the engine (the probe's choice).
    device_env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_report(cls, report: ProbeReport) -> MachineFacts:
        if report.vllm_build != "cuda" or report.chosen_gpu is None:
            return cls(report.vllm_build, None)
        return cls(report.vllm_build, report.chosen_gpu, report.device_env)

    @classmethod
    def cpu(cls) -> MachineFacts:
        """A machine without a CUDA GPU (the CPU build)."""
        return cls("cpu", None)


def local_config(
    settings: Settings,
    variant: Variant,
    machine: MachineFacts,
    *,
    model_path: Path | None = None,
    dtype: str = "auto",
) -> EngineConfig:
    """The vLLM configuration for ``variant`` on ``machine``.

    ``model_path`` is the model's folder on disk (the bundled model's, or the
    Hub cache's snapshot); without one it is looked up in the cache. The memory
    estimate reads the same folder's files (else the catalog's published figures).
    """
    if model_path is None:
        model_path = local_model_path(variant, settings.hf_hub_cache.value)
    return EngineConfig.build(
        settings,
        variant,
        gpu=machine.gpu,
        model_path=model_path,
        dtype=dtype,
        device_env=machine.device_env,
    )


#: Where the engine runs: this computer's vLLM, or a remote ``vllm serve``.
EngineKind = Literal["local", "remote"]


def chosen_engine(settings: Settings) -> EngineKind:
    """The engine the saved settings choose (the Connections page saves ``engine``)."""
    return "remote" if settings.saved.get("engine") == "remote" else "local"


class EngineAssembly:
    """Builds the engine for a variant, as the user chose it (local or remote).

    ``session_keys`` holds remote API keys kept for this session only (when no
    keyring works); otherwise a remote key comes from the keyring. ``owner`` is this
    process's claim on the local engine: a local engine is built only while it holds
    it (otherwise :class:`~gemma_desktop.core.engine_owner.EngineOwnedError`).
    """

    def __init__(
        self,
        catalog: VariantCatalog | None = None,
        *,
        session_keys: Mapping[str, str] | None = None,
        registry: EngineRegistry | None = None,
        owner: EngineOwner | None = None,
    ) -> None:
        self.catalog = catalog or VariantCatalog()
        self.session_keys = session_keys if session_keys is not None else {}
        #: Where the local engine records its processes (the next launch ends leftovers).
        self.registry = registry
        self.owner = owner

    async def build(
        self,
        variant_id: str,
        settings: Settings,
        report: ProbeReport,
        progress: ProgressListener | None = None,
        *,
        engine: EngineKind | None = None,
        target: RemoteTarget | None = None,
    ) -> Engine:
        """The engine the saved settings choose: remote when ``engine=remote``, else local.

        ``engine`` overrides the saved choice for this engine only, and ``target`` the
        saved server (``chat --remote URL``); a ``target`` alone means remote.
        """
        kind = engine or ("remote" if target is not None else chosen_engine(settings))
        if kind == "remote":
            return await self.remote(settings, target)
        return await self.local(variant_id, settings, MachineFacts.from_report(report), progress)

    async def local(
        self,
        variant_id: str,
        settings: Settings,
        machine: MachineFacts,
        progress: ProgressListener | None = None,
        *,
        dtype: str = "auto",
    ) -> VllmEngine:
        """A (not yet started) :class:`VllmEngine` for ``variant_id``.

        The bundled model is converted first if needed (about a minute and a
        half, once, with progress). A Gemma 4 model starts from its snapshot
        folder in the Hub cache, never its Hub id, so it starts without network.
        """
        from gemma_desktop.core.engine.vllm_local import VllmEngine, preload_vllm

        if self.owner is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.owner.require)
        preload_vllm()
        variant = self.catalog.get(variant_id)
        model_path: Path | None
        if variant.is_bundled:
            from gemma_desktop.core.models.bundled import provision_bundled_model_async

            if progress is not None:
                progress(StartProgress("Preparing the bundled model", None))
            model_path = await provision_bundled_model_async(
                None
                if progress is None
                else lambda step: progress(StartProgress(step.message, step.fraction))
            )
        else:
            loop = asyncio.get_running_loop()
            model_path = await loop.run_in_executor(
                None, local_model_path, variant, settings.hf_hub_cache.value
            )
            if model_path is None:
                raise EngineError(
                    f"{variant.label} is not downloaded yet.",
                    f"Download it first: gemma-desktop download --variant {variant.id} (or use "
                    "the Download button); gated Gemma models need an accepted license and a "
                    "token.",
                )
        config = local_config(settings, variant, machine, model_path=model_path, dtype=dtype)
        return VllmEngine(config, self.registry)

    async def remote(self, settings: Settings, target: RemoteTarget | None = None) -> Engine:
        """A :class:`RemoteEngine` for ``target``, else the saved server (its key: this
        session, else the keyring)."""
        from gemma_desktop.core.engine.remote import ApiKeyStore, RemoteEngine, RemoteTarget
        from gemma_desktop.core.secrets import KeyringUnavailableError

        target = target or RemoteTarget.from_saved(settings.saved)
        if target is None:
            raise GemmaDesktopError(
                "The remote vLLM server is chosen but no address is saved.",
                "Enter the server's address on the Connections page, or choose this computer.",
            )
        key = self.session_keys.get(target.base_url)
        if key is None:
            loop = asyncio.get_running_loop()
            try:
                key = await loop.run_in_executor(None, ApiKeyStore(target.base_url).get)
            except KeyringUnavailableError:
                key = None
        return RemoteEngine(target.base_url, target.model, key)
