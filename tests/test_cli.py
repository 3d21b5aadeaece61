"""The command line: help, and one-line errors with a non-zero exit for every mistake (nothing is loaded)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest


def ponder(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )


def test_help_lists_the_flags():
    result = ponder("serve", "--help")
    assert result.returncode == 0
    for flag in ("--model", "--prm", "--host", "--port", "--backend", "--max-num-samples"):
        assert flag in result.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["serve", "--model", "/no/such/model"], "--model '/no/such/model' is not a model folder"),
        (["serve", "--model", "/tmp", "--prm", "/no/prm"], "is not a model folder"),
        (["serve", "--backend", "openai"], "--backend openai needs --base-url"),
        (["serve", "--max-num-samples", "0"], "--max-num-samples must be at least 1"),
        (["serve", "--memory-fraction", "1.5"], "between 0 and 1"),
        (["serve", "--port", "70000"], "not a valid port"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(args, says):
    result = ponder(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ponder: error:") and says in lines[0]
    assert "Traceback" not in result.stderr


def test_unknown_flag_is_an_argparse_error():
    result = ponder("serve", "--modle", "x")
    assert result.returncode == 2 and "unrecognized arguments: --modle" in result.stderr


def test_occupied_port_is_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = ponder("serve", "--model", "/tmp", "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.strip() == f"ponder: error: cannot listen on 127.0.0.1:{port}: Address already in use"


@pytest.mark.parametrize(
    "flag", ["--request-timeout", "--max-tree-nodes", "--max-body-bytes", "--max-concurrent-requests"]
)
def test_limit_flags_must_be_positive(flag):
    result = ponder("serve", flag, "0")
    assert result.returncode == 2 and f"{flag} must be at least 1" in result.stderr
