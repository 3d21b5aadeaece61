"""How a chat answer goes out as SSE: chunks of reasoning, content and tool calls, keep-alives, error events.

:func:`chat_stream` is what :meth:`server.serving.ChatService.stream` returns. Plain sampling of one sample streams
the engine's tokens as they come (:func:`token_deltas`); a strategy streams its answer once it is chosen, with an SSE
comment every few seconds while it searches (:func:`with_keepalive`). The completions and responses endpoints stream
through the same pieces in their own shapes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from server.errors import APIError
from server.output import Parsed
from server.protocol import (
    ChatCompletionChunk,
    ChoiceLogprobs,
    ChunkChoice,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
)
from server.serving import ChatService, Prepared, choice_logprobs, tool_call
from strategies.base import Candidate, InvalidRequestError, Sample, SamplingSpec, sampling_temperature
from strategies.errors import EngineError, ScorerError

log = logging.getLogger("ponder.requests")
T = TypeVar("T")

KEEPALIVE_SECONDS = 5.0  # SSE comment cadence while a strategy searches: keeps proxies from timing out


def streams_tokens(job: Prepared) -> bool:
    """Whether the engine's tokens go out as they come: one plain sample, and no tool calls to parse whole."""
    tools_on = bool(getattr(job.request, "tools", None)) and getattr(job.request, "tool_choice", None) != "none"
    return job.config.streams_tokens and job.config.samples_per_call()[0] == 1 and not tools_on


async def chat_stream(service: ChatService, job: Prepared) -> AsyncIterator[str]:
    """SSE frames: a role chunk, reasoning/content/tool-call chunks, a finish chunk, the usage chunk if asked,
    ``[DONE]``."""
    started = time.perf_counter()
    chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def frame(choices: list[ChunkChoice], **extra: Any) -> str:
        chunk = ChatCompletionChunk(
            id=chunk_id, created=created, model=service.config.model_name, choices=choices, **extra
        )
        return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

    status, result = 200, None
    try:
        yield frame([ChunkChoice(index=0, delta=DeltaMessage(role="assistant", content=""))])
        if streams_tokens(job):
            async for delta, logprobs, finish in token_deltas(service, job):
                if delta.content is not None or delta.reasoning is not None:
                    yield frame([ChunkChoice(index=0, delta=delta, logprobs=logprobs)])
                if finish:
                    yield frame([ChunkChoice(index=0, delta=DeltaMessage(), finish_reason=finish)])
        else:
            async for item in with_keepalive(service.run(job), lambda: job.ledger.completion_tokens):
                if isinstance(item, str):
                    yield item
                else:
                    result = item
            for i, candidate in enumerate(result.choices):
                if i:
                    yield frame([ChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))])
                for delta, logprobs in _whole_deltas(service, job, candidate):
                    yield frame([ChunkChoice(index=i, delta=delta, logprobs=logprobs)])
                finish = service.finish_reason(job, candidate, service.parse(job, candidate.text))
                yield frame([ChunkChoice(index=i, delta=DeltaMessage(), finish_reason=finish)])
        options = job.request.stream_options
        if options and options.include_usage:
            info = service.info(job, result) if result else None
            yield frame([], usage=service.usage(job), ponder=info)
        yield "data: [DONE]\n\n"
    except APIError as exc:  # headers are sent: the error travels as an event, like vLLM's server does
        status = exc.status
        yield error_event(exc.message, exc.type, exc.param, exc.code)
    except (EngineError, ScorerError) as exc:
        status = 503
        log.error("stream failed: %s", exc)
        code = "engine_error" if isinstance(exc, EngineError) else "reward_model_error"
        yield error_event(str(exc), "service_unavailable", None, code)
    except Exception:  # a bug: the client still gets an event and the end of the stream, the log the traceback
        status = 500
        log.exception("stream failed")
        yield error_event("internal server error", "server_error", None, None)
    except asyncio.CancelledError:
        status = 499  # client closed the stream
        raise
    finally:
        service.record(job, status, started, result)


def _whole_deltas(
    service: ChatService, job: Prepared, candidate: Candidate
) -> list[tuple[DeltaMessage, ChoiceLogprobs | None]]:
    """A finished answer as stream deltas: its reasoning, its content (with its logprobs), its tool calls."""
    parsed = service.parse(job, candidate.text)
    logprobs = choice_logprobs(candidate.logprobs) if job.task.logprobs is not None else None
    out: list[tuple[DeltaMessage, ChoiceLogprobs | None]] = []
    if parsed.reasoning:
        out.append((DeltaMessage(reasoning=parsed.reasoning), None))
    if parsed.content or not parsed.tool_calls:
        out.append((DeltaMessage(content=parsed.content or ""), logprobs))
    if parsed.tool_calls:
        calls = [
            DeltaToolCall(
                index=k,
                id=tool_call(call).id,
                type="function",
                function=DeltaFunctionCall(name=call["name"], arguments=call["arguments"]),
            )
            for k, call in enumerate(parsed.tool_calls)
        ]
        out.append((DeltaMessage(tool_calls=calls), logprobs if not parsed.content else None))
    return out


async def token_deltas(
    service: ChatService, job: Prepared
) -> AsyncIterator[tuple[DeltaMessage, ChoiceLogprobs | None, str | None]]:
    """The engine's tokens as they come, split into reasoning and content deltas, with the finish reason last."""
    text, said = "", Parsed("", "")
    async for piece in _stream_tokens(service, job):
        text += piece.text
        if job.reader is None:
            delta = DeltaMessage(content=piece.text) if piece.text else DeltaMessage()
        else:
            delta, said = _split_delta(service.parse(job, text), said)
        logprobs = choice_logprobs(piece.logprobs) if job.task.logprobs is not None and piece.logprobs else None
        yield delta, logprobs, piece.finish_reason


async def _stream_tokens(service: ChatService, job: Prepared) -> AsyncIterator[Sample]:
    engine = service.engine_for(job, service.engine)
    spec = SamplingSpec(
        n=1,
        temperature=sampling_temperature(job.config, job.task, default=1.0),
        top_p=job.task.top_p,
        max_tokens=min(job.task.max_tokens, job.config.max_total_tokens or job.task.max_tokens),
        stop=job.task.stop,
        seed=job.task.seed,
        logprobs=job.task.logprobs,
    )
    try:
        async for piece in engine.stream(job.task.prompt, spec, job.task.request_id):
            if time.monotonic() > job.deadline:
                await service.engine.abort(job.task.request_id)
                service.metrics.aborted.labels(job.spec.name).inc()
                raise service.deadline_error()
            yield piece
    except InvalidRequestError as exc:
        raise APIError(str(exc), code="invalid_request") from None
    except asyncio.CancelledError:
        await service.engine.abort(job.task.request_id)
        service.metrics.aborted.labels(job.spec.name).inc()
        raise


async def with_keepalive(work: Awaitable[T], spent: Callable[[], int]) -> AsyncIterator[str | T]:
    """Await ``work``, yielding an SSE comment every few seconds until its result (yielded last) is ready."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=KEEPALIVE_SECONDS)
            if done:
                yield task.result()
                return
            yield f": searching, {spent()} tokens so far\n\n"
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def error_event(message: str, type: str, param: str | None, code: str | None) -> str:
    error = {"message": message, "type": type, "param": param, "code": code}
    return f"data: {json.dumps({'error': error})}\n\n"


def _split_delta(parsed: Parsed, said: Parsed) -> tuple[DeltaMessage, Parsed]:
    """What the text read so far adds to what was already sent, as a delta; and what has been sent now."""
    reasoning = _added(parsed.reasoning, said.reasoning)
    content = _added(parsed.content, said.content)
    sent = Parsed((said.reasoning or "") + (reasoning or ""), (said.content or "") + (content or ""))
    return DeltaMessage(reasoning=reasoning, content=content), sent


def _added(now: str | None, sent: str | None) -> str | None:
    """The part of ``now`` past ``sent`` (None: nothing new, or ``now`` no longer extends what was sent)."""
    now, sent = now or "", sent or ""
    return now[len(sent) :] if len(now) > len(sent) and now.startswith(sent) else None
