"""JSON-schema answers from the app's own engine (``SamplingOptions.json_schema``, what
``gemma-desktop chat --json-schema`` sends): random weights write nothing sensible, yet the
answer parses and validates, because the grammar allows nothing else."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest

from gemma_desktop.core.engine.protocol import ChatMessage, SamplingOptions, TextDelta
from gemma_desktop.core.engine.vllm_local import VllmEngine, VllmStreamEnd
from tests.fixtures.engine import collect_stream

pytestmark = pytest.mark.engine

Arun = Callable[..., Any]
#: Every answer is short: random weights cannot ramble inside it.
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "Rome", "Oslo"]},
        "sunny": {"type": "boolean"},
        "rank": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {"type": "array", "items": {"enum": ["warm", "wet"]}, "maxItems": 2},
    },
    "required": ["city", "sunny", "rank", "tags"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_random_weight_gemma4_answers_json_that_validates(
    gemma4_engine: VllmEngine, arun: Arun, temperature: float
) -> None:
    options = SamplingOptions(temperature=temperature, seed=3, max_tokens=96, json_schema=SCHEMA)
    messages = [ChatMessage("user", "The weather, as JSON.")]
    items, end = arun(collect_stream(gemma4_engine.chat(messages, options), VllmStreamEnd), 120)
    text = "".join(item.text for item in items if isinstance(item, TextDelta))
    jsonschema.validate(json.loads(text), SCHEMA)
    assert end.stats.finish_reason == "stop"
    assert " " not in text and "\n" not in text  # compact: no whitespace to wander in
