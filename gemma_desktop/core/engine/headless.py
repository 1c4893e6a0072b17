"""The engine and the local API without a window: what ``gemma-desktop serve`` runs.

:class:`HeadlessServer` takes the window's steps through the window's modules, in
order, on a plain asyncio loop (no Qt):

1. this user's claim on the local engine (:mod:`gemma_desktop.core.engine_owner`): refused
   while the app or another ``serve`` runs;
2. the saved engine choice: a remote server is refused (``serve`` serves this computer's
   model; the remote server already has an API of its own), unless ``local`` says to
   run the local engine for this run;
3. the probe and the start-up rule (:func:`~gemma_desktop.core.machine.probe.decide_startup`,
   :func:`~gemma_desktop.core.machine.probe.can_run_unattended`): a model that cannot run
   here is refused with the probe's reason and hint (:attr:`ServeRefused.exit_code` 3);
4. engine processes an earlier run left behind are ended (as the window does at launch);
5. the engine, built by :class:`~gemma_desktop.core.engine.assembly.EngineAssembly` and
   started;
6. the local API (:mod:`gemma_desktop.core.engine.local_api`) over it, whose address is
   recorded with the claim (a refused window names it).

:meth:`HeadlessServer.stop` undoes them in reverse, whatever was reached; the engine's
processes end with it. A crashed engine ends :meth:`HeadlessServer.wait_stopped` with
the crash's reason (a service manager can restart ``serve``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gemma_desktop.core.engine.local_api import DEFAULT_PORT, HOST, LocalApiServer, server_for
from gemma_desktop.core.engine.protocol import (
    Engine,
    EngineState,
    EngineStatus,
    ProgressListener,
    StartProgress,
)
from gemma_desktop.core.errors import GemmaDesktopError

if TYPE_CHECKING:
    from gemma_desktop.core.engine.local_api import LocalApiToken
    from gemma_desktop.core.engine.processes import EngineRegistry
    from gemma_desktop.core.engine_owner import EngineOwner
    from gemma_desktop.core.machine.probe import ProbeReport, ProbeService
    from gemma_desktop.core.models.catalog import Variant, VariantCatalog
    from gemma_desktop.core.settings import Settings

log = logging.getLogger(__name__)

#: Exit codes, as ``gemma-desktop probe`` uses them.
EXIT_ERROR, EXIT_SKIPPED = 1, 3


class ServeRefused(GemmaDesktopError):
    """``serve`` cannot run here now: another owner, a remote engine, a model that cannot run."""

    def __init__(self, reason: str, hint: str = "", exit_code: int = EXIT_ERROR) -> None:
        super().__init__(reason, hint)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ServeOptions:
    """What the user asked for: the model (default: the one the window would start), where
    to listen, and whether to run the local engine whatever the saved choice."""

    variant_id: str | None = None
    port: int = DEFAULT_PORT
    host: str = HOST
    local: bool = False


class HeadlessServer:
    """The engine and the local API of one ``serve`` run (see the module docstring).

    ``probe``, ``owner`` and ``registry`` replace the machine's (tests inject them).
    """

    def __init__(
        self,
        options: ServeOptions,
        settings: Settings,
        *,
        probe: ProbeService | None = None,
        owner: EngineOwner | None = None,
        registry: EngineRegistry | None = None,
    ) -> None:
        self.options = options
        self.settings = settings
        self._probe = probe
        self._owner = owner
        self._registry = registry
        self.variant: Variant | None = None
        self.engine: Engine | None = None
        self.api: LocalApiServer | None = None
        self._stopped = asyncio.Event()
        self._failure: GemmaDesktopError | None = None

    # -- what the command prints ------------------------------------------------------------

    @property
    def served_model_name(self) -> str:
        return self.settings.deployment_name.value

    @property
    def address(self) -> str | None:
        """The OpenAI base URL while serving."""
        return self.api.address if self.api is not None else None

    @property
    def root_address(self) -> str | None:
        """The Anthropic base URL (the server's root) while serving."""
        return self.api.root_address if self.api is not None else None

    @property
    def token(self) -> LocalApiToken | None:
        return self.api.token if self.api is not None else None

    # -- lifetime ------------------------------------------------------------------------------

    async def start(self, progress: ProgressListener | None = None) -> None:
        """Steps 1 to 6; raises :class:`ServeRefused` or the engine's own errors (after
        undoing what was done)."""
        try:
            await self._start(progress or (lambda _step: None))
        except BaseException:
            await self.stop()
            raise

    async def _start(self, progress: ProgressListener) -> None:
        from gemma_desktop.core.engine.assembly import EngineAssembly, chosen_engine
        from gemma_desktop.core.engine.processes import EngineRegistry
        from gemma_desktop.core.engine_owner import EngineOwner, refusal
        from gemma_desktop.core.models.catalog import VariantCatalog

        loop = asyncio.get_running_loop()
        self._owner = self._owner or EngineOwner("serve")
        if not await loop.run_in_executor(None, self._owner.acquire):
            refused = refusal("serve", await loop.run_in_executor(None, self._owner.holder))
            raise ServeRefused(refused.reason, refused.hint)
        if chosen_engine(self.settings) == "remote" and not self.options.local:
            from gemma_desktop.core.engine.remote import RemoteTarget

            target = RemoteTarget.from_saved(self.settings.saved)
            where = f" ({target.base_url})" if target is not None else ""
            raise ServeRefused(
                f"The saved settings choose a remote vLLM server{where}; serve runs the model "
                "on this computer.",
                "The remote server has its own API: use it directly. To serve a model from "
                "this computer instead, run: gemma-desktop serve --local",
            )
        catalog = VariantCatalog()
        progress(StartProgress("Checking this machine", None))
        report, variant = await loop.run_in_executor(None, self._check_machine, catalog)
        self.variant = variant
        registry = self._registry
        if registry is None:
            registry = await loop.run_in_executor(None, EngineRegistry)
        ended = await loop.run_in_executor(None, registry.end_leftovers)
        if ended:
            log.warning("ended %d engine processes left running by an earlier run", len(ended))
        assembly = EngineAssembly(catalog, registry=registry, owner=self._owner)
        engine = await assembly.build(variant.id, self.settings, report, progress, engine="local")
        self.engine = engine
        engine.add_state_listener(self._on_engine_status)
        await engine.start(progress)
        api = server_for(
            engine, self.served_model_name, port=self.options.port, host=self.options.host
        )
        if api is None:  # only a local vLLM engine has a client to serve
            raise ServeRefused("This engine cannot serve the local API.")
        await api.start()
        self.api = api
        await loop.run_in_executor(None, self._owner.set_address, api.root_address)
        log.info("serving %s as %s at %s", variant.id, self.served_model_name, api.address)

    def _check_machine(self, catalog: VariantCatalog) -> tuple[ProbeReport, Variant]:
        """The probe's report and the model, as the window decides them (blocking)."""
        from gemma_desktop.core.machine.probe import (
            Outcome,
            ProbeService,
            can_run_unattended,
            decide_startup,
        )

        probe = self._probe or ProbeService()
        report = probe.run(self.settings, self.options.variant_id)
        if report.outcome is Outcome.ERROR:
            raise ServeRefused(report.reason, report.hint)
        chosen = self.options.variant_id or decide_startup(self.settings, report).variant_id
        variant = catalog.get(chosen)
        if report.variant == variant.id and report.outcome is Outcome.SKIPPED:
            raise ServeRefused(report.reason, report.hint, EXIT_SKIPPED)
        allowed, why = can_run_unattended(variant, report)
        if not allowed:
            verdict = report.fit(variant)
            hint = verdict.suggestion or "; ".join(verdict.fixes)
            if not report.cached(variant.id):
                hint = f"Download it first: gemma-desktop download --variant {variant.id}"
            raise ServeRefused(why, hint or report.hint, EXIT_SKIPPED)
        return report, variant

    def _on_engine_status(self, status: EngineStatus) -> None:
        if status.state == EngineState.CRASHED and self.api is not None:
            self._failure = GemmaDesktopError(
                f"The engine stopped: {status.detail or 'it crashed'}",
                status.hint or "Start gemma-desktop serve again; vLLM's log is engine.log.",
            )
            self._stopped.set()

    def request_stop(self) -> None:
        """Ask :meth:`wait_stopped` to return (Ctrl+C, SIGTERM); safe from a signal handler
        installed with ``loop.add_signal_handler``."""
        self._stopped.set()

    async def wait_stopped(self) -> GemmaDesktopError | None:
        """Wait until :meth:`request_stop` or an engine crash; the crash's error, if any."""
        await self._stopped.wait()
        return self._failure

    async def stop(self) -> None:
        """Stop serving, shut the engine down and give up the claim (idempotent)."""
        api, self.api = self.api, None
        if api is not None:
            await api.stop()
        engine, self.engine = self.engine, None
        if engine is not None:
            await engine.shutdown()
        if self._owner is not None:
            self._owner.release()
