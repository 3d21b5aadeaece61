"""``POST /v1/responses``: OpenAI's Responses API, answered by Ponder's strategies through the chat path.

The request is vLLM's own ``ResponsesRequest`` (every field with vLLM's meaning, unknown fields a 400) plus
``strategy`` and ``strategy_params``. Its ``instructions`` and ``input`` become chat messages and its other fields
chat fields (:mod:`server.responses_input`, which holds the request model), so it is checked, rendered with the
model's chat template and run exactly as a chat completion is (:class:`server.serving.ChatService`). The chosen answer
comes back as output items: its thinking as a ``reasoning`` item (with a reasoning parser), its text as a ``message``
item, its tool calls as ``function_call`` items; streamed as OpenAI's typed events (:class:`_Events`).

Ponder keeps nothing: ``store`` is false (true is a 400), and what needs a stored response or conversation
(``previous_response_id``, ``conversation``, ``background``) is a 400 that says so, ``GET /v1/responses/{id}`` a 404.
Send the earlier turns, with their output items, in ``input``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
import typing
import uuid
from collections.abc import AsyncIterator
from typing import Any

from openai.types import responses as events
from openai.types.responses import (
    Response,
    ResponseFunctionToolCall,
    ResponseOutputItem,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseReasoningItem,
    ResponseTextConfig,
    ResponseUsage,
    response_output_text,
)
from openai.types.responses.response import IncompleteDetails
from openai.types.responses.response_reasoning_item import Content as ReasoningText
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails
from pydantic import BaseModel, Field

from server.completions import chat_token_logprobs
from server.errors import APIError
from server.output import Parsed
from server.protocol import PonderInfo
from server.responses_input import ResponsesRequest, chat_request, refuse_what_needs_storage, renamed_param
from server.serving import ChatService, Prepared
from server.streaming import streams_tokens, token_deltas, with_keepalive
from strategies.base import Candidate, StrategyResult, TokenLogprob
from strategies.errors import EngineError, ScorerError

log = logging.getLogger("ponder.responses")


class PonderResponse(Response):
    """OpenAI's response object with ``store`` (always false here) and Ponder's ``ponder`` object."""

    store: bool = False
    ponder: PonderInfo | None = Field(default=None, description="What the strategy did and what it cost.")


@dataclasses.dataclass
class ResponsesJob:
    request: ResponsesRequest
    run: Prepared  # the request as a chat completion
    id: str = dataclasses.field(default_factory=lambda: f"resp_{uuid.uuid4().hex}")
    created_at: int = dataclasses.field(default_factory=lambda: int(time.time()))


class Responses:
    """The Responses endpoint over the chat service."""

    def __init__(self, service: ChatService) -> None:
        self.service = service

    def prepare(self, request: ResponsesRequest) -> ResponsesJob:
        refuse_what_needs_storage(request)
        try:
            run = self.service.prepare(chat_request(request))
        except APIError as exc:
            exc.param = renamed_param(exc.param)
            raise
        return ResponsesJob(request, run)

    async def run(self, job: ResponsesJob) -> StrategyResult:
        return await self.service.run(job.run)

    def respond(self, job: ResponsesJob, result: StrategyResult) -> PonderResponse:
        chosen = result.choices[0]
        out = _Events(job.run.task.logprobs is not None)
        parsed = self.service.parse(job.run, chosen.text)
        out.answer(parsed, chosen.logprobs or ())
        return self._response(job, out.finish(_status(chosen)), result, parsed)

    def record(self, job: ResponsesJob, status: int, started: float, result: StrategyResult | None = None) -> None:
        self.service.record(job.run, status, started, result)

    def _response(
        self,
        job: ResponsesJob,
        output: list[ResponseOutputItem],
        result: StrategyResult | None = None,
        parsed: Parsed | None = None,
    ) -> PonderResponse:
        """The response object; without a result, as it stands while the answer is being written."""
        request, status = job.request, _status(result.choices[0]) if result else "in_progress"
        return PonderResponse(
            id=job.id,
            object="response",
            created_at=job.created_at,
            status=status,
            error=None,
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
            instructions=request.instructions,
            max_output_tokens=job.run.task.max_tokens,
            max_tool_calls=request.max_tool_calls,
            model=self.service.config.model_name,
            output=output,
            parallel_tool_calls=request.parallel_tool_calls is not False,
            previous_response_id=None,
            reasoning=request.reasoning,
            service_tier=request.service_tier,
            store=False,
            temperature=request.temperature,
            text=request.text or ResponseTextConfig(format={"type": "text"}),
            tool_choice=request.tool_choice,
            tools=request.tools,
            top_logprobs=request.top_logprobs,
            top_p=request.top_p,
            truncation="disabled",
            usage=self._usage(job, parsed) if result else None,
            user=request.user,
            metadata=request.metadata,
            background=False,
            ponder=self.service.info(job.run, result) if result else None,
        )

    def _usage(self, job: ResponsesJob, parsed: Parsed | None) -> ResponseUsage:
        """Every token the strategy generated; ``reasoning_tokens``: the returned answer's thinking."""
        run = job.run
        thinking = parsed.reasoning if parsed else None
        reasoning = len(self.service.engine.tokenizer.encode(thinking, add_special_tokens=False)) if thinking else 0
        return ResponseUsage(
            input_tokens=run.prompt_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
            output_tokens=run.ledger.completion_tokens,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning),
            total_tokens=run.prompt_tokens + run.ledger.completion_tokens,
        )

    # ---- streaming --------------------------------------------------------------------------------------------
    async def stream(self, job: ResponsesJob) -> AsyncIterator[str]:
        """OpenAI's events: ``response.created``, ``response.in_progress``, each output item added, written and done,
        then ``response.completed`` (``response.incomplete`` when the answer ran out of tokens). Plain sampling
        streams the engine's tokens as they come; a strategy streams its answer once it is chosen."""
        started, status, result = time.perf_counter(), 200, None
        out = _Events(job.run.task.logprobs is not None)
        run = job.run
        try:
            yield out.sse(events.ResponseCreatedEvent, response=self._response(job, []))
            yield out.sse(events.ResponseInProgressEvent, response=self._response(job, []))
            if streams_tokens(run):
                parsed, finish, logprobs = Parsed("", ""), None, []
                async for delta, chunk_logprobs, end in token_deltas(self.service, run):
                    tokens = chat_token_logprobs(chunk_logprobs)
                    parsed.reasoning = (parsed.reasoning or "") + (delta.reasoning or "")
                    parsed.content = (parsed.content or "") + (delta.content or "")
                    finish, logprobs = end or finish, logprobs + tokens
                    for frame in out.delta(delta.reasoning, delta.content, tokens):
                        yield frame
                parsed.reasoning = parsed.reasoning or None
                chosen = Candidate(parsed.content or "", run.ledger.completion_tokens, finish or "stop", chosen=True)
                chosen.logprobs = tuple(logprobs) if run.task.logprobs is not None else None
                result = StrategyResult(choices=[chosen], candidates=[chosen])
            else:
                async for item in with_keepalive(self.run(job), lambda: run.ledger.completion_tokens):
                    if isinstance(item, str):
                        yield item
                    else:
                        result = item
                chosen = result.choices[0]
                parsed = self.service.parse(run, chosen.text)
                out.answer(parsed, chosen.logprobs or ())
            output = out.finish(_status(chosen))
            for frame in out.flush():
                yield frame
            final = self._response(job, output, result, parsed)
            kind = events.ResponseIncompleteEvent if final.status == "incomplete" else events.ResponseCompletedEvent
            yield out.sse(kind, response=final)
        except APIError as exc:  # headers are sent: the error travels as an event
            status = exc.status
            yield out.sse(events.ResponseErrorEvent, code=exc.code or exc.type, message=exc.message, param=exc.param)
        except (EngineError, ScorerError) as exc:
            status = 503
            log.error("stream failed: %s", exc)
            yield out.sse(events.ResponseErrorEvent, code="service_unavailable", message=str(exc), param=None)
        except asyncio.CancelledError:
            status = 499  # client closed the stream
            raise
        finally:
            self.record(job, status, started, result)


class _Events:
    """The output items of one answer as they are written, and OpenAI's stream events that write them.

    The response body and the stream share it, so both hold the same items with the same ids."""

    def __init__(self, with_logprobs: bool) -> None:
        self.with_logprobs = with_logprobs
        self.items: list[ResponseOutputItem] = []
        self.pending: list[str] = []  # SSE frames not yet sent
        self.sequence = itertools.count()
        self.open: str | None = None  # "reasoning" or "message": the item being written
        self.item_id, self.text = "", ""
        self.logprobs: list[TokenLogprob] = []

    def sse(self, event: type[BaseModel], **fields: Any) -> str:
        (name,) = typing.get_args(event.model_fields["type"].annotation)  # the event's one literal type
        body = event(type=name, sequence_number=next(self.sequence), **fields)
        return f"event: {name}\ndata: {body.model_dump_json(exclude_unset=True, serialize_as_any=True)}\n\n"

    def _emit(self, event: type[BaseModel], **fields: Any) -> None:
        self.pending.append(self.sse(event, **fields))

    def flush(self) -> list[str]:
        frames, self.pending = self.pending, []
        return frames

    def delta(self, reasoning: str | None, content: str | None, logprobs: list[TokenLogprob]) -> list[str]:
        """Events for one streamed delta of thinking and/or answer text."""
        if reasoning:
            self._write("reasoning", reasoning, [])
        if content:
            self._write("message", content, logprobs)
        return self.flush()

    def answer(self, parsed: Parsed, logprobs: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> None:
        """A whole answer: its thinking, its text (with every token's logprobs), its tool calls."""
        if parsed.reasoning:
            self._write("reasoning", parsed.reasoning, [])
        if parsed.content or not parsed.tool_calls:
            self._write("message", parsed.content or "", list(logprobs))
        for call in parsed.tool_calls:
            self._close()
            self._tool_call(call)

    def finish(self, status: str) -> list[ResponseOutputItem]:
        """Close the item being written; the output items."""
        self._close("incomplete" if status == "incomplete" else "completed")
        return self.items

    def _write(self, kind: str, text: str, logprobs: list[TokenLogprob]) -> None:
        if self.open != kind:
            self._close()
            self._open(kind)
        self.text += text
        self.logprobs += logprobs
        where = {"item_id": self.item_id, "output_index": len(self.items), "content_index": 0}
        if kind == "reasoning":
            self._emit(events.ResponseReasoningTextDeltaEvent, delta=text, **where)
        else:
            delta_logprobs = [_delta_logprob(t) for t in logprobs] if self.with_logprobs else []
            self._emit(events.ResponseTextDeltaEvent, delta=text, logprobs=delta_logprobs, **where)

    def _open(self, kind: str) -> None:
        self.open, self.text, self.logprobs = kind, "", []
        index = len(self.items)
        if kind == "reasoning":
            self.item_id = f"rs_{uuid.uuid4().hex}"
            item: Any = ResponseReasoningItem(id=self.item_id, type="reasoning", summary=[], content=[])
            part: Any = {"type": "reasoning_text", "text": ""}
        else:
            self.item_id = f"msg_{uuid.uuid4().hex}"
            item = ResponseOutputMessage(
                id=self.item_id, type="message", role="assistant", status="in_progress", content=[]
            )
            part = ResponseOutputText(type="output_text", text="", annotations=[], logprobs=[])
        self._emit(events.ResponseOutputItemAddedEvent, output_index=index, item=item)
        self._emit(
            events.ResponseContentPartAddedEvent, item_id=self.item_id, output_index=index, content_index=0, part=part
        )

    def _close(self, status: str = "completed") -> None:
        if self.open is None:
            return
        index, where = len(self.items), {"item_id": self.item_id, "content_index": 0}
        if self.open == "reasoning":
            part: Any = {"type": "reasoning_text", "text": self.text}
            content = [ReasoningText(type="reasoning_text", text=self.text)]
            item: Any = ResponseReasoningItem(id=self.item_id, type="reasoning", summary=[], content=content)
            self._emit(events.ResponseReasoningTextDoneEvent, text=self.text, output_index=index, **where)
        else:
            logprobs = [_output_logprob(t) for t in self.logprobs] if self.with_logprobs else []
            part = ResponseOutputText(type="output_text", text=self.text, annotations=[], logprobs=logprobs)
            item = ResponseOutputMessage(
                id=self.item_id, type="message", role="assistant", status=status, content=[part]
            )
            done_logprobs = [_delta_logprob(t) for t in self.logprobs] if self.with_logprobs else []
            self._emit(
                events.ResponseTextDoneEvent, text=self.text, logprobs=done_logprobs, output_index=index, **where
            )
        self._emit(events.ResponseContentPartDoneEvent, part=part, output_index=index, **where)
        self._emit(events.ResponseOutputItemDoneEvent, output_index=index, item=item)
        self.items.append(item)
        self.open = None

    def _tool_call(self, call: dict[str, Any]) -> None:
        index, item_id = len(self.items), f"fc_{uuid.uuid4().hex}"
        call_id = call.get("id") or f"call_{uuid.uuid4().hex[:24]}"
        fields = {"id": item_id, "type": "function_call", "call_id": call_id, "name": call["name"]}
        added = ResponseFunctionToolCall(**fields, arguments="", status="in_progress")
        self._emit(events.ResponseOutputItemAddedEvent, output_index=index, item=added)
        where = {"item_id": item_id, "output_index": index}
        self._emit(events.ResponseFunctionCallArgumentsDeltaEvent, delta=call["arguments"], **where)
        self._emit(events.ResponseFunctionCallArgumentsDoneEvent, arguments=call["arguments"], **where)
        item = ResponseFunctionToolCall(**fields, arguments=call["arguments"], status="completed")
        self._emit(events.ResponseOutputItemDoneEvent, output_index=index, item=item)
        self.items.append(item)


def _status(candidate: Candidate) -> str:
    return "incomplete" if candidate.finish_reason == "length" else "completed"


def _output_logprob(token: TokenLogprob) -> response_output_text.Logprob:
    return response_output_text.Logprob(
        token=token.token,
        bytes=list(token.token.encode("utf-8")),
        logprob=token.logprob,
        top_logprobs=[
            response_output_text.LogprobTopLogprob(token=k, bytes=list(k.encode("utf-8")), logprob=v)
            for k, v in token.top
        ],
    )


def _delta_logprob(token: TokenLogprob) -> dict[str, Any]:
    """A token's logprobs as the text delta and done events carry them (no bytes)."""
    return {
        "token": token.token,
        "logprob": token.logprob,
        "top_logprobs": [{"token": k, "logprob": v} for k, v in token.top],
    }


def no_stored_response(response_id: str) -> APIError:
    return APIError(
        f"no response {response_id!r}: Ponder keeps no responses (every response is store: false)",
        status=404,
        type="not_found_error",
        param="response_id",
        code="response_not_found",
    )
