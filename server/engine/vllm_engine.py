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
from collections.abc import AsyncIterator, Sequence
from typing import Any

from vllm import SamplingParams
from vllm.outputs import CompletionOutput
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from reward_models.vllm_runtime import encode_prompt, engine_args, engine_input, start_llm, stop_llm, translate_errors
from server.config import EngineConfig
from strategies.base import FinishReason, InvalidRequestError, Sample, SamplingSpec

log = logging.getLogger("ponder.engine")


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

        ``enforce_eager``: skip vLLM's torch.compile warm-up (None: :func:`reward_models.hardware.eager_from_env`)."""
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

    @classmethod
    async def from_config(cls, config: EngineConfig) -> VLLMEngine:
        """The ``vllm`` backend of ``ponder serve``: the policy in ``config.model``, started with its settings."""
        return await cls.create(
            str(config.model),
            memory_fraction=config.memory_fraction,
            max_model_len=config.max_model_len,
            seed=config.seed,
            tensor_parallel_size=config.tensor_parallel_size,
            enforce_eager=config.enforce_eager,  # None: the engines' default
        )

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
