"""The engine room: the protocol the UI, CLI and local API talk to, and its implementations.

``protocol`` (what an engine is and declares), ``base`` (what both engines share),
``config`` (vLLM's settings), ``assembly`` (the one place that turns settings and
the probe's report into a running engine), ``vllm_local`` (vLLM in this process),
``remote`` (a ``vllm serve`` server), ``prompt``, ``local_api`` (the local
OpenAI-compatible endpoint), ``vllm_compat`` (every reach into vLLM internals)
and ``processes`` (the engine's child processes).
"""
