"""``POST /v1/completions``: OpenAI's text completions, answered by Ponder's strategies.

The request is vLLM's own ``CompletionRequest`` (every field with vLLM's meaning, unknown fields a 400, as for chat)
plus ``strategy`` and ``strategy_params``. The prompt is sent to the engine as it is, without a chat template, and
the choices' ``text`` is what the policy wrote, unparsed (a reasoning parser still reads the samples for the
strategies' votes and rewards). A list of prompts is one strategy run per prompt, all run at once: each has its own
budgets (``strategy_params.max_total_tokens``, the server's caps) and ``ponder`` object, and the choices are indexed
prompt-major, as OpenAI indexes them (``index = prompt_i * n + j``). ``usage`` sums every run. ``ponder`` follows
the prompt's shape: one object for a string prompt, a list of objects, one per prompt, for a list.

Refused with a 400 that says why: token-id prompts, ``prompt_embeds``, ``suffix``, ``echo``, ``best_of`` above 1
(strategy ``best_of_n`` does that), more prompts times samples than ``--max-num-samples``, and the other fields
:mod:`server.request_fields` refuses. ``max_tokens`` left out is the server's ``--default-max-tokens``, as for chat
(OpenAI's default of 16 tokens leaves a strategy no room to reason).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from vllm.entrypoints.openai.completion.protocol import CompletionRequest as VLLMCompletionRequest

from server.errors import APIError
from server.protocol import ChoiceLogprobs, PonderFields, PonderInfo, Usage
from server.serving import ChatService, Prepared
from server.streaming import error_event, streams_tokens, token_deltas, with_keepalive
from strategies.base import Candidate, StrategyResult, TokenLogprob
from strategies.errors import EngineError, ScorerError

log = logging.getLogger("ponder.completions")
T = TypeVar("T")


class CompletionRequest(VLLMCompletionRequest, PonderFields):
    """vLLM's completion request, unknown fields refused, plus Ponder's fields."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(default=1, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)  # None: the server's --default-max-tokens
    best_of: int | None = Field(default=None, ge=1)  # OpenAI's; above 1 it is strategy best_of_n, refused here

    def token_limit(self) -> int | None:
        return self.max_tokens


class CompletionLogprobs(BaseModel):
    """OpenAI's completions logprobs: parallel lists, one entry per generated token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] = Field(default_factory=list)  # the alternatives, with the chosen token
    text_offset: list[int] = Field(default_factory=list)  # where each token starts in the choice's text


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    ponder: PonderInfo | list[PonderInfo] = Field(
        description="What each strategy run did and cost: one object for a string prompt, a list for a list."
    )


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    ponder: PonderInfo | list[PonderInfo] | None = None


@dataclasses.dataclass
class CompletionJob:
    """A validated completion request: one prepared strategy run per prompt."""

    request: CompletionRequest
    runs: list[Prepared]
    single: bool  # the prompt was a string: `ponder` is one object, else a list


class Completions:
    """The completions endpoint over the chat service's validation, strategies and accounting."""

    def __init__(self, service: ChatService) -> None:
        self.service = service

    def prepare(self, request: CompletionRequest) -> CompletionJob:
        if request.prompt_embeds is not None:
            raise APIError(
                "prompt_embeds is not supported by Ponder: send the prompt as text",
                param="prompt_embeds",
                code="unsupported_parameter",
            )
        if (request.best_of or 1) > 1:
            raise APIError(
                "best_of is not supported by Ponder: send strategy 'best_of_n' with strategy_params.num_samples "
                "(it picks with the reward model, not by likelihood)",
                param="best_of",
                code="unsupported_parameter",
            )
        prompts = _text_prompts(request.prompt)
        fields = request
        first = self._prepare_one(fields, prompts[0])
        samples = first.config.samples_per_call()[0] * len(prompts)
        if samples > self.service.config.max_num_samples:
            raise APIError(
                f"{len(prompts)} prompts of {samples // len(prompts)} samples each are {samples} samples at once, "
                f"above this server's cap of {self.service.config.max_num_samples} (--max-num-samples)",
                param="prompt",
                code="above_cap",
            )
        runs = [first] + [self._prepare_one(fields, p) for p in prompts[1:]]
        for run in runs:
            run.reader = None  # the text goes back as the policy wrote it: no reasoning or tool calls split off
        return CompletionJob(request, runs, single=isinstance(request.prompt, str))

    def _prepare_one(self, request: CompletionRequest, prompt: str) -> Prepared:
        """One prompt's run; the prompt is also the question a reward model judges the steps against."""
        try:
            return self.service.prepare_prompt(request, prompt, prompt)
        except APIError as exc:
            exc.param = "prompt" if exc.param == "messages" else exc.param  # a prompt too long for the context
            raise

    async def run(self, job: CompletionJob) -> list[StrategyResult]:
        """Every prompt's strategy at once; the first failure cancels the others (and aborts their engine work)."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.service.run(run)) for run in job.runs]
        except BaseExceptionGroup as failures:
            raise failures.exceptions[0] from None
        return [task.result() for task in tasks]

    def respond(self, job: CompletionJob, results: list[StrategyResult]) -> CompletionResponse:
        return CompletionResponse(
            model=self.service.config.model_name,
            choices=self._choices(job, results),
            usage=self.usage(job),
            ponder=self._ponder(job, results),
        )

    def usage(self, job: CompletionJob) -> Usage:
        prompt = sum(run.prompt_tokens for run in job.runs)
        done = sum(run.ledger.completion_tokens for run in job.runs)
        return Usage(prompt_tokens=prompt, completion_tokens=done, total_tokens=prompt + done)

    def record(
        self, job: CompletionJob, status: int, started: float, results: list[StrategyResult] | None = None
    ) -> None:
        """Metrics and a log line per strategy run."""
        for i, run in enumerate(job.runs):
            self.service.record(run, status, started, results[i] if results else None)

    def _choices(self, job: CompletionJob, results: list[StrategyResult]) -> list[CompletionChoice]:
        choices: list[CompletionChoice] = []
        for run, result in zip(job.runs, results, strict=True):
            for candidate in result.choices:  # prompt-major: the k-th prompt's choices follow the (k-1)-th's
                logprobs = completion_logprobs(candidate.logprobs or ()) if run.task.logprobs is not None else None
                choices.append(
                    CompletionChoice(
                        index=len(choices),
                        text=candidate.text,
                        logprobs=logprobs,
                        finish_reason=candidate.finish_reason,
                    )
                )
        return choices

    def _ponder(self, job: CompletionJob, results: list[StrategyResult]) -> PonderInfo | list[PonderInfo]:
        infos = [self.service.info(run, result) for run, result in zip(job.runs, results, strict=True)]
        return infos[0] if job.single else infos

    # ---- streaming --------------------------------------------------------------------------------------------
    async def stream(self, job: CompletionJob) -> AsyncIterator[str]:
        """SSE frames: ``text_completion`` chunks, a usage chunk if asked, ``[DONE]``. Plain sampling of one sample
        per prompt streams the engine's tokens as they come; a strategy streams each answer once it is chosen."""
        started = time.perf_counter()
        chunk_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def frame(choices: list[CompletionChoice], **extra: Any) -> str:
            chunk = CompletionChunk(
                id=chunk_id, created=created, model=self.service.config.model_name, choices=choices, **extra
            )
            return f"data: {chunk.model_dump_json()}\n\n"

        status, results = 200, None
        try:
            if all(streams_tokens(run) for run in job.runs):
                streamed = [_Streamed() for _ in job.runs]
                async for i, (delta, logprobs, finish) in merged([token_deltas(self.service, run) for run in job.runs]):
                    text, tokens = delta.content or "", chat_token_logprobs(logprobs)
                    out = completion_logprobs(tokens, offset=len(streamed[i].text)) if logprobs is not None else None
                    streamed[i].add(text, tokens, finish)
                    if text or finish:
                        yield frame([CompletionChoice(index=i, text=text, logprobs=out, finish_reason=finish)])
                results = [s.result(run) for run, s in zip(job.runs, streamed, strict=True)]
            else:
                async for item in with_keepalive(self.run(job), lambda: _spent(job)):
                    if isinstance(item, str):
                        yield item
                    else:
                        results = item
                for choice in self._choices(job, results):
                    yield frame([choice])
            options = job.request.stream_options
            if options and options.include_usage:
                yield frame([], usage=self.usage(job), ponder=self._ponder(job, results))
            yield "data: [DONE]\n\n"
        except APIError as exc:  # headers are sent: the error travels as an event, like vLLM's server does
            status = exc.status
            yield error_event(exc.message, exc.type, exc.param, exc.code)
        except (EngineError, ScorerError) as exc:
            status = 503
            log.error("stream failed: %s", exc)
            code = "engine_error" if isinstance(exc, EngineError) else "reward_model_error"
            yield error_event(str(exc), "service_unavailable", None, code)
        except asyncio.CancelledError:
            status = 499  # client closed the stream
            raise
        finally:
            self.record(job, status, started, results)


def _text_prompts(prompt: Any) -> list[str]:
    """The request's prompts as text; token ids and empty lists are a 400."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if isinstance(prompt, list) and not prompt:
        raise APIError("prompt must be a string or a non-empty list of strings", param="prompt")
    raise APIError(
        "token-id prompts are not supported by Ponder: send the prompt as a string or a list of strings",
        param="prompt",
        code="unsupported_parameter",
    )


def completion_logprobs(tokens: Sequence[TokenLogprob], offset: int = 0) -> CompletionLogprobs:
    """Token logprobs in the completions shape; ``offset``: where the first token starts in the choice's text."""
    out = CompletionLogprobs()
    for token in tokens:
        top = dict(token.top)
        top.setdefault(token.token, token.logprob)
        out.tokens.append(token.token)
        out.token_logprobs.append(token.logprob)
        out.top_logprobs.append(top)
        out.text_offset.append(offset)
        offset += len(token.token)
    return out


def chat_token_logprobs(logprobs: ChoiceLogprobs | None) -> list[TokenLogprob]:
    """The chat-shaped logprobs of a streamed delta back as token logprobs."""
    return [
        TokenLogprob(t.token, t.logprob, tuple((k.token, k.logprob) for k in t.top_logprobs))
        for t in (logprobs.content if logprobs is not None and logprobs.content else ())
    ]


def _spent(job: CompletionJob) -> int:
    return sum(run.ledger.completion_tokens for run in job.runs)


@dataclasses.dataclass
class _Streamed:
    """One prompt's sample as it streams."""

    text: str = ""
    finish: str | None = None
    logprobs: list[TokenLogprob] = dataclasses.field(default_factory=list)

    def add(self, text: str, logprobs: list[TokenLogprob], finish: str | None) -> None:
        self.text += text
        self.logprobs.extend(logprobs)
        self.finish = finish or self.finish

    def result(self, run: Prepared) -> StrategyResult:
        """The sample as the strategy's result would have held it (for ``ponder`` and the log)."""
        logprobs = tuple(self.logprobs) if run.task.logprobs is not None else None
        chosen = Candidate(
            self.text, run.ledger.completion_tokens, self.finish or "stop", chosen=True, logprobs=logprobs
        )
        return StrategyResult(choices=[chosen], candidates=[chosen])


async def merged(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """The items of several streams as they come, each with its stream's index; the first failure ends all."""
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    end = object()

    async def pump(i: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                queue.put_nowait((i, item))
            queue.put_nowait((i, end))
        except Exception as exc:  # handed to the consumer, which raises it
            queue.put_nowait((i, exc))

    tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        live = len(tasks)
        while live:
            i, item = await queue.get()
            if item is end:
                live -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
