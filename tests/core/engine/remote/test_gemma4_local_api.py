"""The local OpenAI-compatible endpoint over the Gemma 4 engine: images and audio from the
official client, as any OpenAI app sends them."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gemma_desktop.core.engine.local_api import LocalApiServer, server_for
from tests.fixtures.gemma4 import QUESTION, TransformersGemma4

pytestmark = pytest.mark.engine

Arun = Callable[..., Any]
DEPLOYMENT = "gemma-local"


@pytest.fixture
def endpoint(gemma4_engine: Any, arun: Arun) -> Iterator[LocalApiServer]:
    server = server_for(gemma4_engine, DEPLOYMENT, port=0)
    assert server is not None
    arun(server.start(), timeout=120)
    try:
        yield server
    finally:
        arun(server.stop(), timeout=60)


def content(kind: str, media: dict[str, Path]) -> list[dict[str, Any]]:
    """OpenAI content parts, built from the files' bytes (nothing of the app's)."""
    parts: list[dict[str, Any]] = []
    data = base64.b64encode(media[kind].read_bytes()).decode() if kind in media else ""
    if kind == "image":
        parts.append({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}})
    if kind == "audio":
        parts.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
    parts.append({"type": "text", "text": QUESTION})
    return parts


def test_the_openai_client_streams_text_image_and_audio(
    endpoint: LocalApiServer,
    gemma4_engine: Any,
    gemma4_media: dict[str, Path],
    gemma4_transformers: TransformersGemma4,
    arun: Arun,
) -> None:
    assert endpoint.address is not None and endpoint.token is not None

    async def ask(kind: str) -> tuple[list[str], int, int]:
        async with openai.AsyncOpenAI(
            base_url=endpoint.address, api_key=endpoint.token.value, max_retries=0
        ) as client:
            stream = await client.chat.completions.create(
                model=DEPLOYMENT,
                messages=[{"role": "user", "content": content(kind, gemma4_media)}],
                temperature=0,
                max_tokens=16,
                stream=True,
                stream_options={"include_usage": True},
            )
            pieces: list[str] = []
            prompt_tokens = chunks = 0
            async for chunk in stream:
                if chunk.usage is not None:
                    prompt_tokens = chunk.usage.prompt_tokens
                if chunk.choices:
                    chunks += 1
                    delta = chunk.choices[0].delta
                    text = delta.content or getattr(delta, "reasoning", None) or ""
                    if text:
                        pieces.append(text)
            return pieces, prompt_tokens, chunks

    counts = {}
    for kind in ("text", "image", "audio"):
        pieces, counts[kind], chunks = arun(ask(kind), timeout=120)
        assert chunks >= 2, f"{kind}: the answer streams in steps"
        assert "".join(pieces), f"{kind}: some answer"
    assert counts["text"] == len(gemma4_transformers.prompt_ids("text", gemma4_media))
    for kind in ("image", "audio"):
        assert counts[kind] == counts["text"] + gemma4_transformers.attachment_tokens(
            kind, gemma4_media
        )
    assert gemma4_engine.status.state.value == "ready"
