"""The local API's guards on their own (no engine): the token as OpenAI and Anthropic clients
send it, and what listening beyond loopback changes."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from gemma_desktop.core.engine.local_api import (
    LoopbackGuard,
    TokenGuard,
    exposure_warning,
    is_loopback,
)

TOKEN = "gd-local-test-token"
PORT = 11435


def guarded(*, any_host: bool = False) -> TestClient:
    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app: Any = Starlette(
        routes=[Route("/v1/models", ok), Route("/v1/messages", ok, methods=["POST"])]
    )
    app = TokenGuard(app, TOKEN)
    app = LoopbackGuard(app, PORT, any_host=any_host)
    return TestClient(app, base_url=f"http://127.0.0.1:{PORT}")


def test_the_token_as_bearer_or_x_api_key() -> None:
    client = guarded()
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}).text == "ok"
    assert client.get("/v1/models", headers={"x-api-key": TOKEN}).text == "ok"
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"x-api-key": "nope"},
        {"Authorization": TOKEN},
    ):
        refused = client.get("/v1/models", headers=headers)
        assert refused.status_code == 401
        assert "api-token" in refused.json()["error"]["message"]
    anthropic = client.post("/v1/messages", headers={"x-api-key": "nope"})
    assert anthropic.status_code == 401
    assert anthropic.json()["type"] == "error"
    assert anthropic.json()["error"]["type"] == "authentication_error"


def test_beyond_loopback_any_host_name_but_still_no_browser_pages() -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Host": "gpu-box.lan:11435"}
    assert guarded().get("/v1/models", headers=headers).status_code == 403
    exposed = guarded(any_host=True)
    assert exposed.get("/v1/models", headers=headers).text == "ok"
    page = exposed.get("/v1/models", headers={**headers, "Origin": "http://gpu-box.lan"})
    assert page.status_code == 403


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("192.168.1.5", False),
    ],
)
def test_what_listening_on_a_host_exposes(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    warning = exposure_warning(host)
    assert (warning is None) is loopback
    if warning is not None:
        assert host in warning and "token" in warning and "GPU" in warning
