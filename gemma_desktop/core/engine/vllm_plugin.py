"""The app's code that runs in *every* vLLM process, through vLLM's plugin entry point.

vLLM calls each ``vllm.general_plugins`` entry point (declared in
``pyproject.toml``) in the process that creates the engine (the app's), in
its EngineCore process and in each worker, before the model is built. That
is the one place where the app can act inside vLLM's own processes:

* :func:`gemma_desktop.core.engine.processes.arm_parent_death_signal`: an
  engine process dies with the app that started it, even after ``kill -9``;
* :func:`gemma_desktop.core.engine.vllm_compat.apply_engine_process_adjustments`:
  the version-guarded adjustments vLLM and transformers need in those
  processes (Gemma 4 beside the CPU build of torch).

It must stay cheap and import-safe: no Qt, nothing that fails when the app's
own modules are missing.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def register() -> None:
    """vLLM's entry point (``gemma_desktop.core.engine.vllm_plugin:register``)."""
    from gemma_desktop.core.engine import processes, vllm_compat

    processes.arm_parent_death_signal()
    vllm_compat.apply_engine_process_adjustments()
