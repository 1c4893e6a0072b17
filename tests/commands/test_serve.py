"""``gemma-desktop serve`` as a user runs it, used through the real ``openai`` and ``anthropic``
SDKs: one server per module, on the scripted Gemma 4 checkpoint
(tests/fixtures/scripted_gemma4.py) downloaded as ``google/gemma-4-E2B-it``.

The checkpoint's weights write a ``get-sum`` tool call (and, after a tool response, a fixed
answer), so the tool tests see vLLM's own ``gemma4`` parser at work; elsewhere its weights
say nothing, like random weights, which is what the JSON-schema tests need. The last test
stops the server with SIGINT and checks that no engine process is left.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import openai
import psutil
import pytest

from tests.fixtures.scripted_gemma4 import (
    ANSWER,
    SCRIPTED_REPO_ID,
    THOUGHT,
    TOOL_ARGUMENTS,
    TOOL_NAME,
)

pytestmark = pytest.mark.engine

MODEL = "gemma-local"
SERVE = (sys.executable, "-m", "gemma_desktop", "serve")
START_TIMEOUT_S = 420
SUM_TOOL = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Adds two numbers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    },
}
ANTHROPIC_SUM_TOOL = {
    "name": TOOL_NAME,
    "description": "Adds two numbers.",
    "input_schema": SUM_TOOL["function"]["parameters"],  # type: ignore[index]
}
QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]
#: A schema whose every answer is short: random weights cannot ramble inside it.
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "Rome", "Oslo"]},
        "sunny": {"type": "boolean"},
        "rank": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["city", "sunny", "rank"],
    "additionalProperties": False,
}


@dataclass
class Served:
    """The running ``serve`` process: its environment, addresses, token and processes."""

    proc: subprocess.Popen[str]
    env: dict[str, str]
    runtime_dir: Path
    openai_url: str
    anthropic_url: str
    token: str
    stdout: str
    stderr_path: Path
    pids: set[int]

    def remember_children(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.pids.update(p.pid for p in psutil.Process(self.proc.pid).children(recursive=True))

    def openai(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.openai_url, api_key=key or self.token, max_retries=0)

    def anthropic(self, key: str | None = None) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=self.anthropic_url, api_key=key or self.token, max_retries=0
        )


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gemma_desktop", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def user_env(root: Path, hub_cache: Path) -> dict[str, str]:
    """A user's environment of its own under ``root``, with ``hub_cache`` as the Hub cache."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_CACHE=str(hub_cache))
    for var, sub in (
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_RUNTIME_DIR", "run"),
        ("HF_HOME", "hf"),
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(root / sub)
    (root / "run").chmod(0o700)
    return env


def _read_ready(proc: subprocess.Popen[str], stderr_path: Path) -> str:
    """stdout up to the ready banner's last line (or fail with the server's stderr)."""
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("")  # end of stdout

    threading.Thread(target=read, daemon=True).start()
    text = ""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if not line:
            break
        text += line
        if "Stop with Ctrl+C." in line:
            return text
    tail = stderr_path.read_text(errors="replace")[-3000:]
    pytest.fail(f"serve did not get ready (exit {proc.poll()}):\n{text}\n{tail}")


@pytest.fixture(scope="module")
def served(
    scripted_gemma4_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serve-user")
    env = user_env(root, scripted_gemma4_cache)
    stderr_path = root / "serve.stderr"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            [*SERVE, "--variant", SCRIPTED_REPO_ID, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            start_new_session=True,
        )
    pids = {proc.pid}
    try:
        stdout = _read_ready(proc, stderr_path)
        openai_url = re.search(r"OpenAI API:\s+(\S+)", stdout)
        anthropic_url = re.search(r"Anthropic API:\s+(\S+)", stdout)
        assert openai_url and anthropic_url, stdout
        token = cli("api-token", env=env)
        assert token.returncode == 0, token.stderr
        served = Served(
            proc,
            env,
            root / "run",
            openai_url.group(1),
            anthropic_url.group(1),
            token.stdout.strip(),
            stdout,
            stderr_path,
            pids,
        )
        served.remember_children()
        yield served
    finally:
        with contextlib.suppress(psutil.Error):
            pids.update(p.pid for p in psutil.Process(proc.pid).children(recursive=True))
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        procs = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(pid))
        _, alive = psutil.wait_procs(procs, timeout=20)
        for leftover in alive:
            with contextlib.suppress(psutil.Error):
                leftover.kill()
        assert not alive, f"serve left processes behind: {alive}"


# --- what it prints and lists --------------------------------------------------------------


def test_serve_prints_where_it_listens_and_where_the_token_is(served: Served) -> None:
    assert served.openai_url.startswith("http://127.0.0.1:") and served.openai_url.endswith("/v1")
    assert served.anthropic_url + "/v1" == served.openai_url
    assert f"Serving {SCRIPTED_REPO_ID} as model '{MODEL}'" in served.stdout
    # No keyring in the tests: the token lives in the app's private file, never on screen.
    assert "local-api-token (readable only by you)" in served.stdout
    assert served.token.startswith("gd-local-") and served.token not in served.stdout
    where = cli("api-token", "--where", env=served.env)
    assert where.stdout.strip().startswith("file ") and "local-api-token" in where.stdout


def test_models_lists_the_context_length_and_what_the_model_takes(served: Served) -> None:
    models = served.openai().models.list().data
    assert [m.id for m in models] == [MODEL]
    card = models[0].model_dump()
    assert card["max_model_len"] == 4096  # the app's CPU context
    assert card["input_modalities"] == ["text", "image", "audio"]
    assert set(card["capabilities"]) == {"tools", "thinking", "json_schema"}
    assert SCRIPTED_REPO_ID.replace("/", "--") in card["root"]  # what a remote app recognises


# --- tools ---------------------------------------------------------------------------------


def test_openai_tool_calls_are_parsed_streamed_and_answered(served: Served) -> None:
    client = served.openai()
    answer = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[SUM_TOOL], temperature=0, max_tokens=32
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.function.name == TOOL_NAME
    assert json.loads(call.function.arguments) == TOOL_ARGUMENTS

    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[SUM_TOOL], max_tokens=32, stream=True
    )
    names, arguments, finish = [], "", None
    for chunk in stream:
        for delta_call in chunk.choices[0].delta.tool_calls or []:
            if delta_call.function and delta_call.function.name:
                names.append(delta_call.function.name)
            arguments += (delta_call.function.arguments or "") if delta_call.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert names == [TOOL_NAME] and json.loads(arguments) == TOOL_ARGUMENTS
    assert finish == "tool_calls"

    follow_up = client.chat.completions.create(
        model=MODEL,
        messages=[
            *QUESTION,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "5"},
        ],
        tools=[SUM_TOOL],
        temperature=0,
        max_tokens=32,
    )
    assert follow_up.choices[0].message.content == ANSWER
    assert follow_up.choices[0].finish_reason == "stop"


def test_anthropic_tool_use_streamed_answered_and_with_thinking(served: Served) -> None:
    client = served.anthropic()
    message = client.messages.create(
        model=MODEL, max_tokens=32, messages=QUESTION, tools=[ANTHROPIC_SUM_TOOL]
    )
    assert message.stop_reason == "tool_use"
    (use,) = message.content
    assert use.type == "tool_use" and use.name == TOOL_NAME and use.input == TOOL_ARGUMENTS

    with client.messages.stream(
        model=MODEL, max_tokens=32, messages=QUESTION, tools=[ANTHROPIC_SUM_TOOL]
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert "input_json" in events and final.stop_reason == "tool_use"
    assert [(b.type, getattr(b, "input", None)) for b in final.content] == [
        ("tool_use", TOOL_ARGUMENTS)
    ]

    answered = client.messages.create(
        model=MODEL,
        max_tokens=32,
        tools=[ANTHROPIC_SUM_TOOL],
        messages=[
            *QUESTION,
            {"role": "assistant", "content": [use.model_dump(exclude_none=True)]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "5"}],
            },
        ],
    )
    assert answered.stop_reason == "end_turn"
    assert [(b.type, getattr(b, "text", None)) for b in answered.content] == [("text", ANSWER)]

    thought = client.messages.create(
        model=MODEL,
        max_tokens=1100,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=QUESTION,
        tools=[ANTHROPIC_SUM_TOOL],
    )
    kinds = [block.type for block in thought.content]
    assert kinds == ["thinking", "tool_use"], thought.content
    assert thought.content[0].thinking == THOUGHT  # type: ignore[union-attr]


# --- text, images and JSON ---------------------------------------------------------------


def test_anthropic_takes_an_image(served: Served) -> None:
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 40, 40)).save(png, "PNG")
    image = {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": "image/png",
            "data": base64.b64encode(png.getvalue()).decode(),
        },
    }
    client = served.anthropic()
    text_only = client.messages.create(
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "What is this?"}]
    )
    with_image = client.messages.create(
        model=MODEL,
        max_tokens=4,
        messages=[{"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}],
    )
    # 63 soft tokens and the image's begin and end markers (see FACTS.md)
    assert with_image.usage.input_tokens == text_only.usage.input_tokens + 65
    assert with_image.content and with_image.stop_reason in ("max_tokens", "end_turn", "tool_use")


def test_json_schema_and_json_object_answers_parse_and_validate(served: Served) -> None:
    client = served.openai()
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather?"}],
        temperature=0,
        max_tokens=64,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA},
        },
    )
    content = answer.choices[0].message.content or ""
    jsonschema.validate(json.loads(content), WEATHER_SCHEMA)
    assert answer.choices[0].finish_reason == "stop"

    sampled = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather?"}],
        temperature=1.0,
        seed=7,
        max_tokens=64,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA},
        },
    )
    jsonschema.validate(json.loads(sampled.choices[0].message.content or ""), WEATHER_SCHEMA)


def test_chat_json_schema_through_the_terminal(served: Served, tmp_path: Path) -> None:
    """``gemma-desktop chat --remote <serve> --json-schema FILE``: the terminal's JSON answer,
    from this computer's serve as a remote server (recognised as Gemma 4 by its folder)."""
    schema = tmp_path / "weather.json"
    schema.write_text(json.dumps(WEATHER_SCHEMA))
    env = dict(served.env, GEMMA_DESKTOP_REMOTE_API_KEY=served.token)
    proc = cli(
        "chat",
        "--remote",
        served.openai_url,
        "--json-schema",
        str(schema),
        "--temperature",
        "0",
        "--max-tokens",
        "64",
        "Weather?",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    jsonschema.validate(json.loads(proc.stdout), WEATHER_SCHEMA)


# --- guards ---------------------------------------------------------------------------------


def test_the_token_is_required_as_bearer_or_x_api_key(served: Served) -> None:
    with pytest.raises(openai.AuthenticationError):
        served.openai(key="gd-local-wrong").models.list()
    with pytest.raises(anthropic.AuthenticationError):
        served.anthropic(key="gd-local-wrong").messages.create(
            model=MODEL, max_tokens=4, messages=QUESTION
        )
    body = {"model": MODEL, "max_tokens": 4, "messages": QUESTION}
    root = served.anthropic_url
    bare = httpx.get(f"{served.openai_url}/models", timeout=30)
    assert bare.status_code == 401
    anonymous = httpx.post(f"{root}/v1/messages", json=body, timeout=30)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "authentication_error"  # Anthropic's shape
    # Anthropic's own clients (Claude Code and others) send x-api-key.
    keyed = httpx.post(
        f"{root}/v1/messages", json=body, headers={"x-api-key": served.token}, timeout=120
    )
    assert keyed.status_code == 200 and keyed.json()["type"] == "message"


def test_foreign_hosts_and_browser_origins_are_refused(served: Served) -> None:
    headers = {"Authorization": f"Bearer {served.token}"}
    url = f"{served.openai_url}/models"
    rebound = httpx.get(url, headers={**headers, "Host": "evil.example:80"}, timeout=30)
    assert rebound.status_code == 403
    page = httpx.get(url, headers={**headers, "Origin": "https://evil.example"}, timeout=30)
    assert page.status_code == 403 and "access-control-allow-origin" not in page.headers


def test_a_prompt_longer_than_the_context_gets_a_clear_400(served: Served) -> None:
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as info:
        served.openai().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x " * 5000}], max_tokens=4
        )
    assert "4096" in str(info.value)  # vLLM names the model's context length
    with pytest.raises(anthropic.BadRequestError):
        served.anthropic().messages.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "x " * 5000}]
        )
    assert time.monotonic() - started < 60


# --- one engine per user ----------------------------------------------------------------------


def test_a_second_serve_is_refused(served: Served) -> None:
    second = cli("serve", "--variant", SCRIPTED_REPO_ID, "--port", "0", env=served.env)
    assert second.returncode == 1, second.stderr[-2000:]
    assert f"gemma-desktop serve (pid {served.proc.pid})" in second.stderr
    assert "already running" in second.stderr and "Traceback" not in second.stderr


def test_the_window_refuses_a_second_engine_beside_serve(
    served: Served, monkeypatch: pytest.MonkeyPatch, arun: Any
) -> None:
    """The window's engine start goes through the assembly with the window's claim: beside a
    running serve it fails with who runs the model and how to use it instead."""
    from gemma_desktop.core.engine.assembly import EngineAssembly, MachineFacts
    from gemma_desktop.core.engine_owner import EngineOwnedError, EngineOwner
    from gemma_desktop.core.settings import load_settings

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(served.runtime_dir))
    owner = EngineOwner("window")
    assert not owner.acquire()
    assembly = EngineAssembly(owner=owner)
    with pytest.raises(EngineOwnedError) as info:
        arun(assembly.local(SCRIPTED_REPO_ID, load_settings(env={}), MachineFacts.cpu()), 30)
    assert f"gemma-desktop serve (pid {served.proc.pid}) at {served.anthropic_url}" in (
        info.value.reason
    )
    assert served.anthropic_url in info.value.hint and "api-token" in info.value.hint


# --- Ctrl+C (last: it stops the module's server) --------------------------------------------


def test_ctrl_c_stops_it_cleanly_with_no_engine_left(served: Served) -> None:
    served.remember_children()
    names = []
    for pid in served.pids - {served.proc.pid}:
        with contextlib.suppress(psutil.Error):
            names.append(psutil.Process(pid).name())
    assert "VLLM::EngineCore" in names
    served.proc.send_signal(signal.SIGINT)
    assert served.proc.wait(timeout=120) == 0
    procs = []
    for pid in served.pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    _, alive = psutil.wait_procs(procs, timeout=20)
    assert alive == [], f"left behind: {alive}"
    stderr = served.stderr_path.read_text(errors="replace")
    assert "stopped" in stderr.splitlines()[-40:] or "\nstopped\n" in stderr
    assert "Traceback" not in stderr
    # It logged where the app logs (vLLM's own log beside it).
    state = Path(served.env["XDG_STATE_HOME"]) / "gemma-desktop"
    log = (state / "gemma-desktop.log").read_text()
    assert f"serving {SCRIPTED_REPO_ID} as {MODEL} at {served.openai_url}" in log
    assert served.token not in log and (state / "engine.log").stat().st_size > 0
    # The claim went with it: the next serve or window may run the model.
    lock = served.runtime_dir / "gemma-desktop" / "engine-owner.lock"
    assert not lock.exists() or lock.read_text() == ""
