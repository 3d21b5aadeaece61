"""Test-wide settings and the real vLLM engines several modules share.

Every vLLM engine the tests start skips vLLM's torch.compile warm-up (``enforce_eager``): the ones built here take
it as an argument, and ``PONDER_ENFORCE_EAGER=1`` reaches the engines started in ``ponder`` subprocesses.

Each distinct real engine starts once per run, on the session's event loop (pyproject), and stays up for every
module that needs it:

- ``tiny_engine``: the tiny random-weight policy (:mod:`server.tiny_models`) on :class:`VLLMEngine`;
- ``tiny_prm``: the tiny random-weight Qwen-layout PRM on vLLM's pooling runner (float32, compared with torch);
- ``default_policy_engine``: the shipped ``models/default-policy`` (its sampled steps, its own likelihood).

The ORM and the causal-LM PRM formats have one engine each, in the one module that reads them.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import pytest

from reward_models.hardware import EAGER_ENV

os.environ.setdefault(EAGER_ENV, "1")  # the engines of `ponder` subprocesses and of code under test
DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "models" / "default-policy"
KV_CACHE_GIB = 0.5  # per engine: the longest test holds 64 x 1000 tokens of the tiny policy (~130 MB)


def eager(factory: Any) -> dict[str, bool]:
    """``enforce_eager=True`` for a loader that takes it (``load_scorer`` and the engines), else nothing (the
    environment above says the same)."""
    return {"enforce_eager": True} if "enforce_eager" in inspect.signature(factory).parameters else {}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny checkpoints, default seeds: policy, PRM, ORM, and a causal-LM PRM stand-in that holds every causal
    format's pieces (Math-Shepherd's tag token, RLHFlow's chat template)."""
    from server.tiny_models import save_tiny_orm, save_tiny_policy, save_tiny_prm
    from training.tiny_causal_prm import save_tiny_causal_prm

    root = tmp_path_factory.mktemp("tiny-shared")
    return {
        "policy": save_tiny_policy(root / "policy"),
        "prm": save_tiny_prm(root / "prm"),
        "orm": save_tiny_orm(root / "orm"),
        "causal_prm": save_tiny_causal_prm(root / "causal-prm", "rlhflow", seed=2),
    }


@pytest.fixture(scope="session")  # on the session loop (pyproject)
async def tiny_engine(tiny_models: dict[str, Path]):
    """The tiny policy on vLLM, float32. ``health_while_loading``: the status ``/health`` answered while ``create``
    was still loading the engine (a server keeps answering while its engine starts), and whether loading had
    finished by then."""
    import asyncio

    import httpx

    from server.app import create_app
    from server.config import ServerConfig
    from server.engine.vllm_engine import VLLMEngine

    creating = asyncio.create_task(
        VLLMEngine.create(
            str(tiny_models["policy"]), kv_cache_gib=KV_CACHE_GIB, dtype="float32", **eager(VLLMEngine.create)
        )
    )
    app = create_app(ServerConfig())  # no engine yet: /health says 503
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ponder") as client:
        health = (await client.get("/health")).status_code
    loaded_first = creating.done()
    engine = await creating
    engine.health_while_loading = (health, loaded_first)
    yield engine
    await engine.shutdown()


@pytest.fixture(scope="session")  # on the session loop (pyproject)
async def tiny_prm(tiny_models: dict[str, Path]):
    """The tiny PRM on vLLM's pooling runner, float32 (compared with a torch forward at 1e-3)."""
    from reward_models import load_scorer

    scorer = await load_scorer(tiny_models["prm"], kv_cache_gib=KV_CACHE_GIB, dtype="float32", **eager(load_scorer))
    yield scorer
    await scorer.shutdown()


@pytest.fixture(scope="session")  # on the session loop (pyproject)
async def default_policy_engine():
    """The shipped default policy on vLLM, float32 (its scores are compared with a transformers forward)."""
    from server.engine.vllm_engine import VLLMEngine

    engine = await VLLMEngine.create(
        str(DEFAULT_POLICY), kv_cache_gib=KV_CACHE_GIB, dtype="float32", **eager(VLLMEngine.create)
    )
    yield engine
    await engine.shutdown()


@pytest.fixture(scope="session")
def qwen3_server(tmp_path_factory: pytest.TempPathFactory):
    """``ponder serve`` on a tiny random-weight Qwen3 with the real tokenizer and chat template (tests/qwen3.py), as
    a Qwen3 deployment runs vLLM: its ``qwen3`` reasoning parser, auto tool choice with the ``hermes`` parser, and
    the policy read as its own likelihood PRM (so every strategy runs). Its text is noise, the format around it is
    Qwen3's. Shared by tests/test_clients.py and tests/test_drop_in_qwen3.py: one engine start for both."""
    import json
    import signal

    from benchmarks.servers import ponder_cmd, running
    from tests.qwen3 import QWEN3_SERVED_NAME, build_tiny_qwen3

    root = tmp_path_factory.mktemp("qwen3-server")
    model = str(build_tiny_qwen3(root / "model"))
    cmd = ponder_cmd(
        model,
        model,
        0.1,
        "--served-model-name",
        QWEN3_SERVED_NAME,
        "--reasoning-parser",
        "qwen3",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
        "--structured-outputs-config",
        # JSON without free whitespace: a random model would otherwise fill its tokens with it
        json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
        "--max-model-len",
        "2048",
        "--default-max-tokens",
        "32",
        "--log-level",
        "info",
        prm_format="likelihood",
    )
    with running(cmd, root / "server.log", env={"VLLM_CPU_KVCACHE_SPACE": "1"}, timeout=300) as server:
        yield server
        # uvicorn shuts down gracefully, then re-raises the signal: the exit status is "killed by SIGTERM"
        assert server.stop() == -signal.SIGTERM
        assert "Application shutdown complete" in server.log.read_text()
