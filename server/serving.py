"""Chat-completion logic: validate a request, render the prompt, run its strategy, build the response.

Routes stay short and call :class:`ChatService`. Everything a request spends is counted by the
:class:`~server.accounting.Ledger` proxies the strategy receives in place of the real engine and reward model. How an
answer goes out as SSE chunks (:meth:`ChatService.stream`) is :mod:`server.streaming`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

import strategies
from server.accounting import BudgetExceededError, CountingEngine, CountingScorer, Ledger, NodeCapExceededError
from server.config import ServerConfig
from server.engine import ServedEngine
from server.errors import APIError
from server.metrics import Metrics
from server.output import OutputParsing, Parsed, RequestReader
from server.protocol import (
    ChatCompletionRequest,
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
    message_text,
)
from server.request_fields import engine_options, refusals, whole_sample_refusal
from strategies.base import (
    Candidate,
    Engine,
    InvalidRequestError,
    Scorer,
    StrategyConfig,
    StrategyResult,
    Task,
    TokenLogprob,
)
from strategies.budget_forcing import BudgetForcing

log = logging.getLogger("ponder.requests")

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


class ChatService:
    def __init__(self, engine: ServedEngine, scorer: Scorer | None, config: ServerConfig, metrics: Metrics) -> None:
        self.engine, self.scorer, self.config, self.metrics = engine, scorer, config, metrics
        self.parsing = OutputParsing(
            engine.tokenizer,
            reasoning_parser=getattr(engine, "reasoning_parser", None),
            tool_call_parser=config.tool_call_parser,
            enable_auto_tool_choice=config.enable_auto_tool_choice,
        )

    # ---- validation -------------------------------------------------------------------------------------------
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


@functools.lru_cache(maxsize=64)
def _adapter(config_cls: type) -> TypeAdapter[Any]:
    """The validator of a strategy's config class, built once (building one takes longer than using it)."""
    return TypeAdapter(config_cls)


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


def _loop_time(monotonic_deadline: float) -> float:
    """A ``time.monotonic()`` instant on the running loop's clock (``asyncio.timeout_at`` takes loop time)."""
    return asyncio.get_running_loop().time() + (monotonic_deadline - time.monotonic())
