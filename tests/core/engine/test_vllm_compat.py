"""The fence around vLLM's internals: every name it reaches exists in the installed build,
it is on the line the fence was written for, and each adjustment is guarded by version."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from gemma_desktop.core.engine import vllm_compat

#: (module, attribute) for every reach into vLLM that is not its public API.
INTERNALS = [
    ("vllm.renderers.hf", "maybe_make_thread_pool"),
    ("vllm.tokenizers.hf", "get_cached_tokenizer"),
    ("vllm.tokenizers.hf", "maybe_make_thread_pool"),
    ("vllm.entrypoints.openai.chat_completion.api_router", "attach_router"),
    ("vllm.entrypoints.openai.completion.api_router", "attach_router"),
    ("vllm.entrypoints.openai.models.api_router", "attach_router"),
    ("vllm.entrypoints.serve.exception_handling.register", "init_exception_handler"),
    ("vllm.entrypoints.serve.middleware.authenticate", "AuthenticationMiddleware"),
    ("vllm.entrypoints.launchers.api_server.app_state", "init_app_state"),
    ("vllm.entrypoints.launchers.cli_args", "make_arg_parser"),
    ("vllm.utils.argparse_utils", "FlexibleArgumentParser"),
    ("vllm.reasoning", "ReasoningParserManager"),
    # transformers' Gemma 4 modules the Gemma 4 adjustments reach into
    ("transformers.models.gemma4.image_processing_pil_gemma4", "Gemma4ImageProcessorKwargs"),
    ("transformers.models.gemma4.image_processing_pil_gemma4", "get_aspect_ratio_preserving_size"),
    ("transformers.models.gemma4.image_processing_pil_gemma4", "_SUPPORTED_SOFT_TOKENS"),
    ("transformers.models.gemma4.modeling_gemma4", "Gemma4AudioLightConv1d"),
    ("transformers.models.auto.video_processing_auto", "AutoVideoProcessor"),
]


@pytest.mark.parametrize(("module", "name"), INTERNALS)
def test_every_internal_name_exists_in_the_installed_build(module: str, name: str) -> None:
    assert hasattr(importlib.import_module(module), name), f"{module}.{name}"


def test_the_installed_build_is_on_the_supported_line() -> None:
    version = vllm_compat.installed_version()
    assert version is not None
    assert vllm_compat.version_line(version) == vllm_compat.SUPPORTED_LINE
    assert vllm_compat.on_supported_line()
    assert vllm_compat.version_line("0.32.0+cpu") == (0, 32)
    assert vllm_compat.version_line("0.33.1") == (0, 33)
    assert vllm_compat.version_line("garbage") is None


def test_another_line_changes_nothing_and_the_local_api_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(vllm_compat, "installed_version", lambda: "0.33.0")
    assert not vllm_compat.on_supported_line()
    assert vllm_compat.cheapen_tokenizer_copies() is False
    with pytest.raises(vllm_compat.UnsupportedVllmError) as info:
        vllm_compat.openai_server_args("gemma-local")
    assert "0.32" in info.value.reason and "0.33.0" in info.value.reason
    assert "gemma-desktop[cpu]" in info.value.hint


def test_the_tokenizer_copies_are_cheap_only_with_the_adjustment(
    monkeypatch: pytest.MonkeyPatch, bundled_model_path: Any
) -> None:
    """vLLM's renderer deep-copies the tokenizer into a pool; the adjustment makes the copy
    share the (immutable) backend. Without it, the pool holds a second parsed tokenizer."""
    import vllm.renderers.hf as hf_renderer
    from transformers import AutoTokenizer

    calls: list[object] = []
    original = vllm_compat._shallow_deepcopy

    def spy(self: Any, memo: dict[int, Any]) -> Any:
        calls.append(self)
        return original(self, memo)

    monkeypatch.setattr(vllm_compat, "_shallow_deepcopy", spy)
    assert vllm_compat.cheapen_tokenizer_copies() is True
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model_path))
    pooled = hf_renderer.maybe_make_thread_pool(tokenizer, 1)
    assert calls, "the renderer's pool deep-copied the tokenizer"
    assert pooled("hello").input_ids == tokenizer("hello").input_ids
