"""``POST /v1/responses``: OpenAI's Responses API, answered by Ponder's strategies through the chat path.

The request is vLLM's own ``ResponsesRequest`` (every field with vLLM's meaning, unknown fields a 400) plus
``strategy`` and ``strategy_params``. Its ``instructions`` and ``input`` become chat messages and its other fields
chat fields (:func:`chat_request`), so it is checked, rendered with the model's chat template and run exactly as a
chat completion is (:class:`server.serving.ChatService`). The chosen answer comes back as output items: its thinking
as a ``reasoning`` item (with a reasoning parser), its text as a ``message`` item, its tool calls as
``function_call`` items; streamed as OpenAI's typed events (:class:`_Events`).

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
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest as VLLMResponsesRequest

from server.completions import chat_token_logprobs
from server.errors import APIError
from server.output import Parsed
from server.protocol import ChatCompletionRequest, PonderFields, PonderInfo
from server.serving import ChatService, Prepared, with_keepalive
from strategies.base import Candidate, StrategyResult, TokenLogprob
from strategies.errors import EngineError, ScorerError

log = logging.getLogger("ponder.responses")
LOGPROBS = "message.output_text.logprobs"  # the `include` value that asks for the output text's logprobs
TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")
SPECIAL = {"tools", "tool_choice", "top_logprobs", "store", "stream", "request_id", "model"}
# Fields both requests define: handed to the chat request as they are, when the client set them.
SHARED = sorted((set(VLLMResponsesRequest.model_fields) & set(ChatCompletionRequest.model_fields)) - SPECIAL)
RENAMED = {  # a chat field in an error, as the Responses API names it
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
    "reasoning_effort": "reasoning.effort",
    "logprobs": "include",
}


class ResponsesRequest(VLLMResponsesRequest, PonderFields):
    """vLLM's Responses request, unknown fields refused, plus OpenAI's fields vLLM lacks and Ponder's fields."""

    model_config = ConfigDict(extra="forbid")

    store: bool | None = None  # OpenAI keeps responses by default; Ponder keeps none: false or absent only
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_output_tokens: int | None = Field(default=None, ge=1)
    conversation: str | dict[str, Any] | None = None  # OpenAI's stored conversations: refused, Ponder keeps none
    safety_identifier: str | None = None  # OpenAI: an id for abuse monitoring; accepted, like `user`


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
        _refuse_what_needs_storage(request)
        try:
            run = self.service.prepare(chat_request(request))
        except APIError as exc:
            exc.param = _renamed(exc.param)
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
            if self.service.streams_tokens(run):
                parsed, finish, logprobs = Parsed("", ""), None, []
                async for delta, chunk_logprobs, end in self.service.token_deltas(run):
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


# ---- the request as a chat completion -----------------------------------------------------------------------------
def chat_request(request: ResponsesRequest) -> ChatCompletionRequest:
    """The Responses request as Ponder's chat request: messages from ``instructions`` and ``input``, the fields
    both APIs share as they are, the others under their chat names."""
    given = request.model_fields_set
    body: dict[str, Any] = {name: vars(request)[name] for name in SHARED if name in given}
    continued = _continues_last_message(request.input)
    body |= {
        "messages": input_messages(request),
        "strategy": request.strategy,
        "strategy_params": request.strategy_params,
        "add_generation_prompt": not continued,
        "continue_final_message": continued,
    }
    if request.max_output_tokens is not None:
        body["max_completion_tokens"] = request.max_output_tokens
    if request.tools:
        body["tools"] = [_chat_tool(tool) for tool in request.tools]
        body["tool_choice"] = _chat_tool_choice(request.tool_choice)
    if request.reasoning is not None and request.reasoning.effort is not None:
        body["reasoning_effort"] = request.reasoning.effort
    text_format = request.text.format if request.text is not None else None
    if text_format is not None and text_format.type != "text":
        body["response_format"] = _chat_response_format(text_format.model_dump(by_alias=True, exclude_none=True))
    if request.include and LOGPROBS in request.include:
        body |= {"logprobs": True, "top_logprobs": request.top_logprobs}
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _renamed(".".join(str(p) for p in first["loc"]) or None)
        raise APIError(f"{where + ': ' if where else ''}{first['msg']}", param=where) from None


def input_messages(request: ResponsesRequest) -> list[dict[str, Any]]:
    """``instructions`` as a system message, then ``input``'s items as chat messages (an assistant turn's reasoning,
    text and tool calls in one assistant message, as vLLM's server joins them)."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        return [*messages, {"role": "user", "content": request.input}]
    for item in request.input:
        _add_item(messages, _plain(item))
    return messages


def _add_item(messages: list[dict[str, Any]], item: dict[str, Any]) -> None:
    kind = item.get("type") or "message"
    last = messages[-1] if messages and messages[-1].get("role") == "assistant" else None
    if kind == "message" and item.get("role") == "assistant":
        text = _text(item.get("content"), "input")
        if last is not None and last.get("content") is None and not last.get("tool_calls"):
            last["content"] = text
        else:
            messages.append({"role": "assistant", "content": text})
    elif kind == "message":
        messages.append({"role": item.get("role"), "content": _text(item.get("content"), "input")})
    elif kind == "reasoning":
        if item.get("encrypted_content"):
            raise APIError("encrypted reasoning is not supported by Ponder: send its text as content", param="input")
        parts = item.get("content") or item.get("summary") or []
        messages.append({"role": "assistant", "content": None, "reasoning": _text(parts, "input")})
    elif kind == "function_call":
        call = {
            "id": _required(item, "call_id"),
            "type": "function",
            "function": {"name": _required(item, "name"), "arguments": _required(item, "arguments")},
        }
        if last is not None:
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = _text(_required(item, "output"), "input")
        messages.append({"role": "tool", "tool_call_id": _required(item, "call_id"), "content": output})
    else:
        raise APIError(
            f"input items of type {kind!r} are not supported by Ponder: it runs no built-in tools and keeps no "
            "stored items (messages, reasoning, function_call and function_call_output are)",
            param="input",
            code="unsupported_parameter",
        )


def _plain(item: Any) -> dict[str, Any]:
    if isinstance(item, BaseModel):
        return item.model_dump(exclude_none=True)
    if isinstance(item, dict):
        return dict(item)
    raise APIError("every input item must be an object", param="input")


def _required(item: dict[str, Any], key: str) -> Any:
    value = item.get(key)
    if value is None:
        raise APIError(f"an input item of type {item.get('type')!r} needs {key!r}", param="input")
    return value


def _text(content: Any, param: str) -> str:
    """A content's text: a string, or the text of its parts; images, files and audio are a 400."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise APIError("content must be a string or a list of parts", param=param)
    texts = []
    for part in content:
        part = part.model_dump() if isinstance(part, BaseModel) else part
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise APIError(
                f"content parts of type {kind!r} are not supported by Ponder: it serves text models", param=param
            )
    return "".join(texts)


def _continues_last_message(items: Any) -> bool:
    """An unfinished assistant turn last (status in_progress or incomplete) is continued, as vLLM's server does."""
    if isinstance(items, str) or not items:
        return False
    last = _plain(items[-1])
    unfinished = last.get("status") in ("in_progress", "incomplete")
    return unfinished and (last.get("type") == "reasoning" or last.get("role") == "assistant")


def _chat_tool(tool: Any) -> dict[str, Any]:
    if tool.type != "function":
        raise APIError(
            f"tools of type {tool.type!r} are not supported by Ponder: it runs no built-in tools (function tools are)",
            param="tools",
            code="unsupported_parameter",
        )
    function = {"name": tool.name, "parameters": tool.parameters, "description": tool.description}
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": {k: v for k, v in function.items() if v is not None}}


def _chat_tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if getattr(choice, "type", None) == "function":
        return {"type": "function", "function": {"name": choice.name}}
    raise APIError(
        f"tool_choice of type {getattr(choice, 'type', None)!r} is not supported by Ponder: use none, auto, "
        'required or {"type": "function", "name": ...}',
        param="tool_choice",
        code="unsupported_parameter",
    )


def _chat_response_format(text_format: dict[str, Any]) -> dict[str, Any]:
    """``text.format`` as chat's ``response_format``: a JSON schema moves under ``json_schema``."""
    if text_format["type"] != "json_schema":
        return {"type": text_format["type"]}
    schema = {k: text_format[k] for k in ("name", "schema", "strict", "description") if k in text_format}
    return {"type": "json_schema", "json_schema": schema}


def _refuse_what_needs_storage(request: ResponsesRequest) -> None:
    """A 400 for the fields that need stored responses or that Ponder cannot honour, each saying why."""
    refusals = (
        ("store", request.store, "Ponder keeps no responses; send store: false or leave it out"),
        ("background", request.background, "Ponder keeps no responses to poll: send the request without background"),
        (
            "previous_response_id",
            request.previous_response_id,
            "Ponder keeps no responses: send the earlier turns, with their output items, in input",
        ),
        ("conversation", request.conversation, "Ponder keeps no conversations: send the earlier turns in input"),
        ("previous_input_messages", request.previous_input_messages, "Ponder keeps no conversations"),
        ("enable_response_messages", request.enable_response_messages, "Ponder returns output items only"),
        ("truncation", request.truncation == "auto", "Ponder does not truncate inputs; a prompt too long is a 400"),
        (
            "text.verbosity",
            request.text is not None and request.text.verbosity not in (None, "medium"),
            "Ponder does not steer the answer's length by verbosity",
        ),
    )
    for name, value, why in refusals:
        if value:
            raise APIError(f"{name} is not supported: {why}", param=name, code="unsupported_parameter")


def _renamed(param: str | None) -> str | None:
    if param is None:
        return None
    head, _, rest = param.partition(".")
    return RENAMED.get(head, head) + ("." + rest if rest else "")


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
