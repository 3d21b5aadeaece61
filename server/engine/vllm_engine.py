"""The policy engine: :class:`strategies.base.Engine` on vLLM's in-process ``AsyncLLM``.

One engine call fans out into one vLLM request per prompt, ids ``f"{request_id}-{i}"``, all submitted at once;
vLLM's parallel sampling draws the ``n`` samples of each (sharing the prompt's prefill through the prefix cache).
Prompts are tokenized here and sent as token ids. Cancelling a call (the server cancels the task when a client
disconnects) aborts its requests; :meth:`VLLMEngine.abort` aborts every live request under an id prefix.
The vLLM engine core runs in a child process started by spawn: scripts that build one need the
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from vllm import SamplingParams, TokensPrompt
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMClientError
from vllm.outputs import CompletionOutput
from vllm.sampling_params import RequestOutputKind
from vllm.utils.system_utils import set_env_var
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

from reward_models.layout import tokenizer_path
from server.engine.errors import EngineError, EngineUnavailableError
from server.engine.hardware import VLLM_BIND_ENV, eager_from_env, engine_dtype
from strategies.base import FinishReason, InvalidRequestError, Sample, SamplingSpec

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
        dtype=engine_dtype(dtype),  # auto: float32 on a CPU without native bf16 (server/engine/hardware.py)
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
    ``cpu_bind``: the CPU cores its model worker binds to (:func:`server.engine.hardware.scorer_cpu_bind`).

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


class VLLMEngine:
    """The policy model served by an in-process vLLM ``AsyncLLM``."""

    def __init__(self, llm: AsyncLLM, model_name: str) -> None:
        self._llm = llm
        self.model_name = model_name
        self.tokenizer = llm.get_tokenizer()  # the HF tokenizer: chat templates and token counts
        self.max_model_len: int = llm.model_config.max_model_len
        self._live: set[str] = set()  # ids of our vLLM requests that have not finished

    @property
    def llm(self) -> AsyncLLM:
        """The vLLM engine itself (a reward model that reads the policy's own probabilities shares it)."""
        return self._llm

    @classmethod
    async def create(
        cls,
        model: str,
        *,
        kv_cache_gib: float | None = None,
        memory_fraction: float = 0.25,
        max_model_len: int | None = None,
        seed: int = 0,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        enforce_eager: bool | None = None,
    ) -> VLLMEngine:
        """Start the engine; the loop keeps running while vLLM loads (~25-45 s for a tiny model on 2 CPU cores).

        ``enforce_eager``: skip vLLM's torch.compile warm-up (None: :func:`eager_from_env`)."""
        args = engine_args(
            model,
            kv_cache_gib=kv_cache_gib,
            memory_fraction=memory_fraction,
            max_model_len=max_model_len,
            seed=seed,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            enable_prefix_caching=True,
            **({} if enforce_eager is None else {"enforce_eager": enforce_eager}),
        )
        return cls(await start_llm(args), model_name=model)

    # ---- Engine protocol ---------------------------------------------------------------------------------------
    async def generate(self, prompts: Sequence[str], spec: SamplingSpec, request_id: str) -> list[list[Sample]]:
        """``spec.n`` samples of every prompt; all prompts are submitted at once."""
        encoded = [encode_prompt(self.tokenizer, prompt) for prompt in prompts]
        params = [self._params(spec, len(ids), RequestOutputKind.FINAL_ONLY) for ids in encoded]
        try:
            async with asyncio.TaskGroup() as group:  # one failure cancels (and so aborts) the others
                tasks = [
                    group.create_task(self._generate_one(ids, p, f"{request_id}-{i}", spec.n))
                    for i, (ids, p) in enumerate(zip(encoded, params, strict=True))
                ]
        except BaseExceptionGroup as failures:
            raise failures.exceptions[0] from None
        return [task.result() for task in tasks]

    async def stream(self, prompt: str, spec: SamplingSpec, request_id: str) -> AsyncIterator[Sample]:
        """One sample, yielded as text deltas; ``num_tokens`` is cumulative, the last delta has the finish."""
        if spec.n != 1:
            raise ValueError(f"streaming draws one sample, got n={spec.n}")
        ids = encode_prompt(self.tokenizer, prompt)
        params = self._params(spec, len(ids), RequestOutputKind.DELTA)
        num_tokens = 0
        with translate_errors("policy"):
            async for output in self._run(ids, params, f"{request_id}-0"):
                completion = output.outputs[0]
                num_tokens += len(completion.token_ids)
                finish = _finish_reason(completion) if output.finished else None
                yield Sample(
                    completion.text, num_tokens, finish, _stop_string(completion), completion.cumulative_logprob
                )

    async def abort(self, request_id: str) -> None:
        """Abort every live request whose id starts with ``request_id``."""
        doomed = [rid for rid in self._live if rid.startswith(request_id)]
        if doomed:
            await self._llm.abort(doomed)

    # ---- server-facing ----------------------------------------------------------------------------------------
    def num_running(self) -> int:
        """Our vLLM requests (one per prompt of each call) not yet finished."""
        return len(self._live)

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes as a prompt (as :meth:`generate` tokenizes it)."""
        return len(encode_prompt(self.tokenizer, text))

    def healthy(self) -> bool:
        """False once the vLLM engine core has died or its output loop has stopped."""
        return not self._llm.errored

    async def shutdown(self) -> None:
        """Abort what is running and stop the engine core process."""
        if self._live and self.healthy():
            await self._llm.abort(list(self._live))
        stop_llm(self._llm)

    # ---- internals --------------------------------------------------------------------------------------------
    def _params(self, spec: SamplingSpec, prompt_len: int, kind: RequestOutputKind) -> SamplingParams:
        room = self.max_model_len - prompt_len
        if room < 1:
            raise InvalidRequestError(f"the prompt is {prompt_len} tokens; the model's context is {self.max_model_len}")
        greedy = spec.temperature == 0.0  # vLLM refuses n > 1 here; the n samples would be identical anyway
        with translate_errors("policy"):
            return SamplingParams(
                n=1 if greedy else spec.n,
                temperature=spec.temperature,
                top_p=spec.top_p,
                max_tokens=min(spec.max_tokens, room),
                stop=list(spec.stop),
                include_stop_str_in_output=True,
                seed=spec.seed,
                logprobs=spec.logprobs,
                output_kind=kind,
            )

    async def _generate_one(self, ids: list[int], params: SamplingParams, request_id: str, n: int) -> list[Sample]:
        final = None
        with translate_errors("policy"):
            async for output in self._run(ids, params, request_id):
                final = output
        completions = sorted(final.outputs, key=lambda c: c.index) if final else []
        samples = [
            Sample(
                c.text, len(c.token_ids), _finish_reason(c), _stop_string(c), c.cumulative_logprob, token_logprobs(c)
            )
            for c in completions
        ]
        return samples * n if params.n == 1 else samples  # greedy: one sample stands for all n

    async def _run(self, ids: list[int], params: SamplingParams, request_id: str) -> AsyncIterator[Any]:
        """vLLM's output stream for one request, tracked in ``_live`` and aborted if we are cancelled."""
        self._live.add(request_id)
        try:
            async for output in self._llm.generate(engine_input(self._llm, ids), params, request_id):
                yield output
        except (asyncio.CancelledError, GeneratorExit):
            # vLLM aborts on cancellation once the request is queued; this also covers cancellation mid-submit.
            await asyncio.shield(self._llm.abort(request_id))
            raise
        finally:
            self._live.discard(request_id)


def _finish_reason(completion: CompletionOutput) -> FinishReason:
    reason = completion.finish_reason
    return reason if reason in ("stop", "length") else "abort"


def _stop_string(completion: CompletionOutput) -> str | None:
    return completion.stop_reason if isinstance(completion.stop_reason, str) else None


def token_logprobs(completion: CompletionOutput) -> tuple[tuple[int, float], ...] | None:
    """Each sampled token's (end offset in the text, log-probability), from vLLM's ``logprobs`` output (the raw
    distribution: vLLM's default ``logprobs_mode``, temperature 1). None without logprobs, or where the decoded
    tokens do not spell the text (the offsets would be wrong); a token past a stop string is cut at the text's end.
    """
    if completion.logprobs is None or len(completion.logprobs) != len(completion.token_ids):
        return None
    pieces, values = [], []
    for token, position in zip(completion.token_ids, completion.logprobs, strict=True):
        entry = position.get(token) if position is not None else None
        if entry is None or entry.decoded_token is None:
            return None
        pieces.append(entry.decoded_token)
        values.append(entry.logprob)
    text = completion.text
    if "".join(pieces)[: len(text)] != text:
        return None
    ends = itertools.accumulate(len(piece) for piece in pieces)
    return tuple((min(end, len(text)), value) for end, value in zip(ends, values, strict=True))
