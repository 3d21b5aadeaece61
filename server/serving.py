"""Chat-completion logic: run a prepared request's strategy within its deadline and build the response.

Routes stay short and call :class:`ChatService`; checking and binding a request (its fields, its prompt, its
strategy) is :mod:`server.preparing`. Everything a request spends is counted by the
:class:`~server.accounting.Ledger` proxies the strategy receives in place of the real engine and reward model. How an
answer goes out as SSE chunks (:meth:`ChatService.stream`) is :mod:`server.streaming`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from server.accounting import BudgetExceededError, CountingEngine, CountingScorer, NodeCapExceededError
from server.config import ServerConfig
from server.engine import ServedEngine
from server.errors import APIError
from server.metrics import Metrics
from server.output import OutputParsing, Parsed
from server.preparing import Prepared, RequestPreparation
from server.protocol import (
    ChatCompletionResponse,
    Choice,
    ChoiceLogprobs,
    FunctionCall,
    PonderInfo,
    ResponseMessage,
    TokenLogprobOut,
    ToolCall,
    TopLogprob,
    Usage,
)
from strategies.base import (
    Candidate,
    Engine,
    InvalidRequestError,
    Scorer,
    StrategyResult,
    TokenLogprob,
)
from strategies.budget_forcing import BudgetForcing

log = logging.getLogger("ponder.requests")


class ChatService(RequestPreparation):
    def __init__(self, engine: ServedEngine, scorer: Scorer | None, config: ServerConfig, metrics: Metrics) -> None:
        self.engine, self.scorer, self.config, self.metrics = engine, scorer, config, metrics
        self.parsing = OutputParsing(
            engine.tokenizer,
            reasoning_parser=getattr(engine, "reasoning_parser", None),
            tool_call_parser=config.tool_call_parser,
            enable_auto_tool_choice=config.enable_auto_tool_choice,
        )

    # ---- validation -------------------------------------------------------------------------------------------
    # ---- running ----------------------------------------------------------------------------------------------
    async def run(self, job: Prepared) -> StrategyResult:
        """Run the request's strategy within its deadline; typed failures become API errors."""
        try:
            async with asyncio.timeout_at(_loop_time(job.deadline)):
                result = await self._run_strategy(job)
                _drop_stop_strings(job, result.choices)
                if job.task.logprobs is not None:
                    await self._fill_logprobs(job, result.choices)
                return result
        except TimeoutError:
            raise self.deadline_error() from None

    def deadline_error(self) -> APIError:
        return APIError(
            f"the request ran past this server's deadline of {self.config.request_timeout:g} s "
            "(--request-timeout); its work was aborted",
            code="deadline_exceeded",
        )

    def engine_for(self, job: Prepared, engine: Engine) -> Engine:
        """The engine a strategy sees: counted, with the request's options, and with budget forcing if asked."""
        counted: Engine = CountingEngine(engine, job.ledger, job.task.request_id, job.task.options)
        if not job.config.min_thinking_tokens:
            return counted
        assert self.parsing.end_marker is not None  # checked in prepare
        tokenizer = self.engine.tokenizer
        return BudgetForcing(
            counted,
            end_marker=self.parsing.end_marker,
            min_thinking_tokens=job.config.min_thinking_tokens,
            count_tokens=lambda text: len(tokenizer.encode(text, add_special_tokens=False)),
        )

    async def _run_strategy(self, job: Prepared) -> StrategyResult:
        engine, scorer = self.engine, self.scorer
        if scorer is not None and hasattr(scorer, "session"):  # the policy as its own PRM: steps read from samples
            engine, scorer = scorer.session(job.task, engine)
        engine = self.engine_for(job, engine)
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

    async def _fill_logprobs(self, job: Prepared, choices: list[Candidate]) -> None:
        """Every chosen answer's token logprobs: its own when it is one sample drawn with them, else read by the
        policy over the prompt and the answer (a search's chosen path joins several engine calls)."""
        top = job.task.logprobs or 0
        for choice in choices:
            if choice.logprobs is None:
                try:
                    choice.logprobs = tuple(await self.engine.score_text(job.task.prompt, choice.text, top))
                except InvalidRequestError as exc:
                    raise APIError(str(exc), param="logprobs", code="invalid_request") from None

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

    def parse(self, job: Prepared, text: str) -> Parsed:
        """A chosen answer read for the response: reasoning apart (dropped with include_reasoning false), content,
        tool calls."""
        parsed = job.reader.parse(text) if job.reader is not None else Parsed(None, text)
        if not getattr(job.request, "include_reasoning", True):
            parsed.reasoning = None
        return parsed

    def finish_reason(self, job: Prepared, candidate: Candidate, parsed: Parsed) -> str:
        """OpenAI's: ``tool_calls`` when the answer calls tools (``stop`` for a named tool choice), else the
        sample's own."""
        named = isinstance(getattr(job.request, "tool_choice", None), BaseModel)
        return "tool_calls" if parsed.tool_calls and not named else candidate.finish_reason

    def respond(self, job: Prepared, result: StrategyResult) -> ChatCompletionResponse:
        choices = []
        for i, candidate in enumerate(result.choices):
            parsed = self.parse(job, candidate.text)
            message = ResponseMessage(
                content=parsed.content if parsed.content or not parsed.tool_calls else None,
                reasoning=parsed.reasoning,
                tool_calls=[tool_call(call) for call in parsed.tool_calls],
            )
            logprobs = choice_logprobs(candidate.logprobs) if job.task.logprobs is not None else None
            choices.append(
                Choice(
                    index=i,
                    message=message,
                    logprobs=logprobs,
                    finish_reason=self.finish_reason(job, candidate, parsed),
                )
            )
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
            messages = getattr(job.request, "messages", None)
            line["messages" if messages is not None else "prompt"] = messages or job.task.prompt
            line["outputs"] = [c.text for c in result.choices] if result else None
        log.info(json.dumps(line, default=str))

    def stream(self, job: Prepared) -> AsyncIterator[str]:
        """The answer as SSE frames (:func:`server.streaming.chat_stream`)."""
        from server.streaming import chat_stream  # imported here: server.streaming builds on this module

        return chat_stream(self, job)


def _drop_stop_strings(job: Prepared, choices: list[Candidate]) -> None:
    """An answer that ended on one of the request's stop strings loses it, as OpenAI and vLLM return it (the engine
    keeps stop strings in the text for the searches' steps), unless the request sets include_stop_str_in_output."""
    if not job.task.stop or getattr(job.request, "include_stop_str_in_output", False):
        return
    for choice in choices:
        if choice.finish_reason == "stop":
            ended = next((stop for stop in job.task.stop if choice.text.endswith(stop)), None)
            if ended:
                choice.text = choice.text[: -len(ended)]


def tool_call(call: dict[str, Any]) -> ToolCall:
    call_id = call.get("id") or f"chatcmpl-tool-{uuid.uuid5(uuid.NAMESPACE_OID, repr(call)).hex}"
    call["id"] = call_id  # the same id in every rendering of this answer (response, stream)
    return ToolCall(id=call_id, function=FunctionCall(name=call["name"], arguments=call["arguments"]))


def choice_logprobs(tokens: tuple[TokenLogprob, ...] | None) -> ChoiceLogprobs:
    """Token logprobs in OpenAI's shape."""
    return ChoiceLogprobs(
        content=[
            TokenLogprobOut(
                token=t.token,
                logprob=t.logprob,
                bytes=list(t.token.encode("utf-8")),
                top_logprobs=[TopLogprob(token=k, logprob=v, bytes=list(k.encode("utf-8"))) for k, v in t.top],
            )
            for t in tokens or ()
        ]
    )


def _loop_time(monotonic_deadline: float) -> float:
    """A ``time.monotonic()`` instant on the running loop's clock (``asyncio.timeout_at`` takes loop time)."""
    return asyncio.get_running_loop().time() + (monotonic_deadline - time.monotonic())
