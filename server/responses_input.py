"""The Responses request, and its ``instructions`` and ``input`` as a chat request (:func:`chat_request`).

:class:`ResponsesRequest` is vLLM's own request (every field with vLLM's meaning, unknown fields a 400) plus OpenAI's
fields vLLM lacks and Ponder's ``strategy`` and ``strategy_params``. Input items become chat messages (an assistant
turn's reasoning, text and tool calls in one message, as vLLM's server joins them), function tools and ``text.format``
their chat forms; what needs stored responses is refused (:func:`refuse_what_needs_storage`). An error about a chat
field names it as the Responses API does (:func:`renamed_param`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest as VLLMResponsesRequest

from server.errors import APIError
from server.protocol import ChatCompletionRequest, PonderFields

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
        where = renamed_param(".".join(str(p) for p in first["loc"]) or None)
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


def refuse_what_needs_storage(request: ResponsesRequest) -> None:
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


def renamed_param(param: str | None) -> str | None:
    if param is None:
        return None
    head, _, rest = param.partition(".")
    return RENAMED.get(head, head) + ("." + rest if rest else "")
