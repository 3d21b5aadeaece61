"""Reading what the policy wrote: thinking, answer and tool calls, through vLLM's own parsers.

``ponder serve --reasoning-parser NAME`` (or the checkpoint's ``ponder_reasoning_parser`` in its ``config.json``) and
``--enable-auto-tool-choice --tool-call-parser NAME`` name parsers from vLLM's registries
(``vllm.reasoning.ReasoningParserManager``, ``vllm.tool_parsers.ToolParserManager``), composed as vLLM's server
composes them (``vllm.parser.ParserManager.get_parser``). :class:`OutputParsing` holds that class for the server;
:class:`RequestReader` applies it to one request: it splits a sample into reasoning, content and tool calls for the
response, and it is the :class:`strategies.base.AnswerReader` the strategies vote and score with (the answer after
the thinking; a JSON answer in canonical form; tool calls as name plus canonical arguments).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from strategies.base import MATH_READER, AnswerReader


@dataclass
class Parsed:
    """One sample, read: what the model thought, what it answered, the tools it called."""

    reasoning: str | None
    content: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # {"id", "name", "arguments" (a JSON string)}


def canonical_json(text: str | None) -> str | None:
    """``text`` as JSON with sorted keys and no spaces, or None when it is not JSON.

    >>> canonical_json('{"b": 1, "a": [1, 2]}')
    '{"a":[1,2],"b":1}'
    """
    if text is None:
        return None
    try:
        return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return None


def tool_calls_key(calls: list[dict[str, Any]]) -> str:
    """What a vote compares for a tool-calling answer: the calls' names and canonical arguments, in order."""
    return json.dumps(
        [[c["name"], canonical_json(c["arguments"]) or c["arguments"]] for c in calls], separators=(",", ":")
    )


class OutputParsing:
    """The server's parsers: vLLM's composed reasoning and tool parser class for the policy's tokenizer."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        reasoning_parser: str | None = None,
        tool_call_parser: str | None = None,
        enable_auto_tool_choice: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.reasoning_parser = reasoning_parser
        self.tool_call_parser = tool_call_parser
        self.enable_auto_tool_choice = enable_auto_tool_choice
        self.parser_cls: Any = None
        self.end_marker: str | None = None  # the string that ends the thinking (budget forcing replaces it)
        if reasoning_parser or tool_call_parser:
            from vllm.parser.parser_manager import ParserManager

            self.parser_cls = ParserManager.get_parser(
                tool_parser_name=tool_call_parser,
                reasoning_parser_name=reasoning_parser,
                enable_auto_tools=enable_auto_tool_choice,
                tokenizer=tokenizer,
            )
        if reasoning_parser:
            reasoning = self.parser_cls(tokenizer).reasoning_parser
            self.end_marker = getattr(reasoning, "reasoning_end_str", None) or None

    def parser(self, request: Any, template_kwargs: dict[str, Any] | None = None) -> Any:
        """A fresh vLLM parser for ``request`` (they keep state; one per parse, as vLLM uses one per choice), told
        the chat template's kwargs as vLLM's server tells it (Qwen3's parser reads ``enable_thinking``)."""
        if self.parser_cls is None:
            return None
        return self.parser_cls(self.tokenizer, getattr(request, "tools", None), chat_template_kwargs=template_kwargs)

    def reader(
        self, request: Any, *, json_answer: bool, prompt: str = "", template_kwargs: dict[str, Any] | None = None
    ) -> AnswerReader:
        """How the strategies read samples for ``request`` rendered as ``prompt``; ``json_answer``: its answer is
        constrained JSON."""
        if self.parser_cls is None and not json_answer:
            return MATH_READER
        return RequestReader(self, request, json_answer=json_answer, prompt=prompt, template_kwargs=template_kwargs)


class RequestReader:
    """One request's reading of a sample (:class:`strategies.base.AnswerReader`)."""

    def __init__(
        self,
        parsing: OutputParsing,
        request: Any,
        *,
        json_answer: bool,
        prompt: str = "",
        template_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.parsing, self.request, self.json_answer = parsing, request, json_answer
        self.prompt, self.template_kwargs = prompt, template_kwargs
        self.tools_on = bool(getattr(request, "tools", None)) and getattr(request, "tool_choice", None) != "none"
        self._prompt_ids: list[int] | None = None
        # vLLM's parsers read a chat request's tool fields; a completions request has none
        self.parse_request = request if hasattr(request, "tool_choice") else _no_tools_request()

    def prompt_ids(self) -> list[int]:
        """The rendered prompt's tokens: parsers read whether the thinking is already open or closed there."""
        if self._prompt_ids is None:
            self._prompt_ids = list(self.parsing.tokenizer.encode(self.prompt, add_special_tokens=False))
        return self._prompt_ids

    def parse(self, text: str) -> Parsed:
        """Reasoning, content and tool calls of one sample, as vLLM's server reads them."""
        parser = self.parsing.parser(self.request, self.template_kwargs)
        if parser is None:
            return Parsed(None, text)
        parser.set_prompt_token_ids(self.prompt_ids())
        reasoning, content, calls = parser.parse(
            text, self.parse_request, enable_auto_tools=self.parsing.enable_auto_tool_choice and self.tools_on
        )
        tool_calls = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls or ()]
        return Parsed(reasoning, content, tool_calls)

    def answer(self, text: str) -> str | None:
        parsed = self.parse(text)
        if parsed.tool_calls:
            return tool_calls_key(parsed.tool_calls)
        if self.json_answer:
            return canonical_json(parsed.content)
        return MATH_READER.answer(parsed.content or "")

    def same(self, a: str, b: str) -> bool:
        if self.json_answer or self.tools_on:
            return a == b  # canonical forms: equal strings are equal answers
        return MATH_READER.same(a, b)

    def reward_text(self, text: str) -> str:
        parsed = self.parse(text)
        parts = [p.strip() for p in (parsed.reasoning, parsed.content) if p and p.strip()]
        parts += [f"{call['name']}({call['arguments']})" for call in parsed.tool_calls]  # a call, as a step
        return "\n\n".join(parts) or text


@lru_cache(maxsize=1)
def _no_tools_request() -> Any:
    """A chat request without tools: what vLLM's parsers read for a request that has no tool fields."""
    from server.protocol import ChatCompletionRequest

    return ChatCompletionRequest(messages=[{"role": "user", "content": ""}])
