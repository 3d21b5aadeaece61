"""Binding a request: check its fields, render its prompt, bind its strategy and its sampling options.

:class:`RequestPreparation` is the part of :class:`server.serving.ChatService` that turns a request of any endpoint
into a :class:`Prepared` job, or an :class:`~server.errors.APIError` (a 4xx) that says what is wrong, before anything
runs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import uuid
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

import strategies
from server.accounting import Ledger
from server.config import ServerConfig
from server.engine import ServedEngine
from server.errors import APIError
from server.output import OutputParsing, RequestReader
from server.protocol import ChatCompletionRequest, message_text
from server.request_fields import engine_options, refusals, whole_sample_refusal
from strategies.base import InvalidRequestError, Scorer, StrategyConfig, Task

ROLES = ("system", "developer", "user", "assistant", "tool", "function")


@dataclasses.dataclass
class Prepared:
    """A validated request, ready to run."""

    request: Any  # the endpoint's request model (chat, completions, responses), after vLLM's parsers adjusted it
    spec: strategies.StrategySpec
    config: StrategyConfig
    task: Task
    prompt_tokens: int
    ledger: Ledger
    deadline: float  # time.monotonic() after which the request's work is aborted
    reader: RequestReader | None = None  # with reasoning or tool parsers, or a JSON answer: how samples are read


class RequestPreparation:
    """Validation and binding; the service that inherits it holds the engine, the scorer, the caps and the parsers."""

    engine: ServedEngine
    scorer: Scorer | None
    config: ServerConfig
    parsing: OutputParsing

    def prepare(self, request: ChatCompletionRequest) -> Prepared:
        """Check a chat request, render its messages and bind its strategy."""
        if len(request.messages) > self.config.max_messages:
            raise APIError(
                f"{len(request.messages)} messages are above this server's cap of "
                f"{self.config.max_messages} (--max-messages)",
                param="messages",
                code="above_cap",
            )
        request = self._with_parsers(request)
        prompt, question = self._render(request)
        return self.prepare_prompt(request, prompt, question)

    def prepare_prompt(self, request: Any, prompt: str, question: str) -> Prepared:
        """Bind a request whose prompt is rendered: its strategy, its sampling options, its budget and reader.

        ``request`` is any of the endpoints' request models; the fields it has are read with vLLM's meaning."""
        model = getattr(request, "model", None)
        if model and model != self.config.model_name:
            raise APIError(
                f"The model `{model}` does not exist.",
                status=404,
                type="NotFoundError",
                param="model",
                code="model_not_found",
            )
        if getattr(request, "store", None):
            raise APIError("Ponder keeps no completions or responses; send store: false or leave it out", param="store")
        refused = refusals(request)
        if refused is not None:
            name, why = refused
            raise APIError(f"{name} is not supported by Ponder: {why}", param=name, code="unsupported_parameter")
        spec = self._strategy(request.strategy)
        config = self._strategy_config(spec, request)
        structured = _structured_outputs(request)
        options = engine_options(request, structured)
        self._check_options(spec, config, options)
        tools_on = bool(getattr(request, "tools", None)) and getattr(request, "tool_choice", None) != "none"
        json_answer = structured is not None and not tools_on and bool(structured.json_object or structured.json)
        reader = self.parsing.reader(
            request, json_answer=json_answer, prompt=prompt, template_kwargs=_template_kwargs(request)
        )
        prompt_tokens = self.engine.count_tokens(prompt)
        max_tokens = self._max_tokens(request, prompt_tokens)
        task = Task(
            prompt=prompt,
            question=question,
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p if request.top_p is not None else 1.0,
            stop=tuple(_stop_list(request.stop)),
            seed=request.seed,
            request_id=f"ponder-{uuid.uuid4().hex[:16]}",
            options=options,
            logprobs=_logprobs_asked(request),
            reader=reader,
        )
        ledger = Ledger(token_budget=config.max_total_tokens, node_budget=self.config.max_tree_nodes)
        deadline = time.monotonic() + self.config.request_timeout
        return Prepared(
            request,
            spec,
            config,
            task,
            prompt_tokens,
            ledger,
            deadline,
            reader if isinstance(reader, RequestReader) else None,
        )

    def _with_parsers(self, request: ChatCompletionRequest) -> ChatCompletionRequest:
        """The request as vLLM's parsers adjust it (a forced tool call becomes a JSON-schema constraint)."""
        tools_on = bool(request.tools) and request.tool_choice != "none"
        if tools_on and self.parsing.tool_call_parser is None:
            raise APIError(
                f"tool_choice {_choice_name(request.tool_choice)!r} needs a tool-call parser: start the server with "
                "--enable-auto-tool-choice --tool-call-parser NAME (vLLM's parsers, e.g. hermes)",
                param="tool_choice",
            )
        if tools_on and request.tool_choice == "auto" and not self.parsing.enable_auto_tool_choice:
            raise APIError(
                '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
                param="tool_choice",
            )
        parser = self.parsing.parser(request, _template_kwargs(request))
        if parser is None:
            return request
        try:
            return parser.adjust_request(request)
        except ValueError as exc:
            raise APIError(f"the request's tools cannot be used: {_one_line(exc)}", param="tools") from None

    def _check_options(self, spec: strategies.StrategySpec, config: StrategyConfig, options: dict[str, Any]) -> None:
        """Refuse what this strategy or this server cannot honour, before anything runs."""
        if config.in_steps:
            refused = whole_sample_refusal(options)
            if refused is not None:
                name, why = refused
                raise APIError(
                    f"{name} cannot apply to strategy {spec.name!r}: {why}; use a strategy that samples whole "
                    "solutions (none, best_of_n, self_consistency, weighted_best_of_n)",
                    param="response_format" if name == "structured_outputs" else name,
                    code="unsupported_parameter",
                )
        thinking = config.min_thinking_tokens or options.get("thinking_token_budget") is not None
        if thinking and self.parsing.end_marker is None:
            name = "strategy_params.min_thinking_tokens" if config.min_thinking_tokens else "thinking_token_budget"
            raise APIError(
                f"{name} needs a reasoning model: start the server with --reasoning-parser NAME (or serve a "
                "checkpoint that names one)",
                param=name,
            )
        check = getattr(self.engine, "check_options", None)
        if check is not None:
            try:
                check(options)
            except InvalidRequestError as exc:
                raise APIError(str(exc), code="invalid_parameter") from None

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
        if (getattr(request, "n", 1) or 1) > 1:
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
            config = _adapter(spec.config_cls).validate_python(params)
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
        """The prompt, as vLLM's server renders it (tools, template kwargs, reasoning_effort), and the question."""
        messages = [_template_message(m) for m in request.messages]
        if request.chat_template and not self.config.trust_request_chat_template:
            raise APIError(
                "chat_template in a request is refused unless the server trusts it (--trust-request-chat-template), "
                "as vLLM's server does",
                param="chat_template",
            )
        chat = request.build_chat_params(None, "auto")
        kwargs = dict(chat.chat_template_kwargs)  # as _template_kwargs reads them
        explicit = {"add_generation_prompt", "continue_final_message"} & request.model_fields_set
        if not explicit:  # an assistant message last, with neither flag sent: the reply continues it (prefill)
            prefill = messages[-1]["role"] == "assistant"
            kwargs |= {"add_generation_prompt": not prefill, "continue_final_message": prefill}
        if request.tools:
            kwargs["tools"] = [tool.model_dump(exclude_none=True) for tool in request.tools]
        if request.documents:
            kwargs["documents"] = request.documents
        if chat.chat_template:
            kwargs["chat_template"] = chat.chat_template
        try:
            prompt = self.engine.tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        except Exception as exc:  # a template that refuses these roles or their order (jinja raise_exception)
            raise APIError(
                f"the model's chat template rejected the messages: {_one_line(exc)}", param="messages"
            ) from None
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(
                "the messages contain text that is not valid Unicode (a lone surrogate escape)",
                param="messages",
                code="invalid_text",
            ) from None
        users = [m["content"] for m in messages if m["role"] == "user"]
        return prompt, users[-1] if users else messages[-1]["content"] or ""

    def _max_tokens(self, request: Any, prompt_tokens: int) -> int:
        room = self.engine.max_model_len - prompt_tokens
        if room < 1:
            raise APIError(
                f"the prompt is {prompt_tokens} tokens, which leaves no room in the model's context of "
                f"{self.engine.max_model_len}",
                param="messages",
                code="context_length_exceeded",
            )
        asked = request.token_limit()
        if asked is not None and asked < 1:
            raise APIError(f"max_tokens must be at least 1, got {asked}", param="max_tokens")
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


@functools.lru_cache(maxsize=64)
def _adapter(config_cls: type) -> TypeAdapter[Any]:
    """The validator of a strategy's config class, built once (building one takes longer than using it)."""
    return TypeAdapter(config_cls)


def _structured_outputs(request: Any) -> Any:
    """The request's output constraint as vLLM normalises it (response_format, structured_outputs, a forced tool)."""
    extract = getattr(request, "extract_structured_outputs", None)
    return extract() if extract is not None else None


def _logprobs_asked(request: Any) -> int | None:
    """How many alternatives per token the client wants with its logprobs; None when it wants none."""
    asked = getattr(request, "logprobs", None)
    if asked is None or asked is False:
        return None
    if asked is True:
        return int(getattr(request, "top_logprobs", 0) or 0)
    return int(asked)  # /v1/completions: logprobs is the number of alternatives


def _template_kwargs(request: Any) -> dict[str, Any] | None:
    """The chat template's kwargs the request rendered with (reasoning_effort folded in, as vLLM does)."""
    build = getattr(request, "build_chat_params", None)
    return dict(build(None, "auto").chat_template_kwargs) if build is not None else None


def _stop_list(stop: str | list[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or ())


def _choice_name(choice: Any) -> str:
    return choice if isinstance(choice, str) else "named function"


def _template_message(message: Any) -> dict[str, Any]:
    """A request message as chat templates read it: text content, developer as system, tool-call arguments as
    mappings (as vLLM's server passes them)."""
    if isinstance(message, BaseModel):
        message = message.model_dump(exclude_none=True)
    if not isinstance(message, dict):
        raise APIError("every message must be an object with a role", param="messages")
    message = dict(message)
    role = message.get("role")
    if role not in ROLES:
        raise APIError(f"unknown message role {role!r}; roles: {', '.join(ROLES)}", param="messages")
    out = {k: v for k, v in message.items() if v is not None}
    out["role"] = "system" if role == "developer" else role
    out["content"] = message_text(message)
    calls = []
    for call in message.get("tool_calls") or ():
        call = dict(call)
        function = dict(call.get("function") or {})
        if isinstance(function.get("arguments"), str):
            try:
                function["arguments"] = json.loads(function["arguments"])
            except ValueError:
                raise APIError("a tool call's arguments are not valid JSON", param="messages") from None
        calls.append(call | {"function": function})
    if calls:
        out["tool_calls"] = calls
    return out


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
