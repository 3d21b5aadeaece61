"""Fast start: the engines load at the same time, each engine core still spawned with its own CPU binding
(reward_models/vllm_runtime.py ``spawn_window``), and the server starts the policy and the reward model at once.

Stand-ins replace vLLM's ``AsyncLLM``: a start "spawns" its engine core (recording the binding in the environment
at that moment), then "loads" until the other engine has spawned too. Were the loads serialized, the first would
wait for a spawn that waits for it; the stand-in gives up after a generous deadline, and the test fails on the
order of events, never on a duration.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from reward_models import hardware

vllm_runtime = pytest.importorskip("reward_models.vllm_runtime")  # needs vLLM

DEADLOCK_GUARD_S = 60.0  # only reached if the starts are serialized: the test then fails on what happened


class Cores:
    """The engine-core processes the stand-ins have "spawned" (what :func:`engine_cores` reports)."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.lock = threading.Lock()

    def snapshot(self) -> set[str]:
        with self.lock:
            return set(self.running)

    def spawn(self, name: str) -> None:
        with self.lock:
            self.running.add(name)


class FakeLLMs:
    """Stand-in for ``AsyncLLM.from_vllm_config``: spawn, then load until ``waits_for`` engines have spawned."""

    def __init__(self, cores: Cores, waits_for: int) -> None:
        self.cores = cores
        self.events: list[tuple[str, str]] = []
        self.bind_at_spawn: dict[str, str | None] = {}
        self.lock_held_at_spawn: dict[str, bool] = {}
        self.all_spawned = threading.Event()
        self.waits_for = waits_for
        self.fail_before_spawn: set[str] = set()
        self.no_core: set[str] = set()  # a vLLM that keeps its engine core in this process

    def from_vllm_config(self, config: Any, **kwargs: Any) -> Any:
        model = config.model
        if model in self.fail_before_spawn:
            raise ValueError(f"{model}: refused before any process started")
        self.bind_at_spawn[model] = os.environ.get(hardware.VLLM_BIND_ENV)
        self.lock_held_at_spawn[model] = vllm_runtime._SPAWNING.locked()
        if model not in self.no_core:
            self.cores.spawn(f"EngineCore-{model}")
        self.events.append(("spawned", model))
        if len(self.bind_at_spawn) >= self.waits_for:
            self.all_spawned.set()
        if not self.all_spawned.wait(DEADLOCK_GUARD_S):  # "loading": the other engine spawns meanwhile
            self.events.append(("gave up waiting for the other spawn", model))
        self.events.append(("ready", model))
        return SimpleNamespace(model=model, shutdown=lambda *a, **k: None)


def engine_args(model: str) -> Any:
    """What start_llm reads of ``AsyncEngineArgs``."""
    return SimpleNamespace(
        model=model,
        create_engine_config=lambda usage_context: SimpleNamespace(model=model),
        enable_log_requests=False,
        disable_log_stats=True,
    )


@pytest.fixture
def fakes(monkeypatch) -> FakeLLMs:
    cores = Cores()
    llms = FakeLLMs(cores, waits_for=2)
    monkeypatch.setattr(vllm_runtime, "engine_cores", cores.snapshot)
    monkeypatch.setattr(vllm_runtime.AsyncLLM, "from_vllm_config", llms.from_vllm_config)
    monkeypatch.delenv(hardware.VLLM_BIND_ENV, raising=False)
    return llms


async def test_two_engines_load_at_once_each_spawned_with_its_binding(fakes):
    policy, prm = await asyncio.gather(
        vllm_runtime.start_llm(engine_args("policy")), vllm_runtime.start_llm(engine_args("prm"), cpu_bind="1")
    )
    assert (policy.model, prm.model) == ("policy", "prm")
    # both engine cores were spawned before either engine was ready: their loads overlapped
    assert sorted(fakes.events[:2]) == [("spawned", "policy"), ("spawned", "prm")]
    assert sorted(fakes.events[2:]) == [("ready", "policy"), ("ready", "prm")]
    # each core inherited its own binding (the policy vLLM's own), each spawned inside the window
    assert fakes.bind_at_spawn == {"policy": None, "prm": "1"}
    assert fakes.lock_held_at_spawn == {"policy": True, "prm": True}
    # and the server's own environment is as it was
    assert hardware.VLLM_BIND_ENV not in os.environ
    assert not vllm_runtime._SPAWNING.locked()


async def test_a_user_binding_reaches_the_engines_without_one_and_is_restored(fakes, monkeypatch):
    monkeypatch.setenv(hardware.VLLM_BIND_ENV, "0")
    await asyncio.gather(
        vllm_runtime.start_llm(engine_args("policy")), vllm_runtime.start_llm(engine_args("prm"), cpu_bind="1")
    )
    assert fakes.bind_at_spawn == {"policy": "0", "prm": "1"}
    assert os.environ[hardware.VLLM_BIND_ENV] == "0"


async def test_a_start_that_fails_before_spawning_closes_the_window(fakes):
    fakes.waits_for = 1
    fakes.fail_before_spawn.add("broken")
    with pytest.raises(ValueError, match="refused"):
        await vllm_runtime.start_llm(engine_args("broken"), cpu_bind="1")
    assert hardware.VLLM_BIND_ENV not in os.environ
    assert not vllm_runtime._SPAWNING.locked()
    await vllm_runtime.start_llm(engine_args("next"), cpu_bind="1")  # the next engine is not locked out
    assert fakes.bind_at_spawn == {"next": "1"}


async def test_an_engine_without_a_core_process_keeps_the_window_until_it_is_up(fakes):
    """Nothing to wait for: the window closes when the start returns, the binding never leaks past it."""
    fakes.waits_for = 1
    fakes.no_core.add("in-process")
    await vllm_runtime.start_llm(engine_args("in-process"), cpu_bind="1")
    assert fakes.lock_held_at_spawn == {"in-process": True}
    assert hardware.VLLM_BIND_ENV not in os.environ
    assert not vllm_runtime._SPAWNING.locked()


class Proc:
    def __init__(self, name: str) -> None:
        self.name = name


def test_engine_cores_lists_only_engine_core_processes(monkeypatch):
    procs = [Proc("EngineCore"), Proc("EngineCore_DP1"), Proc("VLLM_DP_Coordinator")]
    monkeypatch.setattr(vllm_runtime.multiprocessing, "active_children", lambda: procs)
    assert {p.name for p in vllm_runtime.engine_cores()} == {"EngineCore", "EngineCore_DP1"}


async def _load_with(monkeypatch, policy: Path, prm: Path, fmt: str | None = None) -> list[tuple[str, str]]:
    """Run ``ponder serve``'s loader on stand-ins that record when each engine starts and is ready. A stand-in
    started on its own waits (up to the guard) for the other to have started, as the real ones load side by side."""
    import server.cli
    import server.engine.vllm_engine as vllm_engine
    from server.cli import _loader, build_parser

    events: list[tuple[str, str]] = []
    started = {"policy": asyncio.Event(), "scorer": asyncio.Event()}

    async def loading(name: str, other: str) -> None:
        events.append(("start", name))
        started[name].set()
        try:
            await asyncio.wait_for(started[other].wait(), DEADLOCK_GUARD_S)
        except TimeoutError:
            events.append(("gave up waiting", name))
        events.append(("ready", name))

    async def fake_create(model: str, **kwargs: object) -> Any:
        if fmt == "likelihood":  # nothing else loads meanwhile
            events.append(("start", "policy"))
        else:
            await loading("policy", "scorer")
        return SimpleNamespace(llm="the policy's engine")

    async def fake_scorer(engine: object, policy: object, path: object, **kwargs: object) -> Any:
        if engine is not None:  # started after the policy, on its engine
            events.append(("start on the policy's engine", "scorer"))
        else:
            await loading("scorer", "policy")
        return "scorer"

    monkeypatch.setattr(vllm_engine.VLLMEngine, "create", fake_create)
    monkeypatch.setattr(server.cli, "load_scorer_beside", fake_scorer)
    monkeypatch.setattr(hardware, "accelerator_available", lambda: False)
    argv = ["serve", "--model", str(policy), *(["--prm-format", fmt] if fmt else [])]
    _, scorer = await _loader(build_parser().parse_args(argv), policy, prm)()
    assert scorer == "scorer"
    return events


async def test_serve_starts_the_policy_and_the_reward_model_at_once(monkeypatch):
    events = await _load_with(monkeypatch, Path("/p"), Path("/prm"))
    assert sorted(events[:2]) == [("start", "policy"), ("start", "scorer")]  # both started before either was ready
    assert sorted(events[2:]) == [("ready", "policy"), ("ready", "scorer")]


async def test_serve_starts_the_policys_own_likelihood_after_the_policy(monkeypatch, tmp_path):
    """The policy read as its own reward model runs on the policy's engine: it can only start once that is up."""
    events = await _load_with(monkeypatch, tmp_path, tmp_path, fmt="likelihood")
    assert events == [("start", "policy"), ("start on the policy's engine", "scorer")]


def test_engines_skip_the_compile_warm_up_by_default(monkeypatch, tmp_path):
    """Eager unless asked otherwise: the start is what the default saves (results/startup)."""
    monkeypatch.delenv(hardware.EAGER_ENV, raising=False)
    common = dict(kv_cache_gib=0.5, memory_fraction=0.1, max_model_len=None, seed=0, tensor_parallel_size=1)
    assert hardware.DEFAULT_ENFORCE_EAGER is True
    assert vllm_runtime.engine_args(str(tmp_path), dtype="float32", **common).enforce_eager is True
    assert (
        vllm_runtime.engine_args(str(tmp_path), dtype="float32", enforce_eager=False, **common).enforce_eager is False
    )
    monkeypatch.setenv(hardware.EAGER_ENV, "0")
    assert vllm_runtime.engine_args(str(tmp_path), dtype="float32", **common).enforce_eager is False
