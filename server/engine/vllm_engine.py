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
import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any

from vllm import SamplingParams
from vllm.outputs import CompletionOutput
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from reward_models.vllm_runtime import encode_prompt, engine_args, engine_input, start_llm, stop_llm, translate_errors
from server.config import EngineConfig
from server.engine import checkpoint_reasoning_parser
from strategies.base import FinishReason, InvalidRequestError, Sample, SamplingSpec, TokenLogprob

log = logging.getLogger("ponder.engine")


class VLLMEngine:
    """The policy model served by an in-process vLLM ``AsyncLLM``."""

    def __init__(self, llm: AsyncLLM, model_name: str, reasoning_parser: str | None = None) -> None:
        self._llm = llm
        self.model_name = model_name
        self.reasoning_parser = reasoning_parser  # vLLM's parser for the thinking (server.output reads with it)
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
        reasoning_parser: str | None = None,
        **vllm_args: Any,
    ) -> VLLMEngine:
        """Start the engine; the loop keeps running while vLLM loads (~25-45 s for a tiny model on 2 CPU cores).

        ``enforce_eager``: skip vLLM's torch.compile warm-up (None: :func:`reward_models.hardware.eager_from_env`).
        ``reasoning_parser``: vLLM's parser of the model's thinking (None: the checkpoint's, if it names one); the
        engine gets it too, for ``thinking_token_budget`` and for structured outputs that start after the thinking.
        ``vllm_args``: any other of vLLM's engine arguments (e.g. ``structured_outputs_config``)."""
        reasoning_parser = reasoning_parser or checkpoint_reasoning_parser(model)
        thinking: dict[str, Any] = {}
        if reasoning_parser:
            from vllm.config import ReasoningConfig

            thinking = {
                "reasoning_parser": reasoning_parser,
                "reasoning_config": ReasoningConfig(reasoning_parser=reasoning_parser),
            }
        args = engine_args(
            model,
            kv_cache_gib=kv_cache_gib,
            memory_fraction=memory_fraction,
            max_model_len=max_model_len,
            seed=seed,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            enable_prefix_caching=True,
            **thinking,
            **vllm_args,
            **({} if enforce_eager is None else {"enforce_eager": enforce_eager}),
        )
        return cls(await start_llm(args), model_name=model, reasoning_parser=reasoning_parser)

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
            reasoning_parser=config.reasoning_parser,
            **_structured_outputs_config(config.structured_outputs()),
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
            async with aclosing(self._run(ids, params, f"{request_id}-0")) as outputs:  # closed: aborted at once
                async for output in outputs:
                    completion = output.outputs[0]
                    num_tokens += len(completion.token_ids)
                    finish = _finish_reason(completion) if output.finished else None
                    yield Sample(
                        completion.text,
                        num_tokens,
                        finish,
                        _stop_string(completion),
                        completion.cumulative_logprob,
                        logprobs=openai_logprobs(completion, spec.logprobs),
                    )

    async def abort(self, request_id: str) -> None:
        """Abort every live request whose id starts with ``request_id``."""
        doomed = [rid for rid in self._live if rid.startswith(request_id)]
        if doomed:
            await self._llm.abort(doomed)

    # ---- server-facing ----------------------------------------------------------------------------------------
    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse a request's sampling options vLLM would refuse (InvalidRequestError), before anything runs."""
        self._sampling_params(SamplingSpec(max_tokens=1, options=options), 1, RequestOutputKind.FINAL_ONLY)

    async def score_text(self, prompt: str, text: str, top: int) -> list[TokenLogprob]:
        """The log-probability of every token of ``text`` after ``prompt``, with ``top`` alternatives each: one
        prefill with vLLM's ``prompt_logprobs`` (the raw distribution, as sampled logprobs are reported)."""
        head = encode_prompt(self.tokenizer, prompt)
        tail = self.tokenizer.encode(text, add_special_tokens=False)
        if not tail:
            return []
        ids = head + tail
        if len(ids) >= self.max_model_len:
            raise InvalidRequestError(f"the answer fills the model's context of {self.max_model_len} tokens")
        params = SamplingParams(
            max_tokens=1, prompt_logprobs=top, detokenize=True, output_kind=RequestOutputKind.FINAL_ONLY
        )
        final = None
        with translate_errors("policy"):
            async for output in self._run(ids, params, f"logprobs-{id(params)}"):
                final = output
        rows = (final.prompt_logprobs or [])[len(head) :] if final else []
        return [_token_logprob(token, row, top) for token, row in zip(tail, rows, strict=False)]

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
        return self._sampling_params(spec, room, kind)

    def _sampling_params(self, spec: SamplingSpec, room: int, kind: RequestOutputKind) -> SamplingParams:
        """vLLM's sampling parameters: the strategy's own for this call over the request's options (copied: vLLM
        may rewrite a structured-output constraint in place)."""
        options = {k: dataclasses.replace(v) if dataclasses.is_dataclass(v) else v for k, v in spec.options.items()}
        greedy = spec.temperature == 0.0  # vLLM refuses n > 1 here; the n samples would be identical anyway
        with translate_errors("policy"):
            try:
                return self._build_params(spec, room, kind, greedy, options)
            except ValueError as exc:  # vLLM's validation of a value the client sent
                raise InvalidRequestError(" ".join(str(exc).split())) from None

    @staticmethod
    def _build_params(
        spec: SamplingSpec, room: int, kind: RequestOutputKind, greedy: bool, options: dict[str, Any]
    ) -> SamplingParams:
        # from_optional, as vLLM's server builds them: it reads logit_bias's JSON keys as token ids and clamps them
        return SamplingParams.from_optional(
            **options,
            n=1 if greedy else spec.n,
            temperature=spec.temperature,
            top_p=spec.top_p,
            max_tokens=min(spec.max_tokens, room),
            stop=list(spec.stop),
            include_stop_str_in_output=bool(spec.stop),  # step delimiters stay in the text; EOS never
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
                c.text,
                len(c.token_ids),
                _finish_reason(c),
                _stop_string(c),
                c.cumulative_logprob,
                token_logprobs(c),
                openai_logprobs(c, params.logprobs),
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


def _structured_outputs_config(settings: dict[str, Any] | None) -> dict[str, Any]:
    """``--structured-outputs-config`` as vLLM's engine argument (none: vLLM's defaults)."""
    if settings is None:
        return {}
    from vllm.config import StructuredOutputsConfig

    return {"structured_outputs_config": StructuredOutputsConfig(**settings)}  # checked by EngineConfig


def openai_logprobs(completion: CompletionOutput, top: int | None) -> tuple[TokenLogprob, ...] | None:
    """The sampled tokens with their log-probabilities and ``top`` alternatives each (the client's logprobs)."""
    if top is None or completion.logprobs is None:
        return None
    return tuple(
        _token_logprob(token, row, top) for token, row in zip(completion.token_ids, completion.logprobs, strict=False)
    )


def _token_logprob(token: int, row: Any, top: int) -> TokenLogprob:
    """One position of vLLM's logprobs (``{token id: Logprob}``) as a :class:`TokenLogprob`."""
    row = row or {}
    chosen = row.get(token)
    ranked = sorted(row.values(), key=lambda entry: entry.rank if entry.rank is not None else 1 << 30)
    alternatives = tuple((entry.decoded_token or "", entry.logprob) for entry in ranked[:top])
    if chosen is None:
        return TokenLogprob("", float("-inf"), alternatives)
    return TokenLogprob(chosen.decoded_token or "", chosen.logprob, alternatives)
