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
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from reward_models.hardware import eager_from_env, engine_dtype


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A server process started by :func:`running`."""

    url: str
    proc: subprocess.Popen
    log: Path
    statuses: set[int | None] = field(default_factory=set)  # /health answers seen while waiting (None: refused)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                status = httpx.get(f"{self.url}/health", timeout=2).status_code
            except httpx.TransportError:
                status = None
            self.statuses.add(status)
            if status == 200:
                return
            time.sleep(1)
        raise RuntimeError(f"server not healthy after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self, grace: float = 60) -> int:
        """SIGTERM, then wait for the graceful shutdown; returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@contextlib.contextmanager
def running(cmd: list[str], log: Path, env: dict[str, str] | None = None, timeout: float = 600) -> Iterator[Server]:
    """Run a server command on a free port (``{port}`` in ``cmd`` is replaced) until it is healthy."""
    port = free_port()
    cmd = [part.replace("{port}", str(port)) for part in cmd]
    with log.open("w") as sink:
        proc = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, env=os.environ | {"HF_HUB_OFFLINE": "1"} | (env or {})
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    try:
        server.wait_healthy(timeout)
        yield server
    finally:
        if server.proc.poll() is None:
            server.stop()


def ponder_cmd(
    model: str, prm: str | None, memory_fraction: float, *extra: str, prm_format: str | None = None
) -> list[str]:
    """``ponder serve`` on ``model`` and ``prm`` (read as ``prm_format``; None: as its config says)."""
    cmd = [
        sys.executable,
        "-m",
        "server.cli",
        "serve",
        "--model",
        model,
        "--port",
        "{port}",
        "--memory-fraction",
        str(memory_fraction),
        "--log-level",
        "warning",
        *extra,
    ]
    if prm and prm_format:
        cmd += ["--prm-format", prm_format]
    return cmd + (["--prm", prm] if prm else ["--no-prm"])


def vllm_cmd(model: str, memory_fraction: float, seed: int = 0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--port",
        "{port}",
        "--host",
        "127.0.0.1",
        "--gpu-memory-utilization",
        str(memory_fraction),
        "--seed",
        str(seed),
        "--served-model-name",
        "model",
        "--disable-log-stats",
        "--dtype",
        engine_dtype("auto"),  # as Ponder's engines run: float32 where bf16 would be emulated (2.3x slower on arith)
        *(["--enforce-eager"] if eager_from_env() else []),  # as Ponder's engines run (PONDER_ENFORCE_EAGER)
    ]


def shown_path(path: str | Path) -> str:
    """``path`` as a report or a log line shows it: relative to the working directory where it lies under it (as
    given first, so a ``.venv`` symlink stays in the checkout; then with links resolved), else under the home
    directory as ``~/...``, else as it is; so a saved report names no one machine's layout.

    >>> shown_path(Path.cwd() / "models" / "x"), shown_path(Path.home() / ".cache" / "m"), shown_path("/srv/m")
    ('models/x', '~/.cache/m', '/srv/m')
    """
    for absolute, cwd in ((Path(path).absolute(), Path.cwd()), (Path(path).resolve(), Path.cwd().resolve())):
        if absolute.is_relative_to(cwd):
            return str(absolute.relative_to(cwd))
    home = Path.home()
    if Path(path).absolute().is_relative_to(home) and home != Path("/"):
        return str(Path("~") / Path(path).absolute().relative_to(home))
    return str(path)


def check_model_folders(*folders: tuple[str, str | None]) -> None:
    """ValueError, one line, for a (flag, folder) given that is not a model folder (no ``config.json``)."""
    for flag, folder in folders:
        if folder is not None and not (Path(folder) / "config.json").is_file():
            raise ValueError(f"{flag} {folder}: not a model folder (no config.json)")
