"""The local OpenAI-compatible endpoint over the shared engine, used with the official client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from gemma_desktop.core import paths
from gemma_desktop.core.engine.local_api import (
    LocalApiError,
    LocalApiServer,
    LocalApiTokenStore,
    server_for,
)
from tests.core.engine.remote.conftest import free_port

Arun = Callable[..., Any]
DEPLOYMENT = "gemma-local"


@pytest.fixture
def endpoint(shared_engine: Any, arun: Arun) -> Iterator[LocalApiServer]:
    server = server_for(shared_engine, DEPLOYMENT, port=0)
    arun(server.start(), timeout=120)
    try:
        yield server
    finally:
        arun(server.stop(), timeout=60)


def client_for(server: LocalApiServer, key: str | None = None) -> openai.AsyncOpenAI:
    assert server.address is not None and server.token is not None
    return openai.AsyncOpenAI(
        base_url=server.address, api_key=key or server.token.value, max_retries=0
    )


async def story(client: openai.AsyncOpenAI, max_tokens: int) -> Any:
    """A greedy streamed chat completion of "Once upon a time,"."""
    return await client.chat.completions.create(
        model=DEPLOYMENT,
        messages=[{"role": "user", "content": "Once upon a time,"}],
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
    )


@pytest.mark.engine
def test_openai_client_streams_chat_and_completions(
    endpoint: LocalApiServer, shared_engine: Any, arun: Arun
) -> None:
    assert endpoint.address == f"http://127.0.0.1:{endpoint.port}/v1"
    token = endpoint.token
    assert token is not None and token.value.startswith("gd-local-")

    async def scenario() -> tuple[list[str], list[str], str, str | None]:
        async with client_for(endpoint) as client:
            models = [m.id async for m in client.models.list()]
            stream = await story(client, 16)
            pieces = [
                chunk.choices[0].delta.content or ""
                async for chunk in stream
                if chunk.choices and chunk.choices[0].delta.content
            ]
            completion = await client.completions.create(
                model=DEPLOYMENT, prompt="The capital of France is", temperature=0, max_tokens=8
            )
            return models, pieces, completion.choices[0].text, completion.choices[0].finish_reason

    models, pieces, text, finish = arun(scenario(), timeout=180)
    assert models == [DEPLOYMENT]
    assert len(pieces) >= 2, "the answer streams in pieces"
    assert "".join(pieces).strip()
    assert text.strip()
    assert finish == "length"
    assert shared_engine.status.state.value == "ready"


@pytest.mark.engine
def test_closing_a_stream_aborts_it_in_the_engine(endpoint: LocalApiServer, arun: Arun) -> None:
    client_engine = endpoint.current_engine_client()

    async def scenario() -> int:
        async with client_for(endpoint) as client:
            stream = await story(client, 1500)
            seen = 0
            three = asyncio.Event()

            async def read() -> None:
                nonlocal seen
                async for _chunk in stream:
                    seen += 1
                    if seen == 3:
                        three.set()

            # Stop the way the app does: cancel the reader, then close the stream
            # (breaking out of the loop would leave httpx's generators to the GC).
            reader = asyncio.ensure_future(read())
            waiter = asyncio.ensure_future(three.wait())
            await asyncio.wait({reader, waiter}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            for task in (reader, waiter):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await stream.close()
        for _ in range(300):  # vLLM notices the disconnect within a step or two
            if client_engine.output_processor.get_num_unfinished_requests() == 0:
                return seen
            await asyncio.sleep(0.1)
        raise AssertionError("the engine still runs the closed request")

    assert arun(scenario(), timeout=120) >= 3


@pytest.mark.engine
def test_requests_without_the_token_get_401(endpoint: LocalApiServer, arun: Arun) -> None:
    async def scenario() -> tuple[int, int]:
        async with client_for(endpoint, key="gd-local-wrong") as client:
            with pytest.raises(openai.AuthenticationError):
                await client.models.list()
        async with httpx.AsyncClient() as http:
            bare = await http.get(f"{endpoint.address}/models")
            chat = await http.post(
                f"{endpoint.address}/chat/completions",
                json={"model": DEPLOYMENT, "messages": [{"role": "user", "content": "hi"}]},
            )
        return bare.status_code, chat.status_code

    assert arun(scenario(), timeout=60) == (401, 401)


@pytest.mark.engine
def test_foreign_host_and_cross_origin_requests_are_refused(
    endpoint: LocalApiServer, arun: Arun
) -> None:
    assert endpoint.token is not None
    auth = {"Authorization": f"Bearer {endpoint.token.value}"}
    port = endpoint.port

    async def scenario() -> dict[str, httpx.Response]:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            return {
                "ok": await http.get("/v1/models", headers=auth),
                "localhost": await http.get(
                    "/v1/models", headers={**auth, "Host": f"localhost:{port}"}
                ),
                "rebound": await http.get(
                    "/v1/models", headers={**auth, "Host": f"attacker.example:{port}"}
                ),
                "other port": await http.get(
                    "/v1/models", headers={**auth, "Host": f"127.0.0.1:{port + 1}"}
                ),
                "cross origin": await http.post(
                    "/v1/chat/completions",
                    headers={**auth, "Origin": "https://attacker.example"},
                    json={"model": DEPLOYMENT, "messages": [{"role": "user", "content": "x"}]},
                ),
                "null origin": await http.get("/v1/models", headers={**auth, "Origin": "null"}),
                "preflight": await http.options(
                    "/v1/chat/completions",
                    headers={
                        "Origin": "https://attacker.example",
                        "Access-Control-Request-Method": "POST",
                        "Access-Control-Request-Headers": "authorization,content-type",
                    },
                ),
                "cross-site fetch": await http.get(
                    "/v1/models", headers={**auth, "Sec-Fetch-Site": "cross-site"}
                ),
            }

    answers = arun(scenario(), timeout=60)
    assert answers["ok"].status_code == 200
    assert answers["localhost"].status_code == 200
    for name in (
        "rebound",
        "other port",
        "cross origin",
        "null origin",
        "preflight",
        "cross-site fetch",
    ):
        assert answers[name].status_code == 403, name
        assert "access-control-allow-origin" not in answers[name].headers, name
    assert "Host not allowed" in answers["rebound"].text


@pytest.mark.engine
def test_listens_on_loopback_only(endpoint: LocalApiServer) -> None:
    port = endpoint.port
    listening = [
        conn
        for conn in psutil.Process().net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
    ]
    assert listening, "the endpoint listens"
    assert {conn.laddr.ip for conn in listening} == {"127.0.0.1"}

    others = {
        addr.address
        for addrs in psutil.net_if_addrs().values()
        for addr in addrs
        if addr.family == socket.AF_INET and not addr.address.startswith("127.")
    }
    for ip in others:
        with pytest.raises(OSError), socket.create_connection((ip, port), timeout=2):
            pass


@pytest.mark.engine
def test_token_is_kept_in_a_private_file_without_a_keyring(shared_engine: Any, arun: Arun) -> None:
    # The test run's keyring is keyring's real "fail" backend (tests/conftest.py).
    server = server_for(shared_engine, DEPLOYMENT, port=0)
    arun(server.start(), timeout=120)
    try:
        token = server.token
        assert token is not None and token.source == "file"
        assert token.file == paths.config_dir() / "local-api-token"
        assert stat.S_IMODE(os.stat(token.file).st_mode) == 0o600
        assert token.file.read_text(encoding="utf-8").strip() == token.value
        settings_file = paths.config_dir() / "settings.json"
        assert not settings_file.exists() or token.value not in settings_file.read_text()
    finally:
        arun(server.stop(), timeout=60)

    # The same token on the next start; nothing listens after stop.
    again = server_for(shared_engine, DEPLOYMENT, port=0)
    arun(again.start(), timeout=120)
    try:
        assert again.token is not None and again.token.value == token.value
    finally:
        arun(again.stop(), timeout=60)
    assert not again.running and again.address is None


def test_token_file_is_private_and_regenerates(tmp_path: Path) -> None:
    store = LocalApiTokenStore(tmp_path / "cfg" / "local-api-token")
    assert store.load() is None
    first = store.get_or_create()
    assert first.source == "file"
    assert stat.S_IMODE(os.stat(store.token_file).st_mode) == 0o600
    assert store.get_or_create() == first
    second = store.regenerate()
    assert second.value != first.value
    assert store.load() == second


def test_without_an_engine_requests_get_503(arun: Arun) -> None:
    server = LocalApiServer(lambda: None, DEPLOYMENT, port=0)
    arun(server.start(), timeout=120)
    try:
        assert server.token is not None

        async def ask() -> httpx.Response:
            async with httpx.AsyncClient() as http:
                return await http.get(
                    f"{server.address}/models",
                    headers={"Authorization": f"Bearer {server.token.value}"},  # type: ignore[union-attr]
                )

        response = arun(ask(), timeout=30)
        assert response.status_code == 503
        assert "not running" in response.json()["error"]["message"]
    finally:
        arun(server.stop(), timeout=30)
    assert server_for(object(), DEPLOYMENT) is None  # type: ignore[arg-type]  # not vLLM


def test_a_taken_port_is_a_clear_error(arun: Arun) -> None:
    port = free_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen(1)
        server = LocalApiServer(lambda: None, DEPLOYMENT, port=port)
        with pytest.raises(LocalApiError) as info:
            arun(server.start(), timeout=120)
        assert f"Port {port}" in info.value.reason
        assert "another port" in info.value.hint
    assert not server.running


@pytest.mark.engine
def test_stopping_mid_stream_ends_it_and_frees_the_engine(shared_engine: Any, arun: Arun) -> None:
    server = server_for(shared_engine, DEPLOYMENT, port=0)
    arun(server.start(), timeout=120)
    engine_client = server.current_engine_client()
    port = server.port

    async def scenario() -> tuple[int, bool]:
        seen = 0
        broke = False
        async with client_for(server) as client:
            stream = await story(client, 1500)
            try:
                async for _chunk in stream:
                    seen += 1
                    if seen == 3:
                        await server.stop()
            except (openai.APIError, httpx.HTTPError):
                broke = True
        for _ in range(300):
            if engine_client.output_processor.get_num_unfinished_requests() == 0:
                return seen, broke
            await asyncio.sleep(0.1)
        raise AssertionError("the engine still runs the request of a stopped endpoint")

    seen, _broke = arun(scenario(), timeout=120)
    assert seen >= 3
    assert seen < 1500, "the stream ended when the endpoint stopped"
    assert not server.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
