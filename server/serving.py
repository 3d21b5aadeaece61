"""Chat-completion logic: validate a request, render the prompt, run its strategy, build the response or stream.

Routes stay short and call :class:`ChatService`. Everything a request spends is counted by the
:class:`~server.accounting.Ledger` proxies the strategy receives in place of the real engine and reward model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import TypeAdapter, ValidationError

import strategies
from server.accounting import BudgetExceededError, CountingEngine, CountingScorer, Ledger, NodeCapExceededError
from server.config import ServerConfig
from server.engine import ServedEngine
from server.errors import APIError
from server.metrics import Metrics
from server.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    DeltaMessage,
    PonderInfo,
    ResponseMessage,
    Usage,
)
from strategies.base import (
    InvalidRequestError,
    Sample,
    SamplingSpec,
    Scorer,
    StrategyConfig,
    StrategyResult,
    Task,
    sampling_temperature,
)
from strategies.errors import EngineError, ScorerError

log = logging.getLogger("ponder.requests")

# OpenAI request fields Ponder does not implement: refused rather than silently ignored.
UNSUPPORTED = (
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "response_format",
    "tools",
    "tool_choice",
    "frequency_penalty",
    "presence_penalty",
)
KEEPALIVE_SECONDS = 5.0  # SSE comment cadence while a strategy searches: keeps proxies from timing out


@dataclasses.dataclass
class Prepared:
    """A validated request, ready to run."""

    request: ChatCompletionRequest
    spec: strategies.StrategySpec
    config: StrategyConfig
    task: Task
    prompt_tokens: int
    ledger: Ledger
    deadline: float  # time.monotonic() after which the request's work is aborted


class ChatService:
    def __init__(self, engine: ServedEngine, scorer: Scorer | None, config: ServerConfig, metrics: Metrics) -> None:
        self.engine, self.scorer, self.config, self.metrics = engine, scorer, config, metrics

    # ---- validation -------------------------------------------------------------------------------------------
    def prepare(self, request: ChatCompletionRequest) -> Prepared:
        if len(request.messages) > self.config.max_messages:
            raise APIError(
                f"{len(request.messages)} messages are above this server's cap of "
                f"{self.config.max_messages} (--max-messages)",
                param="messages",
                code="above_cap",
            )
        for name in UNSUPPORTED:
            if getattr(request, name) not in (None, False, 0, 0.0):
                raise APIError(f"{name} is not supported by Ponder", param=name, code="unsupported_parameter")
        spec = self._strategy(request.strategy)
        config = self._strategy_config(spec, request)
        prompt, question = self._render(request)
        prompt_tokens = self.engine.count_tokens(prompt)
        max_tokens = self._max_tokens(request, prompt_tokens)
        task = Task(
            prompt=prompt,
            question=question,
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=tuple(request.stop or ()),
            seed=request.seed,
            request_id=f"ponder-{uuid.uuid4().hex[:16]}",
        )
        ledger = Ledger(token_budget=config.max_total_tokens, node_budget=self.config.max_tree_nodes)
        return Prepared(
            request, spec, config, task, prompt_tokens, ledger, deadline=time.monotonic() + self.config.request_timeout
        )

    def _strategy(self, name: str) -> strategies.StrategySpec:
        try:
            spec = strategies.get(name)
        except strategies.UnknownStrategyError as exc:
            raise APIError(str(exc), param="strategy", code="unknown_strategy") from None
        if spec.needs_scorer and self.scorer is None:
            raise APIError(
                f"strategy {name!r} needs a reward model, and this server has none loaded (start it with --prm PATH)",
                param="strategy",
                code="reward_model_required",
            )
        return spec

    def _strategy_config(self, spec: strategies.StrategySpec, request: ChatCompletionRequest) -> StrategyConfig:
        params = dict(request.strategy_params)
        known = {f.name for f in dataclasses.fields(spec.config_cls)}
        if request.n > 1:
            n_param = spec.config_cls.n_param
            if n_param is None:
                takers = " or ".join(repr(s.name) for s in strategies.available() if s.config_cls.n_param)
                budget = spec.config_cls.budget_param
                raise APIError(
                    f"n > 1 is only supported with strategy {takers}; other strategies return one answer"
                    + (f" (set strategy_params.{budget})" if budget else ""),
                    param="n",
                )
            params.setdefault(n_param, request.n)
        for key in params:
            if key not in known:
                raise APIError(
                    f"unknown parameter {key!r} for strategy {spec.name!r}; known: {', '.join(sorted(known))}",
                    param=f"strategy_params.{key}",
                    code="unknown_parameter",
                )
        try:
            config = TypeAdapter(spec.config_cls).validate_python(params)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or None
            message = str(first.get("ctx", {}).get("error") or first["msg"])
            raise APIError(
                f"invalid strategy_params{'.' + where if where else ''}: {message}",
                param=f"strategy_params{'.' + where if where else ''}",
                code="invalid_parameter",
            ) from None
        return self._apply_caps(config)

    def _apply_caps(self, config: StrategyConfig) -> StrategyConfig:
        caps = self.config
        samples, name = config.samples_per_call()
        if samples > caps.max_num_samples:
            value = getattr(config, name, None) if name else None
            raise APIError(
                (f"{name}={value}: " if name else "")
                + f"{samples} samples in one engine call is above this server's cap of {caps.max_num_samples} "
                "(--max-num-samples)",
                param=f"strategy_params.{name}" if name else "strategy_params",
                code="above_cap",
            )
        if config.max_total_tokens is not None and config.max_total_tokens > caps.max_total_tokens:
            raise APIError(
                f"max_total_tokens={config.max_total_tokens} is above this server's cap of "
                f"{caps.max_total_tokens} (--max-total-tokens)",
                param="strategy_params.max_total_tokens",
                code="above_cap",
            )
        if config.max_total_tokens is None:
            try:
                config = dataclasses.replace(config, max_total_tokens=caps.max_total_tokens)
            except ValueError as exc:
                raise APIError(
                    f"{exc} within this server's cap of {caps.max_total_tokens} tokens (--max-total-tokens)",
                    param="strategy_params",
                    code="above_cap",
                ) from None
        return config

    def _render(self, request: ChatCompletionRequest) -> tuple[str, str]:
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in request.messages
        ]
        prefill = messages[-1]["role"] == "assistant"
        try:
            prompt = self.engine.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=not prefill, continue_final_message=prefill
            )
        except Exception as exc:  # a template that refuses these roles or their order (jinja raise_exception)
            raise APIError(f"the model's chat template rejected the messages: {exc}", param="messages") from None
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(
                "the messages contain text that is not valid Unicode (a lone surrogate escape)",
                param="messages",
                code="invalid_text",
            ) from None
        users = [m["content"] for m in messages if m["role"] == "user"]
        return prompt, users[-1] if users else messages[-1]["content"]

    def _max_tokens(self, request: ChatCompletionRequest, prompt_tokens: int) -> int:
        room = self.engine.max_model_len - prompt_tokens
        if room < 1:
            raise APIError(
                f"the prompt is {prompt_tokens} tokens, which leaves no room in the model's context of "
                f"{self.engine.max_model_len}",
                param="messages",
                code="context_length_exceeded",
            )
        asked = request.token_limit()
        if asked is None:
            return min(room, self.config.default_max_tokens)
        if asked > room:
            raise APIError(
                f"max_tokens={asked} plus the prompt's {prompt_tokens} tokens exceed the model's context "
                f"of {self.engine.max_model_len}",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return asked

    # ---- running ----------------------------------------------------------------------------------------------
    async def run(self, job: Prepared) -> StrategyResult:
        """Run the request's strategy within its deadline; typed failures become API errors."""
        try:
            async with asyncio.timeout_at(_loop_time(job.deadline)):
                return await self._run_strategy(job)
        except TimeoutError:
            raise self._deadline_error() from None

    def _deadline_error(self) -> APIError:
        return APIError(
            f"the request ran past this server's deadline of {self.config.request_timeout:g} s "
            "(--request-timeout); its work was aborted",
            code="deadline_exceeded",
        )

    async def _run_strategy(self, job: Prepared) -> StrategyResult:
        engine, scorer = self.engine, self.scorer
        if scorer is not None and hasattr(scorer, "session"):  # the policy as its own PRM: steps read from samples
            engine, scorer = scorer.session(job.task, engine)
        engine = CountingEngine(engine, job.ledger, job.task.request_id)
        scorer = CountingScorer(scorer, job.ledger, job.task.request_id) if scorer else None
        try:
            return await job.spec.fn(job.task, job.config, engine, scorer)
        except NodeCapExceededError as exc:
            raise APIError(str(exc), code="above_cap") from None
        except BudgetExceededError as exc:
            raise APIError(str(exc), param="strategy_params.max_total_tokens", code="budget_exceeded") from None
        except InvalidRequestError as exc:
            raise APIError(str(exc), code="invalid_request") from None
        except asyncio.CancelledError:
            await self.engine.abort(job.task.request_id)
            self.metrics.aborted.labels(job.spec.name).inc()
            raise

    def info(self, job: Prepared, result: StrategyResult) -> PonderInfo:
        trace = job.config.return_trace
        return PonderInfo(
            strategy=job.spec.name,
            engine_calls=job.ledger.engine_calls,
            engine_requests=job.ledger.engine_requests,
            scorer_calls=job.ledger.scorer_calls,
            scorer_seconds=round(job.ledger.scorer_seconds, 6),
            chosen_completion_tokens=sum(c.num_tokens for c in result.choices),
            candidates=[c.to_dict() for c in result.candidates] if trace else None,
            trace=result.extra if trace and result.extra else None,
        )

    def usage(self, job: Prepared) -> Usage:
        done = job.ledger.completion_tokens
        return Usage(prompt_tokens=job.prompt_tokens, completion_tokens=done, total_tokens=job.prompt_tokens + done)

    def respond(self, job: Prepared, result: StrategyResult) -> ChatCompletionResponse:
        choices = [
            Choice(index=i, message=ResponseMessage(content=c.text), finish_reason=c.finish_reason)
            for i, c in enumerate(result.choices)
        ]
        return ChatCompletionResponse(
            model=self.config.model_name, choices=choices, usage=self.usage(job), ponder=self.info(job, result)
        )

    def record(self, job: Prepared, status: int, started: float, result: StrategyResult | None = None) -> None:
        """Metrics and one structured log line per request; messages and outputs only with --log-prompts."""
        elapsed = time.perf_counter() - started
        self.metrics.observe(job.spec.name, status, elapsed, job.prompt_tokens, job.ledger.completion_tokens)
        line = {
            "request_id": job.task.request_id,
            "strategy": job.spec.name,
            "status": status,
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": job.ledger.completion_tokens,
            "engine_calls": job.ledger.engine_calls,
            "scorer_calls": job.ledger.scorer_calls,
            "latency_s": round(elapsed, 4),
        }
        if self.config.log_prompts:
            line["messages"] = [m.model_dump(include={"role", "content"}) for m in job.request.messages]
            line["outputs"] = [c.text for c in result.choices] if result else None
        log.info(json.dumps(line))

    # ---- streaming --------------------------------------------------------------------------------------------
    async def stream(self, job: Prepared) -> AsyncIterator[str]:
        """SSE frames: a role chunk, content chunks, a finish chunk, the usage chunk if asked, ``[DONE]``."""
        started = time.perf_counter()
        chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def frame(choices: list[ChunkChoice], **extra: Any) -> str:
            chunk = ChatCompletionChunk(
                id=chunk_id, created=created, model=self.config.model_name, choices=choices, **extra
            )
            return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

        status, result = 200, None
        try:
            yield frame([ChunkChoice(index=0, delta=DeltaMessage(role="assistant", content=""))])
            if job.config.streams_tokens and job.config.samples_per_call()[0] == 1:
                async for piece in self._stream_tokens(job):  # real token streaming, as vLLM does
                    if piece.text:
                        yield frame([ChunkChoice(index=0, delta=DeltaMessage(content=piece.text))])
                    if piece.finish_reason:
                        yield frame([ChunkChoice(index=0, delta=DeltaMessage(), finish_reason=piece.finish_reason)])
            else:
                async for item in self._run_with_keepalive(job):
                    if isinstance(item, str):
                        yield item
                    else:
                        result = item
                for i, choice in enumerate(result.choices):
                    if i:
                        yield frame([ChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))])
                    yield frame([ChunkChoice(index=i, delta=DeltaMessage(content=choice.text))])
                    yield frame([ChunkChoice(index=i, delta=DeltaMessage(), finish_reason=choice.finish_reason)])
            options = job.request.stream_options
            if options and options.include_usage:
                info = self.info(job, result) if result else None
                yield frame([], usage=self.usage(job), ponder=info)
            yield "data: [DONE]\n\n"
        except APIError as exc:  # headers are sent: the error travels as an event, like vLLM's server does
            status = exc.status
            yield _error_event(exc.message, exc.type, exc.param, exc.code)
        except (EngineError, ScorerError) as exc:
            status = 503
            log.error("stream failed: %s", exc)
            yield _error_event(str(exc), "service_unavailable", None, type(exc).__name__)
        except asyncio.CancelledError:
            status = 499  # client closed the stream
            raise
        finally:
            self.record(job, status, started, result)

    async def _stream_tokens(self, job: Prepared) -> AsyncIterator[Sample]:
        engine = CountingEngine(self.engine, job.ledger, job.task.request_id)
        spec = SamplingSpec(
            n=1,
            temperature=sampling_temperature(job.config, job.task, default=1.0),
            top_p=job.task.top_p,
            max_tokens=min(job.task.max_tokens, job.config.max_total_tokens or job.task.max_tokens),
            stop=job.task.stop,
            seed=job.task.seed,
        )
        try:
            async for piece in engine.stream(job.task.prompt, spec, job.task.request_id):
                if time.monotonic() > job.deadline:
                    await self.engine.abort(job.task.request_id)
                    self.metrics.aborted.labels(job.spec.name).inc()
                    raise self._deadline_error()
                yield piece
        except asyncio.CancelledError:
            await self.engine.abort(job.task.request_id)
            self.metrics.aborted.labels(job.spec.name).inc()
            raise

    async def _run_with_keepalive(self, job: Prepared) -> AsyncIterator[str | StrategyResult]:
        """Run the strategy, yielding an SSE comment every few seconds until its result is ready."""
        task = asyncio.ensure_future(self.run(job))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=KEEPALIVE_SECONDS)
                if done:
                    yield task.result()
                    return
                yield f": searching, {job.ledger.completion_tokens} tokens so far\n\n"
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


def _error_event(message: str, type: str, param: str | None, code: str | None) -> str:
    error = {"message": message, "type": type, "param": param, "code": code}
    return f"data: {json.dumps({'error': error})}\n\n"


def _loop_time(monotonic_deadline: float) -> float:
    """A ``time.monotonic()`` instant on the running loop's clock (``asyncio.timeout_at`` takes loop time)."""
    return asyncio.get_running_loop().time() + (monotonic_deadline - time.monotonic())
