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
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import Any

from vllm import TokensPrompt
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMClientError
from vllm.utils.system_utils import set_env_var
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

from reward_models.hardware import VLLM_BIND_ENV, eager_from_env, engine_dtype
from reward_models.layout import tokenizer_path
from strategies.base import InvalidRequestError
from strategies.errors import EngineError, EngineUnavailableError

log = logging.getLogger("ponder.engine")

GIB = 1 << 30
_SPAWNING = threading.Lock()  # one engine at a time sets the environment its child processes start with


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


def _from_engine_args(args: AsyncEngineArgs, cpu_bind: str | None) -> AsyncLLM:
    """``AsyncLLM.from_engine_args`` with ``VLLM_CPU_OMP_THREADS_BIND=cpu_bind`` in the environment that its engine
    process inherits (vLLM's CPU backend binds the model worker there); the process's own environment is restored.
    Engines start one at a time, so that none inherits another's binding."""
    with _SPAWNING, nullcontext() if cpu_bind is None else set_env_var(VLLM_BIND_ENV, cpu_bind):
        return AsyncLLM.from_engine_args(args)


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
