"""Test-wide settings and the engines several modules share.

vLLM engines started by the tests (in this process and in the ``ponder`` subprocesses they run) skip the
torch.compile warm-up: 7 s less per engine on an idle 2-core machine, about 20 s under load (README, Backends), over
about twenty engines. One engine (tests/test_self_likelihood.py, the default policy) runs on vLLM's default, compiled
path.

The tiny random-weight policy and PRM (:mod:`server.tiny_models`, default seeds) and their vLLM engines are built
once per session for the modules that only need *a* real engine: tests/test_vllm_adapters.py and the end-to-end
cases of tests/test_search_strategies.py (tests/test_tiny_models.py reads the checkpoints).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from reward_models.hardware import EAGER_ENV

os.environ.setdefault(EAGER_ENV, "1")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny policy, PRM and ORM checkpoints, default seeds."""
    from server.tiny_models import save_tiny_orm, save_tiny_policy, save_tiny_prm

    root = tmp_path_factory.mktemp("tiny-shared")
    return {
        "policy": save_tiny_policy(root / "policy"),
        "prm": save_tiny_prm(root / "prm"),
        "orm": save_tiny_orm(root / "orm"),
    }


@pytest.fixture(scope="session")  # on the session loop (pyproject)
async def tiny_engine(tiny_models: dict[str, Path]):
    """The tiny policy on vLLM; ``loop_ticks_while_loading`` counts 0.1 s ticks the event loop ran meanwhile."""
    from server.engine.vllm_engine import VLLMEngine

    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.1)
            ticks += 1

    ticker = asyncio.create_task(tick())
    engine = await VLLMEngine.create(str(tiny_models["policy"]), kv_cache_gib=1)
    ticker.cancel()
    engine.loop_ticks_while_loading = ticks  # the server answers /health while the engine loads
    yield engine
    await engine.shutdown()


@pytest.fixture(scope="session")  # on the session loop (pyproject)
async def tiny_prm(tiny_models: dict[str, Path]):
    """The tiny PRM on vLLM's pooling runner, float32 (compared with a torch forward at 1e-3)."""
    from reward_models import load_scorer

    scorer = await load_scorer(tiny_models["prm"], kv_cache_gib=1, dtype="float32")
    yield scorer
    await scorer.shutdown()
