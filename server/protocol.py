"""The OpenAI chat-completions schema, as pydantic models, plus Ponder's extensions in one marked block.

The request is vLLM's own ``ChatCompletionRequest`` (``vllm.entrypoints.openai.chat_completion.protocol``): every field
vLLM's server accepts is accepted here with vLLM's meaning and validation, and :mod:`server.request_fields` maps them
to the engine in one place. Fields nobody defines are refused (400), so a typo does not pass silently; vLLM's server
only logs them. Responses follow OpenAI's shapes, with ``message.reasoning`` as vLLM 0.32 has it and Ponder's
``ponder`` object.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as VLLMChatCompletionRequest


def message_text(message: Any) -> str:
    """A request message's text; a list of content parts keeps its text parts."""
    content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(
        part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") in ("text", None)
    )


class PonderFields(BaseModel):
    """Ponder's extensions, shared by every endpoint (send with ``extra_body`` from the official openai client)."""

    strategy: str = Field(default="none", description="Reasoning strategy; GET /v1/models lists them.")
    strategy_params: dict[str, Any] = Field(
        default_factory=dict,
        description="Parameters of the strategy, validated against its config; unknown keys are a 400.",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _vllm_checks_as_errors(cls, data: Any, handler: Any) -> Any:
        """vLLM's own checks assume the fields' types (``messages: null`` raises TypeError inside them): a body of
        the wrong shape is a validation error (400), never a 500."""
        try:
            return handler(data)
        except (TypeError, AttributeError, KeyError) as exc:
            raise ValueError(f"malformed request body: {' '.join(str(exc).split())}") from None


class ChatCompletionRequest(VLLMChatCompletionRequest, PonderFields):
    """vLLM's chat request, unknown fields refused, plus OpenAI's ``metadata``/``store`` and Ponder's fields."""

    model_config = ConfigDict(extra="forbid")

    messages: list[Any] = Field(min_length=1)  # vLLM's message types, validated by the parent's validators
    n: int = Field(default=1, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    metadata: dict[str, str] | None = None  # OpenAI: tags for the caller's own records; Ponder logs nothing of it
    store: bool | None = None  # OpenAI stored completions; Ponder keeps none, so only false (or absent) is accepted

    def token_limit(self) -> int | None:
        # vars: reading max_tokens as an attribute warns (vLLM marks it deprecated, as OpenAI does)
        return self.max_completion_tokens or vars(self).get("max_tokens")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON, as OpenAI sends it


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning: str | None = None  # a reasoning model's thinking (vLLM 0.32's field), with --reasoning-parser
    tool_calls: list[ToolCall] = Field(default_factory=list)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None = None


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str


class PonderInfo(BaseModel):
    """What the strategy did and what it cost; in every response."""

    strategy: str
    engine_calls: int = Field(description="Engine submissions (one per batched round).")
    engine_requests: int = Field(description="Prompts submitted to the engine across all calls.")
    scorer_calls: int = Field(description="Batched reward-model calls.")
    scorer_seconds: float = Field(description="Wall time spent waiting for the reward model.")
    chosen_completion_tokens: int = Field(description="Tokens of the returned answer(s) alone.")
    candidates: list[dict[str, Any]] | None = Field(default=None, description="With return_trace: every candidate.")
    trace: dict[str, Any] | None = Field(default=None, description="With return_trace: strategy-specific details.")


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=_completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    ponder: PonderInfo


class DeltaFunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall | None = None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    ponder: PonderInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "ponder"


class StrategyCard(BaseModel):
    name: str
    description: str
    needs_reward_model: bool
    available: bool = Field(description="False when it needs a reward model and none is loaded.")
    params: dict[str, Any] = Field(description="Parameter names with their defaults.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    strategies: list[StrategyCard]
    reward_model: str | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
