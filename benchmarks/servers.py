"""Start and stop the servers a benchmark compares (Ponder, vLLM's own OpenAI server) on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(1)
    raise RuntimeError(f"server not healthy after {timeout} s:\n{log.read_text()[-2000:]}")


@contextlib.contextmanager
def running(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run a server command on a free port (``{port}`` in ``cmd`` is replaced); yields its base URL."""
    port = free_port()
    cmd = [part.replace("{port}", str(port)) for part in cmd]
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT,
                                env=os.environ | {"HF_HUB_OFFLINE": "1"} | (env or {}))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def ponder_cmd(model: str, prm: str | None, memory_fraction: float, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "server.cli", "serve", "--model", model, "--port", "{port}",
           "--memory-fraction", str(memory_fraction), "--log-level", "warning", *extra]
    return cmd + (["--prm", prm] if prm else ["--no-prm"])


def vllm_cmd(model: str, memory_fraction: float, seed: int = 0) -> list[str]:
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--port", "{port}",
            "--host", "127.0.0.1", "--gpu-memory-utilization", str(memory_fraction), "--seed", str(seed),
            "--served-model-name", "model", "--disable-log-stats"]
