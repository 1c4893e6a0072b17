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
    ("vllm.entrypoints.anthropic.api_router", "attach_router"),
    ("vllm.entrypoints.anthropic.serving", "AnthropicServingMessages"),
    ("vllm.entrypoints.serve.exception_handling.register", "init_exception_handler"),
    ("vllm.tool_parsers", "ToolParserManager"),
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


def test_the_parsers_and_arguments_the_local_api_names_exist() -> None:
    """``serve_model_with`` sets what ``vllm serve --reasoning-parser gemma4
    --enable-auto-tool-choice --tool-call-parser gemma4`` sets, by the same names."""
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    assert ToolParserManager.get_tool_parser(vllm_compat.GEMMA4_TOOL_PARSER)
    assert ReasoningParserManager.get_reasoning_parser(vllm_compat.GEMMA4_REASONING_PARSER)
    args = vllm_compat.openai_server_args("gemma-local")
    before = set(vars(args))
    vllm_compat.serve_model_with(
        args,
        model="/models/gemma",
        chat_template=None,
        reasoning_parser=vllm_compat.GEMMA4_REASONING_PARSER,
        tool_parser=vllm_compat.GEMMA4_TOOL_PARSER,
    )
    assert set(vars(args)) == before  # no name vLLM's parser does not have
    assert args.structured_outputs_config.reasoning_parser == "gemma4"
    assert (args.enable_auto_tool_choice, args.tool_call_parser) == (True, "gemma4")


ANTHROPIC_THINKING = """
import os
from vllm.entrypoints.anthropic.protocol import AnthropicMessagesRequest
from vllm.entrypoints.anthropic.serving import AnthropicServingMessages
from gemma_desktop.core.engine import vllm_compat

def converted(**extra):
    request = AnthropicMessagesRequest(
        model="m", max_tokens=2048, messages=[{"role": "user", "content": "hi"}], **extra
    )
    kwargs = AnthropicServingMessages.to_chat_completion_request(request).chat_template_kwargs
    return (kwargs or {}).get("enable_thinking")

thinking = {"thinking": {"type": "enabled", "budget_tokens": 1024}}
os.environ[vllm_compat.ADJUSTMENTS_OFF_ENV] = "anthropic-thinking"
print(vllm_compat.anthropic_thinking_turns_thinking_on(), converted(**thinking))
del os.environ[vllm_compat.ADJUSTMENTS_OFF_ENV]
print(vllm_compat.anthropic_thinking_turns_thinking_on(), converted(**thinking))
print(converted(), converted(thinking={"type": "disabled"}))
print(converted(**thinking, chat_template_kwargs={"enable_thinking": False}))
"""


def test_anthropic_thinking_turns_thinking_on_only_with_the_adjustment() -> None:
    """Without it, Anthropic's ``thinking`` leaves Gemma 4's ``enable_thinking`` unset (the
    template's default: off); with it, on. A request's own choice is kept."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", ANTHROPIC_THINKING], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()[-4:]
    assert lines == ["False None", "True True", "None None", "False"]
