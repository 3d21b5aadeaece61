"""What every in-process vLLM engine shares, the policy's (:mod:`server.engine.vllm_engine`) and the reward models':
engine arguments, start-up in a worker thread with a per-engine CPU binding, shutdown, prompt encoding and the
translation of vLLM's errors into ours.

It lives in :mod:`reward_models`, the lowest layer that starts vLLM engines; the server's policy engine imports it.
The vLLM engine core runs in a child process started by spawn: scripts that build one need the
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from vllm import TokensPrompt
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMClientError
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

from reward_models.hardware import VLLM_BIND_ENV, eager_from_env, engine_dtype
from reward_models.layout import tokenizer_path
from strategies.base import InvalidRequestError
from strategies.errors import EngineError, EngineUnavailableError

log = logging.getLogger("ponder.engine")

GIB = 1 << 30
# Held while one engine's core process is being spawned, with that engine's CPU binding in the environment the
# child inherits; released as soon as the child runs, so that engines load (seconds to minutes) at the same time.
_SPAWNING = threading.Lock()
SPAWN_POLL_SECONDS = 0.01  # how often the spawn window looks for the new engine core process


def engine_args(
    model: str,
    *,
    kv_cache_gib: float | None,
    memory_fraction: float,
    max_model_len: int | None,
    seed: int,
    tensor_parallel_size: int,
    dtype: str,
    **extra: Any,
) -> AsyncEngineArgs:
    """vLLM engine arguments shared by the policy and the reward models (``extra``: e.g. ``runner="pooling"``);
    ``enforce_eager`` defaults to :func:`eager_from_env`."""
    return AsyncEngineArgs(
        model=model,
        tokenizer=tokenizer_path(model),  # a reward model's tokenizer/ subfolder (reward_models/layout.py)
        dtype=engine_dtype(dtype),  # auto: float32 on a CPU without native bf16 (reward_models/hardware.py)
        seed=seed,
        max_model_len=max_model_len,
        tensor_parallel_size=tensor_parallel_size,
        # On the CPU backend this is the fraction of RAM reserved for the KV cache (shared/PLATFORM.md).
        gpu_memory_utilization=memory_fraction,
        kv_cache_memory_bytes=None if kv_cache_gib is None else int(kv_cache_gib * GIB),
        disable_log_stats=True,
        **{"enforce_eager": eager_from_env(), **extra},
    )


def engine_cores() -> set[Any]:
    """The engine-core processes this process has started that still run: vLLM's ``AsyncLLM`` starts one with
    ``multiprocessing`` (spawn), named ``EngineCore`` (``EngineCore_DP<i>`` with data parallelism)."""
    return {p for p in multiprocessing.active_children() if p.name.startswith("EngineCore")}


@contextmanager
def spawn_window(cpu_bind: str | None) -> Iterator[None]:
    """Run the body (an engine start) with ``VLLM_CPU_OMP_THREADS_BIND=cpu_bind`` in ``os.environ`` (left as it is
    for None) and :data:`_SPAWNING` held, only until the engine core process it starts is running; then the
    environment is restored and the lock released while the body goes on loading.

    vLLM's CPU backend reads the binding in the engine core process (``OMPProcessManager``, which binds the model
    worker it spawns there), from the environment that process was spawned with; no engine argument carries it.
    A spawned child's environment is fixed once it runs, so the window need only cover the spawn: the engine core
    appears in :func:`engine_cores` right after its ``Process.start`` has returned. Another engine's start waits on
    the lock only for that long, not for this one's load. If the body ends without starting a core (a failure, or a
    vLLM that keeps its core in-process), the window closes when it ends.
    """
    _SPAWNING.acquire()
    try:
        before = engine_cores()  # under the lock: no other engine's core can appear from now on
        saved = os.environ.get(VLLM_BIND_ENV)
        if cpu_bind is not None:
            os.environ[VLLM_BIND_ENV] = cpu_bind
    except BaseException:
        _SPAWNING.release()
        raise
    body_done = threading.Event()

    def close_when_spawned() -> None:
        try:
            while not body_done.wait(SPAWN_POLL_SECONDS) and not engine_cores() - before:
                pass
        finally:
            if cpu_bind is not None:
                if saved is None:
                    os.environ.pop(VLLM_BIND_ENV, None)
                else:
                    os.environ[VLLM_BIND_ENV] = saved
            _SPAWNING.release()

    watcher = threading.Thread(target=close_when_spawned, name="ponder-spawn-window", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        body_done.set()
        watcher.join()


def _from_engine_args(args: AsyncEngineArgs, cpu_bind: str | None) -> AsyncLLM:
    """``AsyncLLM.from_engine_args`` whose engine core process starts with ``VLLM_CPU_OMP_THREADS_BIND=cpu_bind``
    (:func:`spawn_window`). The engine's configuration (which may inspect the model in a subprocess of its own) is
    built before the window opens, at the same time as other engines'."""
    config = args.create_engine_config(UsageContext.ENGINE_CONTEXT)
    with spawn_window(cpu_bind):
        return AsyncLLM.from_vllm_config(
            config,
            usage_context=UsageContext.ENGINE_CONTEXT,
            enable_log_requests=args.enable_log_requests,
            disable_log_stats=args.disable_log_stats,
        )


async def start_llm(args: AsyncEngineArgs, cpu_bind: str | None = None) -> AsyncLLM:
    """Start an ``AsyncLLM`` in a worker thread, so the event loop keeps serving (``/health``) while it loads;
    ``cpu_bind``: the CPU cores its model worker binds to (:func:`reward_models.hardware.scorer_cpu_bind`).

    If the caller is cancelled meanwhile, the engine is shut down as soon as it is up, leaving no orphan process.
    """
    started = time.perf_counter()
    loading = asyncio.get_running_loop().run_in_executor(None, _from_engine_args, args, cpu_bind)
    try:
        llm = await asyncio.shield(loading)
    except asyncio.CancelledError:
        loading.add_done_callback(lambda done: done.exception() is None and stop_llm(done.result()))
        raise
    where = f" (CPU cores {cpu_bind})" if cpu_bind else ""
    log.info("vLLM engine for %s ready in %.1f s%s", args.model, time.perf_counter() - started, where)
    return llm


def stop_llm(llm: AsyncLLM) -> None:
    """Shut ``llm`` down once. vLLM's ``AsyncLLM.__del__`` calls ``shutdown`` again, and when that happens at
    interpreter exit (module globals already gone) it prints a ``TypeError`` traceback; the no-op left on the
    instance makes the second call harmless."""
    llm.shutdown()
    llm.shutdown = lambda *args, **kwargs: None  # type: ignore[method-assign]


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a prompt; BOS is added only when the text (a rendered chat template) lacks it."""
    bos = tokenizer.bos_token
    return tokenizer.encode(text, add_special_tokens=not (bos and text.startswith(bos)))


def engine_input(llm: AsyncLLM, ids: list[int]) -> Any:
    """A tokenized prompt rendered for the engine (vLLM deprecates handing it raw prompts)."""
    (rendered,) = llm.renderer.render_cmpl([TokensPrompt(prompt_token_ids=ids)])
    return rendered


@contextmanager
def translate_errors(what: str, error: type[Exception] = EngineError):
    """Re-raise vLLM's errors as ours: a dead engine is :class:`EngineUnavailableError`, a failed request
    ``error``, a request vLLM refuses (bad sampling parameters, too long) ``ValueError``."""
    try:
        yield
    except VLLMClientError as exc:
        raise InvalidRequestError(f"the {what} engine refused the request: {exc}") from exc
    except EngineDeadError as exc:
        raise EngineUnavailableError(f"the {what} engine died: {exc}") from exc
    except EngineGenerateError as exc:
        raise error(f"the {what} engine failed on a request: {exc.__cause__ or exc}") from exc
